"""File-system steps that trust no name: folders walked without following symbolic links, renames that
never replace, cross-device moves whose copy is checked before the original goes (dedup actions, undo).

Every step works on directory descriptors opened one component at a time from "/" with O_NOFOLLOW, so a
folder swapped for a symbolic link is refused, not followed, even during the walk; each file is checked
(inode, size, mtime) right before it is renamed or unlinked.
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
from contextlib import contextmanager

from imgsim_fast.io.names import display_path as _shown
from imgsim_fast.io.digest import file_digest

__all__ = ["FILE_FLAGS", "NEW_FILE_FLAGS", "Blocked", "copy_across", "digest_at", "dir_at", "drop_partial",
           "fsync_dir", "is_clean", "lstat_at", "move_at", "open_dir", "rename_noreplace", "resolved", "same_file",
           "under", "within"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in for a checked file must not hang the open (fstat then rejects it).
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Blocked(Exception):
    """What is on disk is not what was checked, so this step is not taken (the reason is the message)."""


def resolved(path: str) -> str:
    """`path` made absolute with its folders' symbolic links resolved (the file's own name kept): the
    form undo's no-symlink walk can reach again."""
    a = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(a)), os.path.basename(a))


def under(path: str, folder: str) -> bool:
    """`path` strictly inside `folder` (both absolute and normalised; compared by name, not by resolving)."""
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def within(path: str, folders) -> str | None:
    """The innermost of `folders` that holds `path`, or None."""
    inside = [f for f in folders if under(path, f)]
    return max(inside, key=len) if inside else None


def is_clean(p) -> bool:
    """An absolute, normalised path string (no "..", no doubled or trailing separator, no NUL)."""
    return isinstance(p, str) and "\0" not in p and os.path.isabs(p) and os.path.normpath(p) == p


def open_dir(path: str, create_below: str | None = None) -> int:
    """A descriptor of folder `path` (absolute, normalised), opened one component at a time from "/" with
    O_NOFOLLOW, so no component is a symbolic link, even one swapped in during the walk. Missing folders
    strictly below `create_below` are created."""
    fd = os.open("/", _DIR_FLAGS)
    cur = "/"
    try:
        for part in path.split(os.sep):
            if not part:
                continue
            cur = os.path.join(cur, part)
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if create_below is None or not under(cur, create_below):
                    raise
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                link = stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode)
                raise Blocked(f"{_shown(cur)} is {'a symbolic link' if link else 'not a folder'}") from None
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def dir_at(path: str, create_below: str | None = None):
    """open_dir as a context: the descriptor is closed on leaving."""
    fd = open_dir(path, create_below)
    try:
        yield fd
    finally:
        os.close(fd)


def lstat_at(dfd: int, name: str) -> os.stat_result | None:
    """lstat of `name` in folder `dfd`, None if nothing has that name."""
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """Same file, unchanged: inode, size and modification time (ctime moves with every link or rename)."""
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns)


def digest_at(dfd: int, name: str, st: os.stat_result) -> str | None:
    """Digest of `name` in `dfd` if it is still the regular file `st` describes, else None."""
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dfd)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:  # a symbolic link now stands there
            return None
        raise
    try:
        if not (stat.S_ISREG(st.st_mode) and same_file(os.fstat(fd), st)):
            return None
        # The one digest (io.digest.file_digest), of exactly the inode just checked: /dev/fd/N opens the
        # file this descriptor holds (Linux: /proc/self/fd; BSD, macOS: fdescfs), not whatever has the name now.
        return file_digest(f"/dev/fd/{fd}")
    finally:
        os.close(fd)


def _load_renameat2():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28 / musl: link + unlink below
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _load_renameat2()
_RENAME_NOREPLACE = 1  # linux/fs.h


def rename_noreplace(sfd: int, sname: str, dfd: int, dname: str) -> None:
    """rename(2) that raises FileExistsError rather than replace `dname`: renameat2(RENAME_NOREPLACE), or
    where the file system lacks it, link (which never replaces) then unlink."""
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(sfd, os.fsencode(sname), dfd, os.fsencode(dname), _RENAME_NOREPLACE) == 0:
            return
        e = ctypes.get_errno()
        if e not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(e, os.strerror(e), dname)
    os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
    os.unlink(sname, dir_fd=sfd)


def copy_across(sfd: int, sname: str, dfd: int, dname: str, digest: str, tmp: str) -> os.stat_result:
    """Copy `sname` to `dname` on another file system: into `tmp` beside the target (O_EXCL), fsynced,
    checked against `digest`, then renamed to `dname` without replacing. Returns the source's stat."""
    src = os.open(sname, FILE_FLAGS, dir_fd=sfd)
    try:
        st = os.fstat(src)
        out = os.open(tmp, NEW_FILE_FLAGS, 0o600, dir_fd=dfd)
        try:
            with open(src, "rb", closefd=False) as fi, open(out, "wb", closefd=False) as fo:
                shutil.copyfileobj(fi, fo, 1 << 20)
            os.fchmod(out, stat.S_IMODE(st.st_mode))
            os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.fsync(out)
            copied = os.fstat(out)
        finally:
            os.close(out)
        if digest_at(dfd, tmp, copied) != digest:
            raise Blocked("it changed while being copied")
        rename_noreplace(dfd, tmp, dfd, dname)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dfd)
        except FileNotFoundError:
            pass
        raise
    finally:
        os.close(src)
    return st


def move_at(sfd: int, sname: str, dfd: int, dname: str, st: os.stat_result, digest: str, tmp: str) -> None:
    """Move regular file `sname`, still the file `st` describes, to `dname`; never replaces anything.
    Across file systems (EXDEV) the original is unlinked only once its verified copy is in place."""
    now = lstat_at(sfd, sname)
    if now is None or not same_file(now, st):
        raise Blocked("it changed since it was checked")
    try:
        rename_noreplace(sfd, sname, dfd, dname)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        copied = copy_across(sfd, sname, dfd, dname, digest, tmp)
        now = lstat_at(sfd, sname)
        if now is None or not same_file(now, copied):
            os.unlink(dname, dir_fd=dfd)  # our own copy, of bytes that are no longer the file's
            raise Blocked("it changed while being copied") from None
        os.unlink(sname, dir_fd=sfd)
    os.fsync(dfd)
    os.fsync(sfd)


def drop_partial(dfd: int, tmp: str) -> None:
    """Remove a cross-device copy a killed run left half-done (named for this run and entry, so it is ours;
    the file it copied is still intact where it came from)."""
    st = lstat_at(dfd, tmp)
    if st is not None and stat.S_ISREG(st.st_mode):
        os.unlink(tmp, dir_fd=dfd)


def fsync_dir(d: str) -> None:
    """Make a new name in folder `d` durable (best effort: some file systems refuse fsync on folders)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
