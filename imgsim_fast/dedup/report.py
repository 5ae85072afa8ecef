"""Dedup reports: JSON and CSV for machines, one self-contained HTML page with thumbnails for people."""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import os

__all__ = ["write_json", "write_csv", "write_html", "CSV_COLUMNS"]

CSV_COLUMNS = ("group", "keep", "reference", "path", "rule", "phash_distance", "flip_distance", "flip",
               "cosine", "width", "height", "format", "bytes", "digest")
THUMB_SIDE = 160


def _atomic_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(result, path: str, extra: dict | None = None) -> None:
    doc = result.to_dict()
    doc.update(extra or {})
    _atomic_text(path, json.dumps(doc, indent=1) + "\n")


def write_csv(result, path: str) -> None:
    """One row per group member, groups numbered from 1; the keeper is the first row of its group."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for gi, g in enumerate(result.to_dict()["groups"], 1):
        for m in g["members"]:
            w.writerow([gi, int(m["keep"]), int(m["reference"])] + [m[c] for c in CSV_COLUMNS[3:]])
    _atomic_text(path, buf.getvalue())


def _thumb(path: str) -> str | None:
    """A base64 JPEG thumbnail (at most THUMB_SIDE px), or None if the file cannot be read now."""
    from ..loading import ImageLoadError, load_image

    try:
        im = load_image(path, min_size=(THUMB_SIDE, THUMB_SIDE))
    except (ImageLoadError, OSError):
        return None
    im.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode("ascii")


_CSS = """body{font-family:sans-serif;margin:1.5em;color:#222}h1{font-size:1.3em}
.group{border:1px solid #ccc;border-radius:6px;margin:1em 0;padding:.6em}
.group h2{font-size:1em;margin:.2em 0 .6em}.members{display:flex;flex-wrap:wrap;gap:.8em}
figure{margin:0;width:180px;padding:6px;border:2px solid #ddd;border-radius:4px;font-size:.78em}
figure.keep{border-color:#2a8a2a;background:#eef8ee}figure.ref{outline:2px dashed #2a5a9a}
figure img{max-width:170px;max-height:170px;display:block;margin:auto}
figcaption{word-break:break-all;margin-top:4px}.tag{font-weight:bold}.keep .tag{color:#2a8a2a}
table.err{border-collapse:collapse}table.err td{padding:2px 8px;border-bottom:1px solid #eee}"""


def write_html(result, path: str, title: str = "imgsim dedup report") -> None:
    """A single HTML file: per group, every member with an embedded thumbnail, the kept file marked, and its
    distances to the keeper (pHash bits, flip/rotation bits and which one, embedding cosine)."""
    doc = result.to_dict()
    out = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>",
           f"<p>{doc['files_scanned']} files scanned, {len(doc['groups'])} groups, method "
           f"<b>{html.escape(doc['method'])}</b>; keep order: {html.escape(', '.join(doc['keep_order']))}. "
           "Green: kept. Dashed: reference folder (never touched). Distances are to the kept file.</p>"]
    for gi, g in enumerate(doc["groups"], 1):
        out.append(f"<section class=\"group\" id=\"g{gi}\"><h2>Group {gi}: {len(g['members'])} files"
                   f"{' (exact copies)' if g['exact'] else ''}</h2><div class=\"members\">")
        for k, m in enumerate(g["members"]):
            cls = ["keep"] if m["keep"] else []
            if m["reference"]:
                cls.append("ref")
            t = _thumb(m["path"])
            img = (f"<img alt=\"\" src=\"data:image/jpeg;base64,{t}\">" if t else "<p>(unreadable now)</p>")
            if k == 0:
                tag = "KEEP"
                dist = ""
            else:
                tag = "keep (reference)" if m["keep"] else "duplicate"
                parts = [f"rule {html.escape(m['rule'])}", f"pHash {m['phash_distance']}"]
                if m["flip_distance"] is not None and m["flip_distance"] >= 0:
                    parts.append(f"{html.escape(m['flip'])} {m['flip_distance']}")
                if m["cosine"] is not None:
                    parts.append(f"cos {m['cosine']:.3f}")
                dist = "<br>" + ", ".join(parts)
            out.append(f"<figure class=\"{' '.join(cls)}\">{img}<figcaption><span class=\"tag\">{tag}</span>"
                       f"{dist}<br>{m['width']}x{m['height']} {html.escape(m['format'])}, {m['bytes']} B<br>"
                       f"{html.escape(m['path'])}</figcaption></figure>")
        out.append("</div></section>")
    if doc["errors"]:
        out.append("<h2>Skipped files</h2><table class=\"err\">")
        for e in doc["errors"]:
            out.append(f"<tr><td>{html.escape(e['path'])}</td><td>{html.escape(e['reason'])}</td></tr>")
        out.append("</table>")
    out.append("</body></html>\n")
    _atomic_text(path, "\n".join(out))
