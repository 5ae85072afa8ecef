"""Look-alike non-duplicates for the accuracy corpus (issue 10): different pictures that share a template.

A dedup that keys on layout, palette or background groups these although a person keeps them apart: the
bug behind the issue was 32 dialog screenshots of one application grouped as one. Seven kinds, each a set of
pictures that are all different from each other (each is its own family in the corpus):

  screenshot  the top screen of Python's library reference pages (python3.11-doc: one Sphinx theme) and
              72 dialogs of one made-up application in one GTK-like style (settings, forms, file choosers,
              about boxes, messages, progress), rendered by headless Chromium
  slide       slides of one template (title bar, bullets, footer, some with a small figure), Chromium
  icon        Oxygen icon theme 256 px PNGs: folders with different emblems and text document types
  object      Tux Paint's photographic stamps (fruit, vegetables, nuts) centred on white: product shots
  chart       bar and line charts of one style (axes, grid, palette), different data, Chromium
  build       the steps of slide builds: one slide with its bullets revealed one at a time, a title slide
              gaining a subtitle and a byline, on a white template and on a dark gradient one, Chromium. A
              step differs from the one before by a line of text written over it, as a caption differs from
              its photo, but the line is new content on a designed page: a different slide, not a copy
  burst       six frames of each of six scenes: a real landscape photo (lomiri-wallpapers-16.04, not used
              elsewhere in the corpus) with a real cut-out animal (Tux Paint) walking across it, sensor
              noise differing per frame; the framing never moves, so only the subject tells frames apart.
              Each scene has a seventh frame taken before the animal walked in: the scene alone differs
              from the others by something added over one picture, as a caption differs from its photo

Everything comes from Debian packages (downloaded with apt-get, unpacked with dpkg-deb, never installed) or
is generated here from a fixed seed. Chromium renders many pictures per launch: one page of fixed-size
iframes, one screenshot, cut into cells. Without Chromium the three rendered kinds are left out (a line on
stdout says so).

Limits: the dialogs, slides and charts are synthetic (one made-up style each, text from a word list), the
icons and objects are clipart-like rather than real product photos, and the bursts are composites (no
motion blur, no change of pose or lighting), so these measure the failure modes named above, not the
whole variety of real look-alikes.
"""
from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import tempfile

import numpy as np
from PIL import Image

from imgsim_fast.io.atomic_write import replacing
from imgsim_fast.bench.debsrc import unpack_deb

__all__ = ["LOOKALIKE_KINDS", "build_lookalikes"]

LOOKALIKE_KINDS = ("screenshot", "slide", "icon", "object", "chart", "burst", "build")
# 3: 72 dialogs (was 24), so that each half holds two or more of every kind; 4: empty burst frames; 5: builds
VERSION = 5
SHEET_MAX = 4096  # Chromium screenshot side: larger windows are slow and may exceed the texture limit

_PYDOC = "./usr/share/doc/python3.11/html"
# Library reference pages: one theme, different modules. Their first screen is header, title and prose.
_PYDOC_PAGES = ("abc", "argparse", "array", "asyncio", "base64", "bisect", "calendar", "collections",
                "csv", "datetime", "decimal", "difflib", "enum", "fnmatch", "functools", "glob", "gzip",
                "hashlib", "heapq", "itertools", "json", "logging", "math", "os", "pathlib", "random", "re",
                "shutil", "socket", "sqlite3", "string", "struct", "textwrap", "time", "uuid", "zipfile")
_OXYGEN = "./usr/share/icons/oxygen/base/256x256"
_STAMPS = "./usr/share/tuxpaint/stamps"
# Burst scenes: (background photo, walking animal). Landscapes with open ground for the animal to cross.
_BURSTS = (("aitzgorri_by_Aitzol_Berasategi.jpg", "animals/mammals/equines/horse.png"),
           ("picosdeeuropa_by_Aitzol_Berasategi.jpg", "animals/mammals/bovines/cow.png"),
           ("life_by_Aitzol_Berasategi.jpg", "animals/mammals/deer/deer.png"),
           ("sunset_by_Aitzol_Berasategi.jpg", "animals/mammals/dogs/dog.png"),
           ("Bridge_by_Sander_Klootwijk.jpg", "animals/mammals/bears/bear.png"),
           ("seeding_by_Clements_Engelhardt.jpg", "animals/mammals/equines/zebra.png"))
BURST_FRAMES = 6


