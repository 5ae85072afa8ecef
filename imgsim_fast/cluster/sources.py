"""What `imgsim cluster index` reads: folders, file lists and fsspec URLs, listed once and cut into shards.

A source is a local file or folder (walked exactly as `imgsim dedup` walks it: loading.iter_image_files, so
row numbers follow the single-machine order), `@LIST` (a text file naming one path or URL a line), or a
URL `proto://...` listed through fsspec (s3fs, gcsfs, ... when installed). Listing reads names and sizes
only, never a file's bytes. A shard is a run of consecutive rows; its number names its Parquet file.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

__all__ = ["Shard", "is_url", "list_sources", "make_shards", "local_roots"]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(source: str) -> bool:
    return bool(_URL.match(source))


@dataclass(frozen=True)
class Shard:
    """Rows start .. start + len(paths) - 1 of the listing; written as shard-NNNNNN.parquet."""

    index: int
    start: int
    paths: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"shard-{self.index:06d}.parquet"


def _read_list(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#")]


def _list_url(url: str, exts) -> list[str]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    if fs.isfile(root):
        found = [root]
    else:
        found = sorted(p for p in fs.find(root) if exts is None or os.path.splitext(p)[1].lower() in exts)
    proto = url.split("://", 1)[0]
    # fsspec answers without the protocol; a row keeps the full URL, the only name a worker can open.
    return [p if is_url(p) else f"{proto}://{p.lstrip('/') if proto != 'file' else p}" for p in found]


def list_sources(sources, extensions=None, on_error=None, on_skip=None) -> list[str]:
    """Every file of `sources`, in order, once: the rows of a feature set. Missing sources raise ValueError."""
    from imgsim_fast.io.loading import DEFAULT_EXTENSIONS, iter_image_files, normalise_extensions

    exts = normalise_extensions(DEFAULT_EXTENSIONS if extensions is None else extensions)
    out: list[str] = []
    local: list[str] = []

    def flush():
        if local:
            out.extend(iter_image_files(list(local), extensions=exts, on_error=on_error, on_skip=on_skip))
            local.clear()

    for s in sources:
        if s.startswith("@"):
            flush()
            if not os.path.isfile(s[1:]):
                raise ValueError(f"{s[1:]}: no such file list")
            for p in _read_list(s[1:]):
                if is_url(p):
                    flush()
                    out.extend(_list_url(p, exts))
                else:
                    local.append(p)
            flush()
        elif is_url(s):
            flush()
            out.extend(_list_url(s, exts))
        else:
            if not os.path.exists(s):
                raise ValueError(f"{s}: no such file or folder")
            local.append(s)
    flush()
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def local_roots(sources) -> list[str] | None:
    """The folders and files dedup's grouping treats as roots, or None when a source is remote or a list
    (then no path is judged "outside the roots")."""
    if any(s.startswith("@") or is_url(s) for s in sources):
        return None
    return list(sources)


def make_shards(paths: list[str], shard_size: int) -> list[Shard]:
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    return [Shard(k, s, tuple(paths[s:s + shard_size])) for k, s in enumerate(range(0, len(paths), shard_size))]
