"""Report thumbnails: small JPEG files in a folder beside a page (`report_files/` for `report.html`), named
by position, never after a user's file name, made on the one crash-isolating pool. The dedup review page
and the explore report both use them."""
from __future__ import annotations

import os
import re

__all__ = ["THUMB_SIDE", "make_thumbs", "prepare_folder", "thumbs_folder"]

THUMB_SIDE = 160
THUMB_QUALITY = 75  # 3-4 KB per 160 px thumbnail of a photo
# Marks a thumbnail folder as ours: an existing folder without it is never written into.
_MARKER = ".imgsim-review"
_THUMB_NAME = re.compile(r"^\d+\.jpg$")


def thumbs_folder(page: str) -> str:
    """The thumbnail folder of a page: report.html -> report_files beside it."""
    stem = os.path.splitext(os.path.basename(page))[0] or "report"
    return os.path.join(os.path.dirname(os.path.abspath(page)), f"{stem}_files")


def check_folder(folder: str) -> None:
    """Refuse a thumbnail folder of a page's name that is not ours (it could hold the user's files), or that
    is no folder: callers with slow work before the page call it first, prepare_folder always does."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"{folder} exists and is not a folder; move it or choose another page name")
    if os.path.isdir(folder) and not os.path.exists(os.path.join(folder, _MARKER)):
        if os.listdir(folder):
            raise ValueError(f"{folder} exists and was not made by imgsim; move it or choose another page name")


def prepare_folder(folder: str) -> None:
    """Create the thumbnail folder, or empty an earlier run's one of its thumbnails; refuse a folder of
    the same name that is not ours (check_folder)."""
    check_folder(folder)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, _MARKER), "w", encoding="utf-8") as f:
        f.write("thumbnails of an imgsim dedup review page\n")
    for name in os.listdir(folder):
        if _THUMB_NAME.match(name):
            os.unlink(os.path.join(folder, name))


def _thumb_chunk(chunk: list[tuple[int, str, str]], side: int) -> list[tuple[int, tuple[int, int] | None]]:
    """Pool worker: write each (index, source, destination) as a JPEG thumbnail; its size, or None."""
    from imgsim_fast.reports.sheet import thumbnail

    out = []
    for i, src, dst in chunk:
        try:
            im = thumbnail(src, side)
        except OSError:
            im = None
        if im is not None:
            im.save(dst, format="JPEG", quality=THUMB_QUALITY)
        out.append((i, None if im is None else im.size))
    return out


def _thumb_failed(item, reason, kind, side):
    return [(item[0], None)]


def make_thumbs(paths: list[str], folder: str, workers: int | None = None,
                side: int = THUMB_SIDE) -> list[tuple[int, int] | None]:
    """Thumbnail i of paths[i] as folder/i.jpg, on the pipeline's crash-isolating pool; sizes (None: none)."""
    from imgsim_fast.runtime.pool import default_workers, run_pool

    items = [(i, p, os.path.join(folder, f"{i}.jpg")) for i, p in enumerate(paths)]
    workers = default_workers() if workers is None else max(1, int(workers))
    if workers == 1 or len(items) < 32:
        results = [_thumb_chunk(items, side)]
    else:
        step = max(8, min(64, len(items) // (4 * workers) or 1))
        chunks = [items[k:k + step] for k in range(0, len(items), step)]
        results = run_pool(_thumb_chunk, chunks, side, workers, lambda n: None, _thumb_failed)
    sizes: list = [None] * len(paths)
    for res in results:
        for i, size in res:
            sizes[i] = size
    return sizes