def build_lookalikes(cache_dir: str, seed: int = 0) -> list[tuple[str, str, str]]:
    """[(kind, name, path of an RGB PNG)] of every look-alike picture, built once under
    cache_dir/corpus_src/lookalikes-v<VERSION> (a manifest.json records what was built)."""
    cache_dir = os.path.abspath(cache_dir)  # Chromium is given file:// URLs, which must be absolute
    # Each seed has its folder, so that building the audit's look-alikes keeps the main corpus's.
    root = os.path.join(cache_dir, "corpus_src", f"lookalikes-v{VERSION}" + (f"-s{seed}" if seed else ""))
    manifest = os.path.join(root, "manifest.json")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    key = {"version": VERSION, "seed": seed, "chromium": chromium is not None}
    if os.path.exists(manifest):
        with open(manifest, encoding="utf-8") as f:
            doc = json.load(f)
        if doc["key"] == key:
            return [(k, n, os.path.join(root, p)) for k, n, p in doc["pictures"]]
    src = os.path.join(cache_dir, "corpus_src", "debian")
    rng = np.random.default_rng(seed)
    pics: list[tuple[str, str, Image.Image]] = []
    pics += _icons(cache_dir, src)
    pics += _objects(cache_dir, src)
    pics += _bursts(cache_dir, src, rng, np.random.default_rng([seed, 2]))
    if chromium is None:
        print("[corpus] chromium not found: screenshot, slide and chart look-alikes are left out", flush=True)
    else:
        with tempfile.TemporaryDirectory() as work:
            # The dialogs past the first 24 come from a generator of their own, so that adding them left every
            # other look-alike as it was.
            pics += _screenshots(cache_dir, src, chromium, work, rng, np.random.default_rng([seed, 1]))
            pics += [("slide", n, im) for n, im in _render(chromium, work, "slide", _slides(rng), (960, 540))]
            pics += [("chart", n, im) for n, im in _render(chromium, work, "chart", _charts(rng), (800, 500))]
            # Last, with a generator of its own: every look-alike above stays as it was before builds came.
            pics += [("build", n, im) for n, im in _render(chromium, work, "build",
                                                           _builds(np.random.default_rng([seed, 3])), (960, 540))]
    os.makedirs(root, exist_ok=True)
    rows = []
    for kind, name, im in pics:
        rel = f"{kind}/{name}.png"
        os.makedirs(os.path.join(root, kind), exist_ok=True)
        im.convert("RGB").save(os.path.join(root, rel))
        rows.append((kind, name, rel))
    with replacing(manifest) as f:
        json.dump({"key": key, "pictures": rows}, f, indent=1)
    return [(k, n, os.path.join(root, p)) for k, n, p in rows]


def _on_white(im: Image.Image) -> Image.Image:
    im = im.convert("RGBA")
    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
    return Image.alpha_composite(bg, im).convert("RGB")


def _distinct(items: list[tuple[str, Image.Image]]) -> list[tuple[str, Image.Image]]:
    """Drop pictures that all but equal an earlier one: themes ship one drawing under several names, or with
    a detail changed (Oxygen's text-calendar and text-vcalendar differ by a few binder holes), and whether
    such variants are duplicates is a matter of opinion, so they are left out rather than labelled."""
    kept: list[np.ndarray] = []
    out = []
    for name, im in items:
        g = np.asarray(im.convert("L").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32)
        # Mean absolute difference in grey levels at 64x64: the calendar pair is 0.6, the closest kept
        # pairs (text-plain / text-sgml: ruled paper and holes added) about 3.
        if all(np.abs(g - k).mean() >= 1.5 for k in kept):
            kept.append(g)
            out.append((name, im))
    return out


# ------------------------------------------------------------------------------------------------
# Icons, objects and bursts: Debian's shipped pictures, composed with Pillow


