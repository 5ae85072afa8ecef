"""Atomic file writes: the one helper every report and index file goes through. A reader sees the old file or
the whole new one, never a part; a failed or interrupted write leaves no temporary file behind.

    with replacing("report.json") as f:        # text; replacing(path, "wb") for bytes
        f.write(text)
    write_text("groups.csv", text, newline="")

The data goes to a temporary file beside the target (same folder, so the rename cannot cross file systems),
is fsynced, and renamed over the target. Issue 11: writers that named their temporary `PATH.tmp` left it
behind whenever the rename failed (PATH an existing folder, a full disk) or the write raised; here it is
removed on every error, and a target that is a folder is refused before anything is written.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
from typing import IO, Iterator

__all__ = ["check_target", "fsync_dir", "replacing", "write_text"]


def check_target(path) -> None:
    """Raise an OSError naming `path` when it cannot be written as a whole file: it is a folder, or its folder
    does not exist. Callers with slow work before the write call it first; `replacing` always does."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise FileNotFoundError(errno.ENOENT, "its folder does not exist", path)


@contextlib.contextmanager
def replacing(path, mode: str = "w", *, encoding: str | None = "utf-8", newline: str | None = None) -> Iterator[IO]:
    """An open file whose contents replace `path` when the block ends without an exception; on an exception
    the temporary file is removed and `path` is left as it was. mode: "w" (text) or "wb"."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    check_target(path)  # else os.replace would fail only after the work, naming the temporary file
    folder, base = os.path.split(os.path.abspath(path))
    # A hidden, unique name (concurrent writers of one target never share a temporary file), created
    # O_EXCL with mode 0666 so the umask gives the file the permissions a plain open() would.
    tmp = os.path.join(folder, f".{base}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:  # a folder we may not write into: name the file asked for, not the temporary one
        raise type(e)(e.errno, e.strerror, path) from None
    try:
        try:
            f = os.fdopen(fd, "wb") if mode == "wb" else os.fdopen(fd, "w", encoding=encoding, newline=newline)
        except BaseException:
            os.close(fd)
            raise
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path, text: str, *, encoding: str = "utf-8", newline: str | None = None) -> None:
    """`text` as the whole new contents of `path`, atomically."""
    with replacing(path, "w", encoding=encoding, newline=newline) as f:
        f.write(text)


def fsync_dir(path: str) -> None:
    """Make the names just created or renamed in folder `path` durable (errors propagate: a writer that
    acknowledges data must know the folder reached the disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
