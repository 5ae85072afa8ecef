"""Pictures read again from the files after the scan, for the looks that need more than the thumbnails:
the detail check (detail.py) and keep-best's inspection (keep.py). One read, one cache.

A file is read only while it still holds the content its digest names: every verdict these looks make is
stored by the two files' contents (a catalog keeps them for later runs), so a verdict on pixels that changed
since the scan would be stored under contents it never saw. Such a file, or one that cannot be read now,
gives None, and the caller judges without it.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
from PIL import Image

from imgsim_fast.io.digest import bytes_digest

__all__ = ["PictureCache", "read_bytes", "read_picture"]

# load_image silences Pillow's warnings through the process-wide warnings filter, which two threads must
# not change at once (the detail check decodes on a thread pool).
_DECODE_LOCK = threading.Lock()


def read_bytes(path: str, digest: str) -> bytes | None:
    """The bytes of `path`, or None when it cannot be read now or no longer holds the content `digest` names."""
    from imgsim_fast.io.loading import ImageLoadError, read_file

    if not path:
        return None
    try:
        data = read_file(path)
    except (ImageLoadError, OSError):
        return None
    return data if bytes_digest(data) == digest else None


def read_picture(path: str, digest: str, *, min_size: tuple[int, int] | None = None,
                 grey: bool = False) -> Image.Image | None:
    """The picture in `path` decoded by loading.load_image (min_size, grey: as there), or None when the file
    cannot be read or decoded now, or no longer holds the content `digest` names."""
    from imgsim_fast.io.loading import ImageLoadError, load_image

    data = read_bytes(path, digest)
    if data is None:
        return None
    try:
        with _DECODE_LOCK:
            return load_image(path, data=data, min_size=min_size, grey=grey)
    except (ImageLoadError, OSError):
        return None


class PictureCache:
    """Decoded pictures by key, the most recently used kept while they fit in `budget` bytes (a file is in
    many pairs of its group). None, for a file that could not be read, is kept too: tried once while held.
    Thread-safe: the detail check runs on a thread pool."""

    def __init__(self, budget: int):
        self.budget, self.held, self._got = budget, 0, OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, make):
        """The value held for `key`, or make()'s, then held."""
        with self._lock:
            if key in self._got:
                self._got.move_to_end(key)
                return self._got[key]
        got = make()  # outside the lock: decodes run in parallel (two threads may make one twice)
        with self._lock:
            if key not in self._got:
                self._got[key] = got
                self.held += _bytes(got)
            while self.held > self.budget and len(self._got) > 1:
                self.held -= _bytes(self._got.popitem(last=False)[1])
        return got


def _bytes(x) -> int:
    if x is None:
        return 0
    if isinstance(x, np.ndarray):
        return x.nbytes
    if isinstance(x, tuple):
        return sum(_bytes(y) for y in x if isinstance(y, (Image.Image, np.ndarray)))
    return x.width * x.height * len(x.getbands())