def _icons(cache_dir: str, src: str) -> list[tuple[str, str, Image.Image]]:
    dest = os.path.join(src, "oxygen-icon-theme")
    if not unpack_deb(cache_dir, "oxygen-icon-theme", dest,
                      (f"{_OXYGEN}/places/folder*.png", f"{_OXYGEN}/mimetypes/text-*.png")):
        return []
    items = []
    for sub in ("places", "mimetypes"):
        d = os.path.join(dest, _OXYGEN, sub)
        for f in sorted(os.listdir(d)):
            # Colour variants (folder-red, folder-blue...) are one drawing recoloured: greyscale copies of
            # each other, and the corpus counts a greyscale copy as a duplicate. Symlinks are aliases.
            stem = f[:-4]
            if os.path.islink(os.path.join(d, f)) or stem.split("-")[-1] in _COLOURS:
                continue
            with Image.open(os.path.join(d, f)) as im:
                items.append((stem, _on_white(im)))
    items = _distinct(items)
    return [("icon", n, im) for n, im in items[::max(1, len(items) // 36)][:36]]


_COLOURS = {"black", "blue", "brown", "cyan", "green", "grey", "orange", "red", "violet", "yellow"}


def _stamps(cache_dir: str, src: str) -> str | None:
    dest = os.path.join(src, "tuxpaint-stamps-default")
    ok = unpack_deb(cache_dir, "tuxpaint-stamps-default", dest,
                    (f"{_STAMPS}/food/fruit/*.png", f"{_STAMPS}/food/vegetables/*.png",
                     f"{_STAMPS}/food/nuts/*.png", f"{_STAMPS}/animals/mammals/*.png"))
    return os.path.join(dest, _STAMPS) if ok else None


def _objects(cache_dir: str, src: str) -> list[tuple[str, str, Image.Image]]:
    stamps = _stamps(cache_dir, src)
    if stamps is None:
        return []
    items = []
    for sub in ("food/fruit", "food/vegetables", "food/nuts"):
        d = os.path.join(stamps, sub)
        for f in sorted(os.listdir(d)):  # files only: the cartoon/ subfolders are drawings, not photos
            p = os.path.join(d, f)
            if not f.endswith(".png") or os.path.islink(p) or "_mirror" in f:
                continue
            with Image.open(p) as im:
                im = im.convert("RGBA")
            # A product shot: the object fills ~80% of a square white canvas, centred on its bounding box.
            box = im.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox()
            if box:
                im = im.crop(box)
            k = 512 / max(im.size)  # up or down: many stamps are small
            im = im.resize((max(1, round(im.width * k)), max(1, round(im.height * k))), Image.Resampling.LANCZOS)
            canvas = Image.new("RGBA", (640, 640), (255, 255, 255, 255))
            canvas.alpha_composite(im, ((640 - im.width) // 2, (640 - im.height) // 2))
            items.append((f"{sub.split('/')[-1]}-{f[:-4]}", canvas.convert("RGB")))
    items = _distinct(items)
    return [("object", n, im) for n, im in items[::max(1, len(items) // 36)][:36]]


def _bursts(cache_dir: str, src: str, rng: np.random.Generator,
            empty_rng: np.random.Generator) -> list[tuple[str, str, Image.Image]]:
    stamps = _stamps(cache_dir, src)
    dest = os.path.join(src, "lomiri-wallpapers-16.04")
    if stamps is None or not unpack_deb(cache_dir, "lomiri-wallpapers-16.04", dest,
                                        ("./usr/share/backgrounds/*.jpg",)):
        return []
    out = []
    for bg_name, animal in _BURSTS:
        with Image.open(os.path.join(dest, "usr/share/backgrounds", bg_name)) as bg:
            bg = bg.convert("RGB")
        bg.thumbnail((1024, 1024), Image.Resampling.LANCZOS)
        with Image.open(os.path.join(stamps, animal)) as a:
            a = a.convert("RGBA")
        box = a.getchannel("A").getbbox()
        a = a.crop(box) if box else a
        W, H = bg.size
        scene = os.path.splitext(bg_name)[0].split("_")[0]
        for t in range(BURST_FRAMES):
            # The animal walks left to right a step of ~9% of the width per frame, growing slightly as it
            # nears the camera; its feet stay on a ground line in the lower part of the frame.
            s = 0.40 * H * (1 + 0.03 * t) / a.height
            sub = a.resize((max(1, int(a.width * s)), max(1, int(a.height * s))), Image.Resampling.LANCZOS)
            x = int(0.08 * W + t * 0.09 * W)
            y = int(0.92 * H) - sub.height + int(rng.integers(-4, 5))
            frame = bg.convert("RGBA")
            frame.alpha_composite(sub, (x, y))
            # Sensor noise differs from frame to frame even where nothing moved.
            arr = np.asarray(frame.convert("RGB"), dtype=np.float32)
            arr += rng.normal(0, 2.0, arr.shape).astype(np.float32)
            im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
            out.append(("burst", f"{scene}-{t}", im))
        # Its own generator: the frames above and every later look-alike stay as they were before it came.
        arr = np.asarray(bg, dtype=np.float32)
        arr = arr + empty_rng.normal(0, 2.0, arr.shape).astype(np.float32)
        out.append(("burst", f"{scene}-empty", Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))))
    return out


# ------------------------------------------------------------------------------------------------
# Rendered kinds: HTML generated here (or a documentation package), screenshots from headless Chromium


def _render(chromium: str, work: str, tag: str, pages: list[tuple[str, str]],
            size: tuple[int, int]) -> list[tuple[str, Image.Image]]:
    """Screenshots at `size` of pages [(name, HTML text or file:// URL)]: many per Chromium launch, as
    iframes on one sheet, cut apart afterwards."""
    w, h = size
    cols, rows_max = max(1, SHEET_MAX // w), max(1, SHEET_MAX // h)
    per = cols * rows_max
    urls = []
    for i, (name, page) in enumerate(pages):
        if page.startswith("file://"):
            urls.append(page)
        else:
            p = os.path.join(work, f"{tag}-{i}.html")
            with open(p, "w", encoding="utf-8") as f:
                f.write(page)
            urls.append("file://" + p)
    out = []
    for s in range(0, len(urls), per):
        chunk = urls[s:s + per]
        nrows = -(-len(chunk) // cols)
        ncols = min(cols, len(chunk))
        frames = "".join(
            f'<iframe scrolling="no" src="{html.escape(u)}" style="position:absolute;left:{(j % cols) * w}px;'
            f'top:{(j // cols) * h}px;width:{w}px;height:{h}px;border:0"></iframe>' for j, u in enumerate(chunk))
        sheet = os.path.join(work, f"{tag}-sheet{s}.html")
        with open(sheet, "w", encoding="utf-8") as f:
            f.write(f'<!doctype html><html><body style="margin:0;overflow:hidden">{frames}</body></html>')
        png = sheet[:-5] + ".png"
        # A fresh profile per launch: other Chromium processes on the machine hold the default one.
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--no-first-run", "--force-device-scale-factor=1", f"--user-data-dir={work}/profile",
                        "--virtual-time-budget=5000", f"--window-size={ncols * w},{nrows * h}",
                        f"--screenshot={png}", "file://" + sheet],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180)
        with Image.open(png) as im:
            im = im.convert("RGB")
        for j in range(len(chunk)):
            x, y = (j % cols) * w, (j // cols) * h
            out.append((pages[s + j][0], im.crop((x, y, x + w, y + h))))
    return out


def _screenshots(cache_dir: str, src: str, chromium: str, work: str, rng: np.random.Generator,
                 more: np.random.Generator) -> list[tuple[str, str, Image.Image]]:
    out = []
    dest = os.path.join(src, "python3.11-doc")
    if unpack_deb(cache_dir, "python3.11-doc", dest,
                  (f"{_PYDOC}/_static/*", *(f"{_PYDOC}/library/{p}.html" for p in _PYDOC_PAGES))):
        base = os.path.join(dest, _PYDOC, "library")
        pages = [(f"pydoc-{p}", "file://" + os.path.join(base, f"{p}.html")) for p in _PYDOC_PAGES
                 if os.path.exists(os.path.join(base, f"{p}.html"))]
        out += [("screenshot", n, im) for n, im in _render(chromium, work, "pydoc", pages[::2], (1024, 768))]
    dialogs = _dialogs(rng, 24) + _dialogs(more, 48, start=24)
    out += [("screenshot", n, im) for n, im in _render(chromium, work, "dialog", dialogs, (640, 480))]
    return out


_WORDS = ("account", "archive", "automatic", "backup", "battery", "browser", "cache", "calendar", "camera",
          "channel", "cloud", "colour", "compact", "connection", "contacts", "daily", "default", "device",
          "display", "document", "download", "editor", "email", "export", "external", "file", "folder",
          "font", "format", "history", "image", "import", "index", "keyboard", "language", "layout", "library",
          "local", "location", "lock", "media", "message", "mode", "monitor", "network", "notes", "offline",
          "panel", "password", "photo", "preview", "printer", "privacy", "profile", "project", "proxy",
          "quality", "recent", "region", "remote", "report", "screen", "search", "server", "session", "share",
          "size", "sound", "source", "startup", "storage", "sync", "system", "theme", "time", "toolbar",
          "update", "upload", "user", "version", "video", "volume", "weekly", "window", "workspace", "zoom")


def _phrase(rng: np.random.Generator, lo: int, hi: int) -> str:
    words = [str(w) for w in rng.choice(_WORDS, size=int(rng.integers(lo, hi + 1)), replace=False)]
    return " ".join(words).capitalize()


_DIALOG_CSS = """
body{margin:0;width:640px;height:480px;overflow:hidden;font:14px 'DejaVu Sans',sans-serif;color:#2e3436}
.win{position:absolute;left:0;top:0;right:0;bottom:0;display:flex;flex-direction:column;background:#f6f5f4;
 border:1px solid #b6b0aa}
.hdr{height:46px;flex:none;background:#ebebeb;border-bottom:1px solid #cdc7c2;display:flex;align-items:center;
 justify-content:center;font-weight:bold;position:relative}
.hdr .x{position:absolute;right:10px;top:11px;width:24px;height:24px;border-radius:12px;background:#d8d4d0;
 text-align:center;line-height:24px;font-size:12px}
.hdr .t{position:absolute;left:10px;top:9px;padding:4px 10px;border:1px solid #cdc7c2;border-radius:5px;
 background:#fafafa;font-weight:normal}
.body{flex:1;padding:16px 22px;overflow:hidden}
.list{background:#fff;border:1px solid #d8d4d0;border-radius:8px}
.row{display:flex;align-items:center;justify-content:space-between;padding:0 12px;height:44px;
 border-top:1px solid #e6e2de}
.row:first-child{border-top:0}
.sw{width:40px;height:22px;border-radius:11px;background:#c8c4c0;position:relative}
.sw.on{background:#3584e4}
.sw::after{content:'';position:absolute;top:2px;left:2px;width:18px;height:18px;border-radius:9px;background:#fff}
.sw.on::after{left:20px}
.entry{width:210px;height:28px;border:1px solid #cdc7c2;border-radius:5px;background:#fff;padding:0 8px;
 line-height:28px;color:#555;overflow:hidden;white-space:nowrap}
.combo{width:160px;height:28px;border:1px solid #cdc7c2;border-radius:5px;background:#fafafa;padding:0 8px;
 line-height:28px}
.combo::after{content:'\\25BE';float:right}
.chk{width:14px;height:14px;border:1px solid #999;border-radius:3px;background:#fff;display:inline-block;
 margin-right:8px;vertical-align:middle}
.chk.on{background:#3584e4;border-color:#1b6acb}
.btns{flex:none;display:flex;justify-content:flex-end;padding:12px 18px;border-top:1px solid #dcd8d4}
.btn{margin-left:8px;padding:6px 16px;border:1px solid #cdc7c2;border-radius:5px;background:#fafafa}
.btn.sug{background:#3584e4;color:#fff;border-color:#1b6acb}
.btn.bad{background:#e01b24;color:#fff;border-color:#a51d2d}
.side{width:150px;float:left;background:#efedec;height:100%;margin:-16px 16px -16px -22px;padding:12px 0}
.side div{padding:8px 16px}
.side .sel{background:#d6d1cd}
.file{display:flex;height:30px;align-items:center;border-bottom:1px solid #eee;font-size:13px}
.ico{width:18px;height:18px;border-radius:3px;margin-right:10px}
.bar{height:10px;background:#dcd8d4;border-radius:5px;margin:18px 0}
.bar div{height:10px;background:#3584e4;border-radius:5px}
.tabs{display:flex;border-bottom:1px solid #cdc7c2;margin:-4px 0 14px 0}
.tabs div{padding:8px 14px;color:#555}
.tabs .sel{border-bottom:3px solid #3584e4;color:#000}
"""
_ICON_COLOURS = ("#3584e4", "#33d17a", "#f6d32d", "#ff7800", "#e01b24", "#9141ac", "#986a44", "#77767b")
_APP = "Notewise"


def _control(rng: np.random.Generator) -> str:
    c = int(rng.integers(0, 4))
    if c == 0:
        return f'<div class="sw{" on" if rng.random() < 0.5 else ""}"></div>'
    if c == 1:
        return f'<div class="entry">{html.escape(_phrase(rng, 1, 2).lower())}</div>'
    if c == 2:
        return f'<div class="combo">{html.escape(_phrase(rng, 1, 1))}</div>'
    return f'<div class="combo" style="width:80px">{int(rng.integers(1, 500))}</div>'


def _rows(rng: np.random.Generator, n: int) -> str:
    return '<div class="list">' + "".join(
        f'<div class="row"><span>{html.escape(_phrase(rng, 1, 3))}</span>{_control(rng)}</div>'
        for _ in range(n)) + "</div>"


def _buttons(*labels: str, style: str = "sug") -> str:
    return '<div class="btns">' + "".join(
        f'<div class="btn{" " + style if i == len(labels) - 1 else ""}">{html.escape(b)}</div>'
        for i, b in enumerate(labels)) + "</div>"


def _dialog(kind: str, rng: np.random.Generator) -> tuple[str, str]:
    """(title, inner HTML of the window) of one dialog of the made-up application."""
    if kind == "settings":
        return (f"{_phrase(rng, 1, 1)} Settings",
                f'<div class="body">{_rows(rng, int(rng.integers(5, 8)))}</div>' + _buttons("Cancel", "Apply"))
    if kind == "tabs":
        sel = int(rng.integers(0, 4))
        tabs = "".join(f'<div class="{"sel" if i == sel else ""}">{html.escape(_phrase(rng, 1, 1))}</div>'
                       for i in range(4))
        return ("Preferences", f'<div class="body"><div class="tabs">{tabs}</div>'
                f'{_rows(rng, int(rng.integers(4, 7)))}</div>' + _buttons("Close", style=""))
    if kind == "form":
        rows = "".join(f'<div style="display:flex;justify-content:space-between;align-items:center;margin:10px 0">'
                       f'<span>{html.escape(_phrase(rng, 1, 2))}</span><div class="entry">'
                       f'{html.escape(_phrase(rng, 1, 2).lower()) if rng.random() < 0.6 else ""}</div></div>'
                       for _ in range(int(rng.integers(3, 6))))
        checks = "".join(f'<div style="margin:8px 0"><span class="chk{" on" if rng.random() < 0.5 else ""}">'
                         f'</span>{html.escape(_phrase(rng, 2, 4))}</div>' for _ in range(int(rng.integers(1, 3))))
        return (f"New {_phrase(rng, 1, 1)}", f'<div class="body">{rows}{checks}</div>' + _buttons("Cancel", "Create"))
    if kind == "file":
        places = ["Recent", "Home", "Documents", "Downloads", "Music", "Pictures", "Videos", "Trash"]
        sel = int(rng.integers(0, len(places)))
        side = "".join(f'<div class="{"sel" if i == sel else ""}">{p}</div>' for i, p in enumerate(places))
        files = "".join(
            f'<div class="file"><div class="ico" style="background:{_ICON_COLOURS[int(rng.integers(0, 8))]}">'
            f'</div><span style="flex:1">{html.escape(_phrase(rng, 1, 2).lower().replace(" ", "_"))}'
            f'.{rng.choice(["txt", "png", "pdf", "odt", "csv"])}</span><span style="width:70px">'
            f'{int(rng.integers(1, 999))} kB</span><span style="width:80px">{int(rng.integers(1, 28))} '
            f'{rng.choice(["Jan", "Mar", "Jun", "Sep", "Nov"])}</span></div>' for _ in range(int(rng.integers(5, 11))))
        return (rng.choice(["Open File", "Save As", "Select Folder", "Import"]),
                f'<div class="body"><div class="side">{side}</div>{files}</div>' + _buttons("Cancel", "Open"))
    if kind == "about":
        col = _ICON_COLOURS[int(rng.integers(0, 8))]
        return (f"About {_APP}",
                f'<div class="body" style="text-align:center"><div style="width:96px;height:96px;margin:10px auto;'
                f'border-radius:22px;background:{col};color:#fff;font:bold 56px sans-serif;line-height:96px">N</div>'
                f'<div style="font-size:22px;font-weight:bold">{_APP} {html.escape(_phrase(rng, 1, 1))}</div>'
                f'<div style="color:#777;margin:6px">Version {int(rng.integers(1, 9))}.{int(rng.integers(0, 30))}.'
                f'{int(rng.integers(0, 10))}</div><p>{html.escape(_phrase(rng, 5, 9))}.</p>'
                f'<p style="color:#1c71d8">{html.escape(_phrase(rng, 2, 3).lower().replace(" ", "-"))}.example.org'
                f'</p><p style="font-size:12px;color:#777">{html.escape(_phrase(rng, 6, 10))}</p></div>'
                + _buttons("Credits", "Close", style=""))
    if kind == "message":
        warn = rng.random() < 0.5
        icon = ('<div style="float:left;width:64px;height:64px;margin:10px 20px 0 0;border-radius:32px;'
                f'background:{"#f6d32d" if warn else "#e01b24"};color:#fff;font:bold 44px sans-serif;'
                'text-align:center;line-height:64px">!</div>')
        return ("",
                f'<div class="body" style="padding-top:60px">{icon}<div style="font-size:18px;font-weight:bold">'
                f'{html.escape(_phrase(rng, 3, 6))}?</div><p>{html.escape(_phrase(rng, 6, 12))}.</p>'
                f'<p>{html.escape(_phrase(rng, 4, 8))}.</p></div>'
                + _buttons("Cancel", rng.choice(["Delete", "Discard", "Replace"]), style="bad"))
    # progress
    done = int(rng.integers(5, 96))
    return (f"{rng.choice(['Copying', 'Exporting', 'Syncing', 'Uploading'])} {_phrase(rng, 1, 1).lower()}",
            f'<div class="body" style="padding-top:70px"><div style="font-weight:bold">'
            f'{html.escape(_phrase(rng, 2, 4))}</div><div class="bar"><div style="width:{done}%"></div></div>'
            f'<div style="color:#666">{int(rng.integers(2, 400))} of {int(rng.integers(400, 900))} items, '
            f'{int(rng.integers(1, 59))} seconds left</div><p style="color:#666;font-size:12px">'
            f'{html.escape(_phrase(rng, 2, 4).lower().replace(" ", "/"))}</p></div>' + _buttons("Cancel", style=""))


def _dialogs(rng: np.random.Generator, n: int, start: int = 0) -> list[tuple[str, str]]:
    """n dialogs, numbered from start, their kinds in turn. Dialogs of one kind share a layout and differ in
    words, a bar's length, an initial: the hardest look-alikes (72 of them, 9 of each kind and 18 settings
    pages, so that the corpus's split by name puts two or more of every kind in each half)."""
    kinds = ("settings", "tabs", "form", "file", "about", "message", "progress", "settings")
    out = []
    for i in range(start, start + n):
        kind = kinds[i % len(kinds)]
        title, inner = _dialog(kind, rng)
        tools = '<div class="t">&#8592;</div>' if kind in ("settings", "tabs") else ""
        out.append((f"dialog-{i:02d}-{kind}",
                    f'<!doctype html><html><head><meta charset="utf-8"><style>{_DIALOG_CSS}</style></head><body>'
                    f'<div class="win"><div class="hdr">{tools}{html.escape(title)}<div class="x">&#10005;</div></div>'
                    f'{inner}</div></body></html>'))
    return out


_SLIDE_CSS = """
body{margin:0;width:960px;height:540px;overflow:hidden;font-family:'DejaVu Sans',sans-serif;background:#fff;
 position:relative}
.top{height:86px;background:#1f3a5f;color:#fff;font-size:32px;font-weight:bold;display:flex;align-items:center;
 padding:0 40px}
.acc{height:6px;background:#f28c28}
.logo{position:absolute;right:36px;top:24px;width:38px;height:38px;border-radius:19px;background:#f28c28}
.c{padding:18px 46px;font-size:23px;color:#222;display:flex}
.c ul{margin:8px 0;padding-left:28px;flex:1}
.c li{margin:12px 0}
.foot{position:absolute;left:0;right:0;bottom:0;height:34px;border-top:1px solid #d0d4da;display:flex;
 justify-content:space-between;align-items:center;padding:0 36px;font-size:13px;color:#667}
"""


def _mini_chart(rng: np.random.Generator) -> str:
    vals = rng.integers(10, 100, int(rng.integers(3, 7)))
    bw = 220 // len(vals)
    bars = "".join(f'<rect x="{10 + i * bw}" y="{190 - v * 1.7:.0f}" width="{bw - 8}" height="{v * 1.7:.0f}" '
                   f'fill="{"#1f3a5f" if i % 2 == 0 else "#f28c28"}"/>' for i, v in enumerate(vals))
    return (f'<svg width="240" height="200" style="margin-top:20px"><line x1="6" y1="190" x2="236" y2="190" '
            f'stroke="#667"/>{bars}</svg>')


def _slides(rng: np.random.Generator, n: int = 32) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        bullets = "".join(f"<li>{html.escape(_phrase(rng, 3, 7))}</li>" for _ in range(int(rng.integers(2, 6))))
        fig = _mini_chart(rng) if i % 3 == 2 else ""
        out.append((f"slide-{i:02d}",
                    f'<!doctype html><html><head><meta charset="utf-8"><style>{_SLIDE_CSS}</style></head><body>'
                    f'<div class="top">{html.escape(_phrase(rng, 2, 4))}</div><div class="acc"></div>'
                    f'<div class="logo"></div><div class="c"><ul>{bullets}</ul>{fig}</div>'
                    f'<div class="foot"><span>Northwind Labs &middot; Quarterly review</span><span>{i + 2}</span>'
                    f'</div></body></html>'))
    return out


_BUILD_CSS = {
    # The slides' white template, and a dark one whose gradient runs under the text (no flat background).
    "white": _SLIDE_CSS,
    "dark": _SLIDE_CSS.replace("background:#fff;", "background:linear-gradient(135deg,#0f2027,#203a43 55%,#2c5364);")
    .replace(".top{height:86px;background:#1f3a5f;", ".top{height:86px;background:transparent;")
    .replace("color:#222;", "color:#eef;").replace("color:#667}", "color:#aab}")
    .replace("border-top:1px solid #d0d4da;", "border-top:1px solid #567;"),
}
_TITLE_CSS = """
.t1{position:absolute;left:60px;right:60px;top:170px;font-size:40px;white-space:nowrap;font-weight:bold;
 text-align:center}
.t2{position:absolute;left:80px;right:80px;top:260px;font-size:26px;text-align:center}
.t3{position:absolute;left:80px;right:80px;top:330px;font-size:18px;text-align:center;opacity:.8}
"""


def _builds(rng: np.random.Generator, n: int = 12) -> list[tuple[str, str]]:
    """Steps of n slide builds, each step its own picture (build-NN-stepK): bullet slides revealing 3-4
    bullets one at a time, and title slides gaining a subtitle, then a byline; templates in turn white and
    dark (a gradient under the text). Consecutive steps differ by one line of text and nothing else."""
    out = []
    for i in range(n):
        style = ("white", "dark")[i % 2]
        css = _BUILD_CSS[style]
        colour = "#222" if style == "white" else "#eef"
        if i % 3 == 2:
            lines = [html.escape(_phrase(rng, 2, 3)), html.escape(_phrase(rng, 3, 6)),
                     f"{html.escape(_phrase(rng, 1, 2))} &middot; {_MONTHS[int(rng.integers(12))]} "
                     f"{int(rng.integers(2015, 2025))}"]
            for k in range(1, 4):
                body = "".join(f'<div class="t{x + 1}" style="color:{colour}">{lines[x]}</div>' for x in range(k))
                out.append((f"build-{i:02d}-step{k}",
                            f'<!doctype html><html><head><meta charset="utf-8"><style>{css}{_TITLE_CSS}</style>'
                            f'</head><body>{body}<div class="acc" style="position:absolute;left:0;right:0;top:0">'
                            f'</div></body></html>'))
            continue
        title = html.escape(_phrase(rng, 2, 4))
        bullets = [html.escape(_phrase(rng, 3, 7)) for _ in range(int(rng.integers(3, 5)))]
        for k in range(1, len(bullets) + 1):
            items = "".join(f"<li>{b}</li>" for b in bullets[:k])
            out.append((f"build-{i:02d}-step{k}",
                        f'<!doctype html><html><head><meta charset="utf-8"><style>{css}</style></head><body>'
                        f'<div class="top">{title}</div><div class="acc"></div><div class="logo"></div>'
                        f'<div class="c"><ul>{items}</ul></div><div class="foot"><span>Northwind Labs &middot; '
                        f'Quarterly review</span><span>{i + 2}</span></div></body></html>'))
    return out


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _charts(rng: np.random.Generator, n: int = 36) -> list[tuple[str, str]]:
    """Bar and line charts of one style: 800x500, axes 0-100 with a grid every 20, one palette."""
    out = []
    x0, y0, pw, ph = 70, 430, 690, 340  # plot origin (bottom left) and size
    for i in range(n):
        grid = "".join(f'<line x1="{x0}" y1="{y0 - v * ph / 100:.0f}" x2="{x0 + pw}" y2="{y0 - v * ph / 100:.0f}" '
                       f'stroke="#ddd"/><text x="{x0 - 10}" y="{y0 - v * ph / 100 + 5:.0f}" text-anchor="end" '
                       f'font-size="13" fill="#555">{v}</text>' for v in range(0, 101, 20))
        step = pw / 12
        labels = "".join(f'<text x="{x0 + (m + 0.5) * step:.0f}" y="{y0 + 22}" text-anchor="middle" font-size="13" '
                         f'fill="#555">{_MONTHS[m]}</text>' for m in range(12))
        if i % 3 != 2:
            vals = rng.integers(12, 96, 12)
            body = "".join(f'<rect x="{x0 + m * step + 8:.0f}" y="{y0 - v * ph / 100:.0f}" width="{step - 16:.0f}" '
                           f'height="{v * ph / 100:.0f}" fill="#4e79a7"/>' for m, v in enumerate(vals))
        else:
            body = ""
            for colour in ("#4e79a7", "#f28e2b"):
                vals = np.clip(np.cumsum(rng.normal(0, 9, 12)) + rng.integers(30, 70), 3, 97)
                pts = " ".join(f"{x0 + (m + 0.5) * step:.0f},{y0 - v * ph / 100:.0f}" for m, v in enumerate(vals))
                body += f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="3"/>'
        title = f"{_phrase(rng, 1, 2)} by month, {int(rng.integers(2015, 2025))}"
        svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="800" height="500" font-family="DejaVu Sans">'
               f'<rect width="800" height="500" fill="#fff"/><text x="400" y="40" text-anchor="middle" '
               f'font-size="22" fill="#222">{html.escape(title)}</text>{grid}<line x1="{x0}" y1="{y0}" '
               f'x2="{x0 + pw}" y2="{y0}" stroke="#333" stroke-width="1.5"/>{labels}{body}</svg>')
        out.append((f"chart-{i:02d}", f'<!doctype html><html><body style="margin:0;overflow:hidden">{svg}</body></html>'))
    return out
