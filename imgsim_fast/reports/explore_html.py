"""The HTML report of an exploration (templates/explore.html.j2, Jinja2, autoescaped) and the same data as
JSON beside it (issues 7, 15). Thumbnails of every file are JPEG files in a folder beside the page
(`explore_files/` for `explore.html`, named by position, as the dedup review page does), so the page
stays small at 10,000 files and opens from disk without a server.
"""
from __future__ import annotations

import json
import os
from urllib.parse import quote

import numpy as np

from imgsim_fast.io.atomic_write import check_target, write_text
from imgsim_fast.io.names import path_text
from imgsim_fast.jobs.explore import Exploration
from imgsim_fast.reports.render import render
from imgsim_fast.reports.thumbnails import make_thumbs, prepare_folder, thumbs_folder
from imgsim_fast.runtime.progress import phase

__all__ = ["write_report", "render_html", "SECTIONS", "REPORT_NAME"]

# Section ids, in page order; tests and the page's own check script look for each of them.
SECTIONS = ("stats", "clusters", "outliers", "map")
# The report's file name when --out is not given (beside the catalog in the data folder: cli/explore.py).
REPORT_NAME = "explore.html"
THUMB = 128           # thumbnail side in the cluster and outlier sections
MAP_THUMB = 36        # thumbnail side on the map
MAP_THUMBS_MAX = 400  # above this many files the map draws coloured points, not thumbnails
MAP_W, MAP_H, MAP_PAD = 960, 640, 30

# Tableau 10, then golden-angle hues: neighbouring cluster ids get distinguishable colours.
_PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
            "#9c755f", "#bab0ac"]


def _colour(i: int) -> str:
    if i < len(_PALETTE):
        return _PALETTE[i]
    return f"hsl({(i * 137.508) % 360:.1f},60%,50%)"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) or "-"
    if v is None:
        return "-"
    return str(v)


def _stats_rows(s: dict) -> list[tuple[str, str]]:
    near = s.get("near_duplicates")
    rows = [("files", s["files"]), ("readable", s["readable"]), ("corrupt", s["corrupt"]),
            ("corrupt by kind", s["corrupt_by_kind"]), ("walk errors", s["walk_errors"]),
            ("formats", s["formats"]), ("bytes", s["bytes"]), ("width", s["width"]), ("height", s["height"]),
            ("megapixels", s["megapixels"]), ("orientation", s["orientation"]),
            ("top resolutions", s["top_resolutions"]), ("taken (EXIF)", s["taken"]), ("file mtime", s["mtime"]),
            ("exact duplicates", s["exact_duplicates"]),
            ("near-duplicate rate", "-" if not near else
             f"{near['rate']:.1%} of files ({near['files_with_a_duplicate']:,}) have a duplicate, "
             f"{near['files_with_only_a_look_alike']:,} more only a look-alike, by {near['test']}")]
    return [(label, _fmt(v)) for label, v in rows]


