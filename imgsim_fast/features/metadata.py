"""Tags and text of an image: EXIF, XMP, IPTC, sidecar files and a user's mapping file.

`read_metadata` never raises for a bad file: malformed EXIF, unparsable XMP or a corrupt sidecar become
strings in `Metadata.errors` (the catalog's per-file `meta_error`), and whatever else was readable is
kept. Only the header is parsed (`Image.open` without `load()`); pixels are the loader's business.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import os
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from PIL import Image, IptcImagePlugin

from imgsim_fast.io.loading import ensure_heif_plugin, open_regular
from imgsim_fast.io.names import path_text

__all__ = [
    "Metadata",
    "read_metadata",
    "sidecar_candidates",
    "parse_xmp",
    "parse_json",
    "load_mapping",
    "normalise_tag",
    "hierarchy_tags",
]

# EXIF tags (TIFF/EXIF 2.32; the XP* tags are Microsoft's, UTF-16LE).
TAG_IMAGE_DESCRIPTION = 0x010E
TAG_MAKE = 0x010F
TAG_MODEL = 0x0110
TAG_ORIENTATION = 0x0112
TAG_DATETIME = 0x0132
TAG_ARTIST = 0x013B
TAG_XP_COMMENT = 0x9C9C
TAG_XP_KEYWORDS = 0x9C9E
IFD_EXIF = 0x8769
IFD_GPS = 0x8825
TAG_DATETIME_ORIGINAL = 0x9003
TAG_XMP_TIFF = 700

NS_DC = "http://purl.org/dc/elements/1.1/"
NS_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
NS_XMP = "http://ns.adobe.com/xap/1.0/"
NS_LR = "http://ns.adobe.com/lightroom/1.0/"
# XMP Specification Part 2, xmp:Rating: -1 (rejected), 0 (unrated) to 5 stars.
RATING_RANGE = (-1, 5)

# IPTC IIM record 2 datasets (IPTC-NAA IIM 4.2): 25 Keywords, 120 Caption/Abstract.
IPTC_KEYWORDS = (2, 25)
IPTC_CAPTION = (2, 120)

# Keys read from a sidecar or mapping JSON object. "photoTakenTime" and "geoData" are Google
# Takeout's `photo.jpg.json` fields.
_TAG_KEYS = ("tags", "keywords", "subject")
_TEXT_KEYS = ("description", "caption")

# Sidecars are small (Takeout's are ~1 KB, Lightroom's XMP a few KB). A bigger one is not read: it would
# only cost memory. Nesting deeper than JSON_MAX_DEPTH is refused before parsing, as json's recursive
# parser would raise RecursionError (or exhaust the C stack) on a hostile 100k-deep file (issue 11).
SIDECAR_MAX_BYTES = 16 << 20
JSON_MAX_DEPTH = 64


@dataclass
class Metadata:
    width: int | None = None   # upright: EXIF orientation 5..8 swaps the header's sides
    height: int | None = None
    format: str | None = None
    mode: str | None = None
    tags: list[tuple[str, str]] = field(default_factory=list)          # (tag, source), first wins
    descriptions: list[tuple[str, str]] = field(default_factory=list)  # (text, source)
    artist: str | None = None
    make: str | None = None
    model: str | None = None
    taken: str | None = None   # 'YYYY-MM-DDTHH:MM:SS'
    lat: float | None = None
    lon: float | None = None
    rating: int | None = None  # xmp:Rating, -1 (rejected) .. 5; a sidecar's overrides the file's own
    label: str | None = None   # xmp:Label, the colour label (Lightroom: Red, Yellow, Green, Blue, Purple)
    errors: list[str] = field(default_factory=list)

    @property
    def description(self) -> str | None:
        seen, out = set(), []
        for text, _ in self.descriptions:
            if text not in seen:
                seen.add(text)
                out.append(text)
        return "\n".join(out) if out else None

    def unique_tags(self) -> list[tuple[str, str, str]]:
        """(norm, tag, source) with one entry per casefolded tag, the first source winning."""
        out, seen = [], set()
        for tag, source in self.tags:
            norm = normalise_tag(tag)
            if norm and norm not in seen:
                seen.add(norm)
                out.append((norm, tag.strip(), source))
        return out

    def add_tags(self, tags, source: str) -> None:
        for t in tags:
            t = _clean(t)
            if t:
                self.tags.append((t, source))

    def add_text(self, text, source: str) -> None:
        text = _clean(text)
        if text:
            self.descriptions.append((text, source))


def normalise_tag(tag: str) -> str:
    """What tag queries compare: trimmed, inner whitespace collapsed, casefolded."""
    return " ".join(str(tag).split()).casefold()


def _clean(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = _decode_bytes(value)
    value = str(value).replace("\x00", "").strip()
    return value or None


def _decode_bytes(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b.decode("latin-1")


def sidecar_candidates(path: str) -> list[str]:
    """Sidecar paths looked for next to an image: photo.jpg.json (Google Takeout), photo.json,
    photo.xmp (Lightroom) and photo.jpg.xmp (darktable)."""
    stem = os.path.splitext(path)[0]
    return [path + ".json", stem + ".json", stem + ".xmp", path + ".xmp"]


# ---------------------------------------------------------------------------------------------------
# Entry point


def read_metadata(path: str, *, sidecars: list[str] | None = None, mapping_entry: dict | None = None,
                  data: bytes | None = None) -> Metadata:
    """Everything known about `path` besides its pixels.

    sidecars: the sidecar files that exist (None: look for `sidecar_candidates(path)`).
    mapping_entry: this file's entry from `load_mapping` ({"tags": [...], "description": ...}).
    data: the image file's bytes when already read (the extraction pass): the file is not opened again.
    """
    md = Metadata()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if data is not None:
            fp = io.BytesIO(data)
        else:
            try:
                fp = open_regular(path)  # never a FIFO or a device: those would block or never end
            except OSError:  # missing, unreadable, not a regular file: the loader reports why
                fp = None
        if fp is not None:
            with fp:
                try:
                    ensure_heif_plugin(path, fp.read(32))  # HEIC/AVIF: Pillow reads them once registered
                    fp.seek(0)
                    im = Image.open(fp)
                except Exception:  # not an image, a bomb, no HEIF package: the loader reports why
                    im = None
                if im is not None:
                    try:
                        _read_embedded(im, md)
                    finally:
                        im.close()
    for w in caught:  # Pillow warns (not raises) on some malformed EXIF
        md.errors.append(f"metadata warning: {w.message}")
    if sidecars is None:
        sidecars = [p for p in sidecar_candidates(path) if os.path.isfile(p)]
    for sc in sidecars:
        try:
            data = _read_sidecar(sc)
            if sc.lower().endswith(".xmp"):
                _apply_xmp(parse_xmp(data), md, "sidecar")
            else:
                _apply_json(parse_json(data.decode("utf-8")), md, "sidecar")
        except (OSError, ValueError, TypeError, ET.ParseError) as e:  # JSONDecodeError is a ValueError
            md.errors.append(f"corrupt sidecar {path_text(os.path.basename(sc))}: {e}")
    if mapping_entry:
        _apply_json(mapping_entry, md, "map")
    return md


def _read_sidecar(path: str) -> bytes:
    with open_regular(path) as f:
        data = f.read(SIDECAR_MAX_BYTES + 1)
    if len(data) > SIDECAR_MAX_BYTES:
        raise ValueError(f"larger than {SIDECAR_MAX_BYTES >> 20} MiB; not read")
    return data


def parse_json(text: str, max_depth: int = JSON_MAX_DEPTH):
    """json.loads, refusing (ValueError) a document nested deeper than `max_depth` before parsing it."""
    depth = 0
    # Brackets inside strings do not nest: drop the strings (escapes included) first.
    for m in _JSON_BRACKETS.finditer(_JSON_STRING.sub('""', text)):
        if m.group() in "[{":
            depth += 1
            if depth > max_depth:
                raise ValueError(f"JSON nested deeper than {max_depth} levels")
        else:
            depth -= 1
    return json.loads(text)


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKETS = re.compile(r"[\[\]{}]")


def _read_embedded(im: Image.Image, md: Metadata) -> None:
    md.format, md.mode = im.format, im.mode
    w, h = im.size
    orientation = 1
    try:
        exif = im.getexif()
        orientation = _read_exif(exif, md)
    except Exception as e:  # Pillow raises many kinds on a malformed IFD
        md.errors.append(f"malformed EXIF: {type(e).__name__}: {e}")
    md.width, md.height = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    try:
        xmp = _xmp_bytes(im)
        if xmp:
            _apply_xmp(parse_xmp(xmp), md, "xmp")
    except (ValueError, ET.ParseError) as e:
        md.errors.append(f"malformed XMP: {e}")
    try:
        iptc = IptcImagePlugin.getiptcinfo(im) if im.format in ("JPEG", "MPO", "TIFF") else None
    except Exception as e:
        md.errors.append(f"malformed IPTC: {type(e).__name__}: {e}")
        iptc = None
    if iptc:
        kw = iptc.get(IPTC_KEYWORDS)
        if kw is not None:
            md.add_tags(kw if isinstance(kw, list) else [kw], "iptc")
        cap = iptc.get(IPTC_CAPTION)
        if cap is not None:
            md.add_text(cap[0] if isinstance(cap, list) else cap, "iptc")


def _read_exif(exif, md: Metadata) -> int:
    """Fill md from an Image.Exif; returns the orientation (1 when absent or odd)."""
    md.add_text(exif.get(TAG_IMAGE_DESCRIPTION), "exif")
    md.add_text(_xp_string(exif.get(TAG_XP_COMMENT)), "exif")
    kw = _xp_string(exif.get(TAG_XP_KEYWORDS))
    if kw:
        md.add_tags(kw.split(";"), "exif")
    md.artist = _clean(exif.get(TAG_ARTIST))
    md.make = _clean(exif.get(TAG_MAKE))
    md.model = _clean(exif.get(TAG_MODEL))
    sub = exif.get_ifd(IFD_EXIF)
    raw = sub.get(TAG_DATETIME_ORIGINAL) or exif.get(TAG_DATETIME)
    if raw is not None:
        taken = _exif_datetime(raw)
        if taken is None:
            md.errors.append(f"malformed EXIF date {_clean(raw)!r}")
        md.taken = taken
    gps = exif.get_ifd(IFD_GPS)
    if gps:
        try:
            lat = _gps_degrees(gps.get(2), gps.get(1), "NS", 90.0)
            lon = _gps_degrees(gps.get(4), gps.get(3), "EW", 180.0)
        except (TypeError, ValueError, ZeroDivisionError, IndexError) as e:
            md.errors.append(f"malformed EXIF GPS: {e}")
        else:
            if lat is not None and lon is not None:
                md.lat, md.lon = lat, lon
    try:
        o = int(exif.get(TAG_ORIENTATION, 1))
    except (TypeError, ValueError):
        o = 1
    return o if 1 <= o <= 8 else 1


def _xp_string(value) -> str | None:
    """Windows XP* tags: UTF-16LE bytes (Pillow gives bytes or a tuple of byte values)."""
    if value is None:
        return None
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, (tuple, list)):
        value = bytes(value)
    return _clean(bytes(value).decode("utf-16-le", errors="replace"))


def _exif_datetime(raw) -> str | None:
    s = _clean(raw)
    if not s:
        return None
    try:
        d = _dt.datetime.strptime(s[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    return d.strftime("%Y-%m-%dT%H:%M:%S")


def _gps_degrees(dms, ref, refs: str, limit: float) -> float | None:
    if dms is None:
        return None
    if not isinstance(dms, (tuple, list)):
        dms = (dms,)
    parts = [float(x) for x in dms] + [0.0, 0.0]
    deg = parts[0] + parts[1] / 60.0 + parts[2] / 3600.0
    if not math.isfinite(deg) or deg > limit:
        raise ValueError(f"coordinate {dms!r} out of range")
    ref = _clean(ref) or refs[0]
    if ref[0].upper() not in refs:
        raise ValueError(f"bad GPS reference {ref!r}")
    return -deg if ref[0].upper() == refs[1] else deg


def _xmp_bytes(im: Image.Image):
    data = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
    if not data and im.format == "TIFF":
        data = getattr(im, "tag_v2", {}).get(TAG_XMP_TIFF)
    return data


# ---------------------------------------------------------------------------------------------------
# XMP

_DTD_RE = re.compile(r"<!(DOCTYPE|ENTITY)", re.IGNORECASE)


def parse_xmp(data) -> dict:
    """{'subject': [...], 'description': [...], 'hierarchical': [...], 'rating': [...], 'label': [...]}
    from an XMP packet (bytes or str): dc:subject and dc:description, Lightroom's lr:hierarchicalSubject
    ("Places|Europe|Paris"), xmp:Rating and xmp:Label, each as the strings found (element or attribute).

    Raises ValueError for a packet with a DTD: XMP never needs one, and refusing it is the cheap way
    to rule out entity-expansion attacks without defusedxml (expat >= 2.4 also limits them).
    """
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("utf-8", errors="replace")
    data = data.replace("\x00", "")
    start = data.find("<")
    if start < 0:
        raise ValueError("no XML in XMP packet")
    data = data[start:].strip()
    if _DTD_RE.search(data):
        raise ValueError("XMP packet with a DTD refused")
    root = ET.fromstring(data)
    out = {"subject": [], "description": [], "hierarchical": [], "rating": [], "label": []}
    names = {"subject": (NS_DC, "subject"), "description": (NS_DC, "description"),
             "hierarchical": (NS_LR, "hierarchicalSubject"), "rating": (NS_XMP, "Rating"),
             "label": (NS_XMP, "Label")}
    for key in out:
        tag = "{%s}%s" % names[key]
        for el in root.iter(tag):
            lis = list(el.iter(f"{{{NS_RDF}}}li"))
            if lis:
                out[key].extend(li.text for li in lis if li.text and li.text.strip())
            elif el.text and el.text.strip():
                out[key].append(el.text)
        for el in root.iter(f"{{{NS_RDF}}}Description"):  # attribute shorthand: dc:description="..."
            if tag in el.attrib:
                out[key].append(el.attrib[tag])
    return out


def _apply_xmp(x: dict, md: Metadata, source: str) -> None:
    md.add_tags(x["subject"], source)
    md.add_tags(hierarchy_tags(x["hierarchical"]), source)
    for d in x["description"]:
        md.add_text(d, source)
    # Sidecars are read after the file's own XMP: a sidecar's rating or label (the newer edit) wins.
    for r in x["rating"][:1]:
        rating = _rating(r)
        if rating is None:
            md.errors.append(f"malformed XMP rating {_clean(r)!r}")
        else:
            md.rating = rating
    for label in x["label"][:1]:
        md.label = _clean(label) or md.label


def hierarchy_tags(paths) -> list[str]:
    """Lightroom's hierarchical keywords as tags: each path and every ancestor of it, so that
    `--tag "Places|Europe"` finds "Places|Europe|Paris" ('|' separates levels, spaces around it dropped)."""
    out = []
    for p in paths:
        levels = [lv.strip() for lv in str(p).split("|")]
        levels = [lv for lv in levels if lv]
        out += ["|".join(levels[:i]) for i in range(1, len(levels) + 1)]
    return out


def _rating(text) -> int | None:
    """xmp:Rating as a whole number of stars in RATING_RANGE; None when it is not one ("4.0" is 4)."""
    try:
        v = float(str(text).strip())
    except ValueError:
        return None
    if not v.is_integer() or not RATING_RANGE[0] <= v <= RATING_RANGE[1]:
        return None
    return int(v)


# ---------------------------------------------------------------------------------------------------
# Sidecar JSON and mapping files


def _as_tag_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [t for t in re.split(r"[;,]", value)]
    if isinstance(value, (list, tuple)):
        if not all(isinstance(t, (str, int, float)) for t in value):
            raise TypeError(f"tags must be strings, got {value!r}")
        return [str(t) for t in value]
    raise TypeError(f"tags must be a list or a string, got {type(value).__name__}")


def _apply_json(doc, md: Metadata, source: str) -> None:
    if not isinstance(doc, dict):
        raise TypeError(f"expected a JSON object, got {type(doc).__name__}")
    for k in _TAG_KEYS:
        md.add_tags(_as_tag_list(doc.get(k)), source)
    for k in _TEXT_KEYS:
        v = doc.get(k)
        if isinstance(v, (str, int, float)):
            md.add_text(str(v), source)
        elif v is not None:
            raise TypeError(f"{k} must be a string, got {type(v).__name__}")
    # Google Takeout: photoTakenTime.timestamp (UTC seconds), geoData (0, 0 when unknown).
    ptt = doc.get("photoTakenTime")
    if md.taken is None and isinstance(ptt, dict) and "timestamp" in ptt:
        ts = int(ptt["timestamp"])
        md.taken = _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    geo = doc.get("geoData")
    if md.lat is None and isinstance(geo, dict):
        lat, lon = float(geo.get("latitude", 0.0)), float(geo.get("longitude", 0.0))
        if (lat, lon) != (0.0, 0.0) and abs(lat) <= 90 and abs(lon) <= 180:
            md.lat, md.lon = lat, lon


def load_mapping(path: str) -> dict[str, dict]:
    """A user's mapping file -> {absolute image path: {"tags": [...], "description": str | None}}.

    CSV: a header row with `path` and any of `tags` (separated by ';' or ','), `description`.
    JSON: {path: {"tags": [...], "description": "..."}} or {path: [tags]}, or a list of objects with a
    "path" key. Relative paths are relative to the mapping file's folder. Unlike sidecars, a malformed
    mapping file is the user's explicit input for the whole run, so it raises ValueError.
    """
    base = os.path.dirname(os.path.abspath(path))
    entries: dict[str, dict] = {}

    def add(p, tags, desc):
        if not isinstance(p, str) or not p:
            raise ValueError("an entry has no path")
        key = os.path.normpath(os.path.join(base, os.path.expanduser(p)))
        e = entries.setdefault(key, {"tags": [], "description": None})
        e["tags"].extend(t.strip() for t in _as_tag_list(tags) if t.strip())
        if desc:
            e["description"] = str(desc)

    try:
        if path.lower().endswith(".csv"):
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames or "path" not in reader.fieldnames:
                    raise ValueError("a CSV mapping needs a header row with a 'path' column")
                for row in reader:
                    add(row.get("path"), row.get("tags"), row.get("description"))
        else:
            with open(path, encoding="utf-8") as f:
                doc = parse_json(f.read())
            items = doc.items() if isinstance(doc, dict) else (
                (d.get("path"), d) if isinstance(d, dict) else (None, d) for d in doc)
            for p, v in items:
                if isinstance(v, dict):
                    add(p, v.get("tags", v.get("keywords")), v.get("description", v.get("caption")))
                elif isinstance(v, (list, str)):
                    add(p, v, None)
                else:
                    raise ValueError(f"entry for {p!r} must be an object or a list of tags")
    except (TypeError, ValueError, csv.Error) as e:  # JSONDecodeError, UnicodeDecodeError: ValueError
        raise ValueError(f"mapping file {path}: {e}") from e
    return entries
