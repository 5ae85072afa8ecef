"""Keep-best policy: which file of a duplicate group is kept, as a sort key per file (smaller is better).

Default order (issue 6): the largest pixel count, then a lossless format, then the larger file, then the
oldest. Pixels are the file's own width x height (a letterboxed copy with the same picture inside has more
of them: counting inside the trim box was tried and rejected, as JPEG noise moves the box by a few lines
between copies). Files under a reference folder always rank first, are always kept and never touched.
"""
from __future__ import annotations

import os

from .features import FileFacts

__all__ = ["CRITERIA", "DEFAULT_ORDER", "parse_order", "rank_key", "is_under"]

LOSSLESS_FORMATS = frozenset({"PNG", "TIFF", "BMP", "GIF", "PPM", "QOI"})
CRITERIA = {
    "pixels": "more pixels (width x height) first",
    "lossless": "lossless formats (PNG, TIFF, BMP, GIF) before lossy ones (JPEG, WebP)",
    "size": "larger file first",
    "oldest": "older modification time first",
    "newest": "newer modification time first",
    "shortest-path": "shorter path first (the copy nearest the top of the tree)",
}
DEFAULT_ORDER = ("pixels", "lossless", "size", "oldest")


def parse_order(text: str | None) -> tuple[str, ...]:
    """'pixels,lossless,size,oldest' -> a validated tuple; None or '' -> DEFAULT_ORDER."""
    if not text:
        return DEFAULT_ORDER
    order = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [c for c in order if c not in CRITERIA]
    if bad:
        raise ValueError(f"unknown keep criteria {bad}; choose from {', '.join(CRITERIA)}")
    if "oldest" in order and "newest" in order:
        raise ValueError("keep order cannot have both 'oldest' and 'newest'")
    return order


def is_under(path: str, folders: list[str]) -> bool:
    """True when `path` is inside one of `folders` (real paths compared, so symlinks do not fool it)."""
    rp = os.path.realpath(path)
    for f in folders:
        rf = os.path.realpath(f)
        if rp == rf or rp.startswith(rf.rstrip(os.sep) + os.sep):
            return True
    return False


def rank_key(facts: FileFacts, order: tuple[str, ...] = DEFAULT_ORDER, reference: bool = False) -> tuple:
    """Sort key: reference files first, then `order`; the path last, so ties resolve the same every run."""
    key: list = [0 if reference else 1]
    for c in order:
        if c == "pixels":
            key.append(-facts.content_pixels)
        elif c == "lossless":
            key.append(0 if facts.format.upper() in LOSSLESS_FORMATS else 1)
        elif c == "size":
            key.append(-facts.size)
        elif c == "oldest":
            key.append(facts.mtime)
        elif c == "newest":
            key.append(-facts.mtime)
        elif c == "shortest-path":
            key.append(len(facts.path))
    key.append(facts.path)
    return tuple(key)
