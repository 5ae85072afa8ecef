"""Where imgsim keeps what it makes for a folder (catalogs, explore reports) unless told: outside the
folder, in the XDG data directory (issue 15: a photographer's folder should hold only photographs).

`$XDG_DATA_HOME/imgsim/catalogs/<name>/`, or `~/.local/share/imgsim/catalogs/<name>/`, one folder per
collection, named from the folder's absolute path: its base name (readable) and a short digest of the
whole path (two folders named `photos` do not share a catalog).
"""
from __future__ import annotations

import hashlib
import os
import re

__all__ = ["data_home", "cache_home", "collection_name", "collection_dir"]


def data_home() -> str:
    """imgsim's data folder. XDG Base Directory Specification 0.8: $XDG_DATA_HOME when it is set to an
    absolute path (a relative one is to be ignored), else $HOME/.local/share."""
    base = os.environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "imgsim")


def cache_home() -> str:
    """imgsim_fast's cache folder (what can be made again: weights digests, exported model graphs):
    $XDG_CACHE_HOME/imgsim_fast when it is set, else ~/.cache/imgsim_fast."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "imgsim_fast")


def collection_name(folder: str) -> str:
    """`<base name>-<10 hex digits of BLAKE2b of the absolute path>`; the base name keeps letters, digits,
    '.', '_' and '-' (others become '_'), at most 40 of them, so the name is a plain file name anywhere."""
    path = os.path.abspath(folder)
    raw = os.fsencode(path)
    base = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(path.rstrip(os.sep)) or "root")[:40].lstrip(".")
    return f"{base or 'folder'}-{hashlib.blake2b(raw, digest_size=5).hexdigest()}"


def collection_dir(folder: str) -> str:
    """The data folder of the collection rooted at `folder` (not created here)."""
    return os.path.join(data_home(), "catalogs", collection_name(folder))
