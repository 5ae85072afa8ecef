"""One self-contained HTML report of an exploration (thumbnails embedded as base64 JPEG, the map as inline
SVG; opens from disk without a server) and the same data as JSON beside it (issue 7)."""
from __future__ import annotations

import base64
import html
import io
import json
import os

import numpy as np

from imgsim_fast.io.atomic_write import check_target, write_text
from imgsim_fast.jobs.explore import Exploration

__all__ = ["write_report", "render_html", "SECTIONS"]

# Section ids, in page order; tests and the page's own check script look for each of them.
SECTIONS = ("stats", "clusters", "outliers", "map")
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


def _thumb_b64(args) -> str | None:
    from imgsim_fast.reports.sheet import thumbnail

    path, side = args
    im = thumbnail(path, side)
    if im is None:
        return None
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _thumbnails(paths: list[str], side: int, workers: int | None) -> dict[str, str | None]:
    """path -> base64 JPEG (None when unreadable). Processes when there are many: a full-size PNG
    wallpaper decodes in ~50 ms, JPEGs much faster (reduced-scale DCT)."""
    todo = sorted(set(paths))
    if len(todo) < 32 or workers == 1:
        return {p: _thumb_b64((p, side)) for p in todo}
    from imgsim_fast.runtime.pool import process_pool  # the one pool: its workers die with this process, even by kill -9

    with process_pool(workers or os.cpu_count() or 1) as pool:
        return dict(zip(todo, pool.map(_thumb_b64, [(p, side) for p in todo], chunksize=8)))


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 2em 3em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
nav a{margin-right:1em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.2em .6em;text-align:left}
th{background:#f4f4f4}
.thumbs{display:flex;flex-wrap:wrap;gap:6px}
figure{margin:0;width:%dpx}figure img{width:%dpx;height:%dpx;object-fit:contain;background:#f4f4f4;display:block}
figcaption{font-size:11px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.cluster{margin:1em 0;padding-left:.6em;border-left:6px solid #ccc}
.missing{width:%dpx;height:%dpx;background:#ddd;display:flex;align-items:center;justify-content:center}
svg{border:1px solid #ddd;background:#fafafa;max-width:100%%;height:auto}
.key span{display:inline-block;width:1em;height:1em;vertical-align:middle;margin:0 .3em 0 .8em}
""" % (THUMB, THUMB, THUMB, THUMB, THUMB)

# Runs in the browser: records script errors and broken images, and writes what it found on <body>,
# so a headless browser's dumped DOM shows that the page ran and what it holds.
_CHECK_JS = """
(function(){
  var errors = [];
  window.addEventListener('error', function(e){ errors.push(String(e.message || e)); }, true);
  window.addEventListener('load', function(){
    var sections = %s.filter(function(id){ return document.getElementById(id); });
    var imgs = document.querySelectorAll('img');
    var broken = 0;
    for (var i = 0; i < imgs.length; i++) { if (!imgs[i].complete || imgs[i].naturalWidth === 0) broken++; }
    var b = document.body.dataset;
    b.sections = sections.join(' ');
    b.images = imgs.length;
    b.broken = broken;
    b.mapItems = document.querySelectorAll('#map svg .pt').length;
    b.errors = errors.length;
    b.checked = 'yes';
  });
})();
""" % json.dumps(list(SECTIONS))


def _fig(path: str, b64: str | None, caption: str) -> str:
    name = html.escape(os.path.basename(path))
    title = html.escape(path, quote=True)
    img = (f'<img src="data:image/jpeg;base64,{b64}" alt="{name}" title="{title}">' if b64 else
           f'<div class="missing" title="{title}">unreadable</div>')
    return f'<figure>{img}<figcaption title="{title}">{html.escape(caption)}</figcaption></figure>'


def _table(rows) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


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


def _stats_html(s: dict) -> str:
    near = s.get("near_duplicates")
    rows = [("files", s["files"]), ("readable", s["readable"]), ("corrupt", s["corrupt"]),
            ("corrupt by kind", s["corrupt_by_kind"]), ("walk errors", s["walk_errors"]),
            ("formats", s["formats"]), ("bytes", s["bytes"]), ("width", s["width"]), ("height", s["height"]),
            ("megapixels", s["megapixels"]), ("orientation", s["orientation"]),
            ("top resolutions", s["top_resolutions"]), ("taken (EXIF)", s["taken"]), ("file mtime", s["mtime"]),
            ("exact duplicates", s["exact_duplicates"]),
            ("near-duplicate rate", "-" if not near else
             f"{near['rate']:.1%} of files ({near['files_with_a_near_duplicate']:,}) have another within "
             f"{near['threshold_bits']} bits of {near['hash']}")]
    out = _table(rows)
    if s["corrupt_files"]:
        out += "<h3>Corrupt files</h3><table><tr><th>file</th><th>kind</th><th>reason</th></tr>" + "".join(
            f"<tr><td>{html.escape(c['path'])}</td><td>{html.escape(str(c['kind']))}</td>"
            f"<td>{html.escape(str(c['reason']))}</td></tr>" for c in s["corrupt_files"]) + "</table>"
    return out


def _map_svg(exp: Exploration, thumbs: dict[str, str | None]) -> str:
    xy = np.asarray(exp.xy, np.float64)
    n = len(exp.paths)
    lo, hi = xy.min(0) if n else np.zeros(2), xy.max(0) if n else np.ones(2)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    px = MAP_PAD + (xy - lo) / span * np.array([MAP_W - 2 * MAP_PAD, MAP_H - 2 * MAP_PAD])
    px[:, 1] = MAP_H - px[:, 1]  # y up, as in a plot
    use_thumbs = n <= MAP_THUMBS_MAX
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {MAP_W} {MAP_H}" width="{MAP_W}" '
             f'height="{MAP_H}" role="img" aria-label="2-D map of the collection">']
    h = MAP_THUMB / 2
    for i, (p, c) in enumerate(zip(exp.paths, exp.labels)):
        x, y = px[i]
        col = _colour(int(c))
        title = f"<title>{html.escape(p)} (cluster {int(c)})</title>"
        b64 = thumbs.get(p) if use_thumbs else None
        if b64:
            parts.append(f'<g class="pt">{title}<rect x="{x - h - 2:.1f}" y="{y - h - 2:.1f}" width="{MAP_THUMB + 4}" '
                         f'height="{MAP_THUMB + 4}" fill="{col}"/><image x="{x - h:.1f}" y="{y - h:.1f}" '
                         f'width="{MAP_THUMB}" height="{MAP_THUMB}" preserveAspectRatio="xMidYMid slice" '
                         f'href="data:image/jpeg;base64,{b64}"/></g>')
        else:
            parts.append(f'<circle class="pt" cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{col}" '
                         f'fill-opacity="0.75">{title}</circle>')
    parts.append("</svg>")
    key = "".join(f'<span style="background:{_colour(c.id)}"></span>cluster {c.id} ({c.size})' for c in exp.clusters)
    ev = exp.explained
    return (f'<p>PCA of the features: the two axes hold {ev[0]:.0%} and {ev[1]:.0%} of the variance. '
            f'Hover for file names.</p>' + "".join(parts) + f'<p class="key">{key}</p>')


def render_html(exp: Exploration, *, title: str = "imgsim explore", json_name: str | None = None,
                workers: int | None = None) -> str:
    """The report as one HTML string; everything it shows is inside it."""
    want = [exp.paths[i] for c in exp.clusters for i in c.representatives]
    want += [exp.paths[i] for i, _ in exp.outliers]
    thumbs = _thumbnails(want, THUMB, workers)
    map_thumbs = _thumbnails(exp.paths, MAP_THUMB, workers) if len(exp.paths) <= MAP_THUMBS_MAX else {}

    clusters = []
    for c in exp.clusters:
        figs = "".join(_fig(exp.paths[i], thumbs.get(exp.paths[i]), os.path.basename(exp.paths[i]))
                       for i in c.representatives)
        clusters.append(f'<div class="cluster" style="border-color:{_colour(c.id)}"><h3>Cluster {c.id}: '
                        f'{c.size} image{"s" if c.size != 1 else ""} (mean distance to centre {c.spread:.3f})</h3>'
                        f'<div class="thumbs">{figs}</div></div>')
    sil = ""
    if exp.silhouettes:
        sil = "<p>Mean silhouette by k: " + ", ".join(
            f"{k}: {v:.3f}" for k, v in sorted(exp.silhouettes.items())) + "</p>"
    outs = "".join(_fig(exp.paths[i], thumbs.get(exp.paths[i]), f"{s:.3f} {os.path.basename(exp.paths[i])}")
                   for i, s in exp.outliers)
    nav = "".join(f'<a href="#{s}">{s}</a>' for s in SECTIONS)
    data_link = (f'<p>The same data as JSON: <a href="{html.escape(json_name, quote=True)}">'
                 f'{html.escape(json_name)}</a></p>') if json_name else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{html.escape(title)}</title><style>{_CSS}</style>
<script>{_CHECK_JS}</script></head>
<body>
<header><h1>{html.escape(title)}</h1>
<p>{len(exp.paths):,} images, features: {html.escape(exp.features)}.</p><nav>{nav}</nav>{data_link}</header>
<section id="stats"><h2>Statistics</h2>{_stats_html(exp.stats)}</section>
<section id="clusters"><h2>Clusters (k = {exp.k}, {html.escape(exp.k_rule)})</h2>{sil}{"".join(clusters)}</section>
<section id="outliers"><h2>Outliers</h2><p>{html.escape(exp.outlier_rule)}.</p><div class="thumbs">{outs}</div></section>
<section id="map"><h2>Map</h2>{_map_svg(exp, map_thumbs)}</section>
</body></html>
"""


def write_report(exp: Exploration, out_html: str, *, json_path: str | None = None, title: str | None = None,
                 workers: int | None = None) -> tuple[str, str]:
    """Write the HTML report and its JSON (default: the HTML path with .json); returns both paths."""
    json_path = json_path or os.path.splitext(out_html)[0] + ".json"
    folder = os.path.dirname(os.path.abspath(out_html))
    os.makedirs(folder, exist_ok=True)
    for path in (json_path, out_html):  # both, before either is written: a report never stands half-made
        check_target(path)
    rel = os.path.relpath(os.path.abspath(json_path), folder)
    page = render_html(exp, title=title or "imgsim explore", json_name=rel, workers=workers)
    for path, text in ((json_path, json.dumps(exp.to_dict(), indent=1) + "\n"), (out_html, page)):
        write_text(path, text)
    return out_html, json_path