def _map_pixels(xy: np.ndarray) -> np.ndarray:
    """Map coordinates scaled into the drawing, y up as in a plot, one decimal (the page's size)."""
    xy = np.asarray(xy, np.float64)
    if not len(xy):
        return xy.reshape(0, 2)
    lo, hi = xy.min(0), xy.max(0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    px = MAP_PAD + (xy - lo) / span * np.array([MAP_W - 2 * MAP_PAD, MAP_H - 2 * MAP_PAD])
    px[:, 1] = MAP_H - px[:, 1]
    return np.round(px, 1)


def _trust_text(t: dict) -> str:
    if not t or t.get("map") is None:
        return ""
    out = f"Trustworthiness of the map ({t['k']} nearest neighbours; 1 = all kept): {t['map']:.3f}"
    if t.get("pca") is not None:
        out += f", against {t['pca']:.3f} for a PCA map of the same features"
    return out + "."


def render_html(exp: Exploration, *, thumbs: str, missing: list[bool], title: str = "imgsim explore",
                json_name: str | None = None) -> str:
    """The report as one HTML string; `thumbs` is the thumbnail folder relative to the page (file i.jpg
    for exp.paths[i]); missing[i] says that file i has none (unreadable)."""
    names = [path_text(p) for p in exp.paths]  # valid Unicode, as in the JSON (io/names.py)

    def fig(i: int, caption: str | None = None) -> dict:
        return {"path": names[i], "name": os.path.basename(names[i]), "src": f"{thumbs}/{i}.jpg",
                "missing": missing[i], "caption": caption or os.path.basename(names[i])}

    clusters = [{"id": c.id, "size": c.size, "colour": _colour(c.id), "spread": c.spread,
                 "persistence": None if c.persistence is None else
                 ("ever" if not np.isfinite(c.persistence) else f"{c.persistence:.2f}x"),
                 "shown": [fig(i) for i in c.representatives]} for c in exp.clusters]
    unclustered = exp.unclustered
    px = _map_pixels(exp.xy)
    data = {
        "thumbs": thumbs, "map_thumb": MAP_THUMB, "map_thumbs": len(names) <= MAP_THUMBS_MAX,
        "colours": [_colour(c.id) for c in exp.clusters],
        "missing": [int(m) for m in missing],
        "files": [[names[i], int(exp.labels[i]), float(px[i, 0]), float(px[i, 1])] for i in range(len(names))],
        "lists": {**{f"c{c.id}": c.members for c in exp.clusters}, "u": unclustered},
    }
    rejected = ", ".join(f"{r:.2f}x" for r in sorted(exp.rejected, reverse=True)[:20])
    return render(
        "explore.html.j2", title=title, sections=list(SECTIONS), n_files=len(names), features=exp.features,
        structure=exp.structure, verdict=exp.verdict, json_name=json_name,
        stats_rows=_stats_rows(exp.stats) if exp.stats else [],
        corrupt=exp.stats.get("corrupt_files", []) if exp.stats else [],
        k_rule=exp.k_rule, rejected=rejected, clusters=clusters, unclustered=len(unclustered),
        outliers=[fig(i, f"{s:.3f} {os.path.basename(names[i])}") for i, s in exp.outliers],
        outlier_rule=exp.outlier_rule, map_method=exp.map_method, trust_text=_trust_text(exp.map_trust),
        map_w=MAP_W, map_h=MAP_H, thumb=THUMB, data=data)


_OWN_KEYS = ("features", "verdict", "files", "clusters", "thumbnails")  # what write_report's JSON holds


def data_path(out_html: str) -> str:
    """The data file written beside a report whose path the user named, when they named no other."""
    return os.path.splitext(out_html)[0] + ".json"


def check_data_target(path: str) -> None:
    """Refuse to write the report's data over a file the user did not name that explore did not write: a
    report named notes.html must not replace the user's own notes.json."""
    if not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        ours = isinstance(doc, dict) and all(k in doc for k in _OWN_KEYS)
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise ValueError(f"{path} exists and was not written by imgsim explore; move it, or name the data file "
                         f"with --json-out")


def write_report(exp: Exploration, out_html: str, *, json_path: str | None = None, title: str | None = None,
                 workers: int | None = None, progress: bool | None = False) -> tuple[str, str]:
    """Write the HTML report, its thumbnail folder and its JSON (default: the HTML path with .json);
    returns the HTML and JSON paths."""
    if json_path is None:
        json_path = data_path(out_html)
        check_data_target(json_path)
    folder = os.path.dirname(os.path.abspath(out_html))
    os.makedirs(folder, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    for path in (json_path, out_html):  # both, before anything is written: a report never stands half-made
        check_target(path)
    thumbs = thumbs_folder(out_html)
    if os.path.exists(thumbs) and not os.path.isdir(thumbs):
        raise ValueError(f"{thumbs} exists and is not a folder; move it or choose another report name")
    prepare_folder(thumbs)
    with phase(f"thumbnails ({len(exp.paths):,})", progress):
        sizes = make_thumbs(exp.paths, thumbs, workers=workers, side=THUMB)
    rel_json = os.path.relpath(os.path.abspath(json_path), folder)
    page = render_html(exp, thumbs=quote(os.path.basename(thumbs)), missing=[s is None for s in sizes],
                       title=title or "imgsim explore", json_name=rel_json)
    doc = exp.to_dict()
    doc["thumbnails"] = os.path.relpath(thumbs, os.path.dirname(os.path.abspath(json_path)))
    write_text(json_path, json.dumps(doc, indent=1) + "\n")
    write_text(out_html, page)
    return out_html, json_path
