"""Content digests: BLAKE2b-128 of a file's bytes, the one definition of "byte-identical" (the catalog's
`digest` column, dedup's exact tier, the action manifest's checks)."""
from __future__ import annotations

import hashlib
import re

from imgsim_fast.io.loading import open_regular

__all__ = ["bytes_digest", "file_digest", "is_digest"]

_DIGEST = re.compile(r"[0-9a-f]{32}")  # a digest as these functions write it: 16 bytes in lowercase hex


def bytes_digest(data: bytes) -> str:
    """The digest of bytes already in memory (the extraction pass reads a file once, then digests and
    decodes the same buffer)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_digest(path: str, chunk: int = 1 << 20) -> str:
    """BLAKE2b-128 of a file's bytes, read in chunks: equal digests mean byte-identical files."""
    h = hashlib.blake2b(digest_size=16)
    with open_regular(path) as f:  # a FIFO or /dev/zero is refused, not read forever
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_digest(text: str) -> bool:
    """Whether `text` is a digest as bytes_digest and file_digest write it (32 lowercase hex digits, nothing
    more)."""
    return _DIGEST.fullmatch(text) is not None
