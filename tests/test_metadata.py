"""Metadata extraction from EXIF, XMP, IPTC, sidecars and mapping files; bad input is a per-file error."""
import io
import json
import os
import struct

import pytest
from PIL import Image, IptcImagePlugin

from imgsim_fast.catalog.store import Catalog, default_catalog_path
from imgsim_fast.catalog.indexer import index
from imgsim_fast.features.metadata import load_mapping, parse_xmp, read_metadata

XMP = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">
<dc:subject><rdf:Bag><rdf:li>Beach</rdf:li><rdf:li>sunset glow</rdf:li></rdf:Bag></dc:subject>
<dc:description><rdf:Alt><rdf:li xml:lang="x-default">Évening at the sea</rdf:li></rdf:Alt></dc:description>
</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>"""


def jpeg_bytes(size=(64, 48), exif=None):
    b = io.BytesIO()
    kw = {"exif": exif} if exif is not None else {}
    Image.new("RGB", size, (200, 100, 50)).save(b, "JPEG", **kw)
    return b.getvalue()


def insert_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    """Insert an APPn segment right after SOI, by hand (JPEG: FFxx, big-endian length incl. itself)."""
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def iptc_app13(keywords, caption=None) -> bytes:
    """Photoshop APP13 with one 8BIM 0x0404 resource holding IPTC-IIM record 2 datasets."""
    iim = b""
    for kw in keywords:
        data = kw.encode()
        iim += b"\x1c\x02\x19" + struct.pack(">H", len(data)) + data
    if caption:
        data = caption.encode()
        iim += b"\x1c\x02\x78" + struct.pack(">H", len(data)) + data
    if len(iim) % 2:
        iim += b"\x00"
    return b"Photoshop 3.0\x00" + b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(iim)) + iim


def full_exif():
    ex = Image.Exif()
    ex[0x010E] = "A dog on the beach"
    ex[0x013B] = "Ada Lovelace"
    ex[0x010F] = "Canon"
    ex[0x0110] = "Canon EOS 5D"
    ex[0x0112] = 6  # rotated: upright size swaps sides
    ex[0x9C9E] = "dog;beach;Été".encode("utf-16-le") + b"\x00\x00"
    ex.get_ifd(0x8769)[0x9003] = "2021:07:14 18:30:05"
    gps = ex.get_ifd(0x8825)
    gps[1], gps[2] = "S", (33.0, 51.0, 54.0)
    gps[3], gps[4] = "E", (151.0, 12.0, 36.0)
    return ex


def test_exif_fields_xpkeywords_date_and_gps(tmp_path):
    p = tmp_path / "a.jpg"
    p.write_bytes(jpeg_bytes(exif=full_exif().tobytes()))
    md = read_metadata(str(p))
    assert md.errors == []
    assert [t for t, _ in md.tags] == ["dog", "beach", "Été"]
    assert md.description == "A dog on the beach"
    assert (md.artist, md.make, md.model) == ("Ada Lovelace", "Canon", "Canon EOS 5D")
    assert md.taken == "2021-07-14T18:30:05"
    assert md.lat == pytest.approx(-(33 + 51 / 60 + 54 / 3600))
    assert md.lon == pytest.approx(151 + 12 / 60 + 36 / 3600)
    assert (md.width, md.height, md.format) == (48, 64, "JPEG")


def test_xmp_in_app1_and_iptc_in_app13(tmp_path):
    data = jpeg_bytes()
    data = insert_segment(data, 0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + XMP.encode())
    data = insert_segment(data, 0xED, iptc_app13(["Holiday", "beach"], "Caption here"))
    p = tmp_path / "x.jpg"
    p.write_bytes(data)
    with Image.open(p) as im:  # our hand-made segment is what Pillow itself reads as IPTC
        assert IptcImagePlugin.getiptcinfo(im)[(2, 25)] == [b"Holiday", b"beach"]
    md = read_metadata(str(p))
    assert md.errors == []
    assert md.unique_tags() == [("beach", "Beach", "xmp"), ("sunset glow", "sunset glow", "xmp"),
                                ("holiday", "Holiday", "iptc")]
    assert md.description == "Évening at the sea\nCaption here"


def test_xmp_in_png_and_dtd_refused(tmp_path):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", XMP)
    p = tmp_path / "x.png"
    Image.new("RGB", (64, 48)).save(p, pnginfo=info)
    assert [t for t, _ in read_metadata(str(p)).tags] == ["Beach", "sunset glow"]
    with pytest.raises(ValueError):
        parse_xmp('<!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>')


def test_sidecars_and_mapping(tmp_path):
    p = tmp_path / "photo.jpg"
    p.write_bytes(jpeg_bytes())
    (tmp_path / "photo.jpg.json").write_text(json.dumps({
        "description": "takeout text", "tags": ["a", "b"],
        "photoTakenTime": {"timestamp": "1577880000"}, "geoData": {"latitude": 1.5, "longitude": 2.5}}))
    (tmp_path / "photo.xmp").write_text(XMP)
    (tmp_path / "map.csv").write_text("path,tags,description\nphoto.jpg,x;y,from map\n")
    mapping = load_mapping(str(tmp_path / "map.csv"))
    assert list(mapping) == [str(p)]
    md = read_metadata(str(p), mapping_entry=mapping[str(p)])
    assert md.errors == []
    assert [t for t, _ in md.tags] == ["a", "b", "Beach", "sunset glow", "x", "y"]
    assert md.taken == "2020-01-01T12:00:00" and (md.lat, md.lon) == (1.5, 2.5)
    assert md.description == "takeout text\nÉvening at the sea\nfrom map"
    (tmp_path / "m.json").write_text(json.dumps([{"path": "photo.jpg", "tags": ["q"]}]))
    assert load_mapping(str(tmp_path / "m.json"))[str(p)]["tags"] == ["q"]
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValueError, match="mapping file"):
        load_mapping(str(tmp_path / "bad.json"))


def test_corrupt_sidecar_and_malformed_exif_are_per_file_errors(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    (root / "good.jpg").write_bytes(jpeg_bytes(exif=full_exif().tobytes()))
    (root / "side.jpg").write_bytes(jpeg_bytes(size=(60, 40)))
    (root / "side.jpg.json").write_text('{"tags": ["ok", ')      # truncated JSON
    (root / "side.xmp").write_text("<x:xmpmeta><unclosed>")      # broken XML
    # An IFD whose entry points past the end of the block.
    bad_exif = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x0e\x00\x02\x00\x00\x00\x40\x00\x00\x10\x00"
    (root / "badexif.jpg").write_bytes(jpeg_bytes(size=(50, 40), exif=bad_exif))
    s = index(str(root))
    assert s.added == 3 and s.failed == 0  # every image still hashed
    with Catalog(default_catalog_path(root)) as c:
        errs = {os.path.basename(r.path): r.meta_error for r in c.files()}
        assert errs["good.jpg"] is None
        assert "corrupt sidecar side.jpg.json" in errs["side.jpg"]
        assert "corrupt sidecar side.xmp" in errs["side.jpg"]
        assert "metadata warning" in errs["badexif.jpg"] or "malformed" in errs["badexif.jpg"]
        assert c.tags(c.get(str(root / "good.jpg")).id) == ["beach", "dog", "Été"]
    # Fixing a sidecar re-reads that file's metadata only; its pixels are not decoded again.
    (root / "side.jpg.json").write_text('{"tags": ["ok"]}')
    s = index(str(root))
    assert (s.unchanged, s.metadata_read, s.decoded) == (3, 1, 0)
    with Catalog(default_catalog_path(root)) as c:
        assert c.tags(c.get(str(root / "side.jpg")).id) == ["ok"]


def test_100k_deep_json_sidecar_is_a_per_file_warning(tmp_path):
    # Issue 11: json's recursive parser raised RecursionError on this and aborted every `index` run.
    root = tmp_path / "p"
    root.mkdir()
    (root / "deep.jpg").write_bytes(jpeg_bytes(size=(60, 40)))
    (root / "deep.jpg.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "ok.jpg").write_bytes(jpeg_bytes(size=(50, 40)))
    (root / "ok.jpg.json").write_text('{"tags": ["fine"]}')
    os.mkfifo(root / "pipe.jpg")  # and a FIFO named like an image: reported, never opened
    s = index(str(root))
    assert s.added == 2 and s.failed == 0
    with Catalog(default_catalog_path(root)) as c:
        errs = {os.path.basename(r.path): r.meta_error for r in c.files()}
        assert "corrupt sidecar deep.jpg.json: JSON nested deeper than 64 levels" in errs["deep.jpg"]
        assert errs["ok.jpg"] is None
        assert c.tags(c.get(str(root / "ok.jpg")).id) == ["fine"]
        assert [(os.path.basename(p), k) for p, k, _ in c.walk_errors()] == [("pipe.jpg", "not_regular_file")]
