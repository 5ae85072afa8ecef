"""Acting on duplicate groups, safely: quarantine (move), replace by hard or symbolic link, delete; and undo.

Every action is appended to a JSON-lines manifest and fsynced BEFORE it happens, and marked done after,
so a run killed at any instant can be undone from its manifest (`undo`). Undo is idempotent: each step
looks at what is on disk and only moves what is still to be moved back.

Nothing is trusted that could have changed since it was checked (issue 11):
- the scan: before touching a file the executor re-checks that the duplicate and the keeper still have
  their digests and are not already one file; anything else is skipped and reported;
- the manifest: each line carries an HMAC-SHA256 chained to the line before, under a random key made for
  the run and kept in the quarantine (`imgsim-run-ID.key`, mode 0600). Undo refuses the whole manifest,
  before touching anything, when the chain does not verify, when the key is not a private file of the
  user running undo, or when a path leaves the folders recorded at the run (scanned folders, quarantine);
- the folders: files are reached through directory descriptors opened one component at a time with
  O_NOFOLLOW, so a folder swapped for a symbolic link after the run is never followed;
- the file system: files move by renameat2(RENAME_NOREPLACE) (or link + unlink), so neither a run nor its
  undo ever replaces a file; across file systems a copy is fsynced and checked against the digest before
  the original goes. Undo removes only what a run makes: its symbolic link to the keeper, its second name
  of the keeper's inode, or a byte-identical copy left in the quarantine by a killed cross-device move.
Delete is the only irreversible action; its manifest is a record that undo only reads (no key, no MAC).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import stat
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace

from ..names import display_path as _shown
from .features import file_digest

__all__ = ["OPS", "Action", "ManifestRefused", "RunReport", "UndoReport", "execute", "new_run_id",
           "plan_actions", "quarantine_path", "read_manifest", "undo"]

OPS = ("move", "hardlink", "symlink", "delete")
MANIFEST_VERSION = 2  # 2: HMAC chain, recorded folders, run key (version 1 manifests are refused)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in for a checked file must not hang the open (fstat then rejects it).
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_KEY_NAME = re.compile(r"imgsim-run-[0-9A-Za-z-]{1,64}\.key")
_HEX = re.compile(r"[0-9a-f]{16,128}")


@dataclass
class Action:
    op: str                # one of OPS
    path: str              # the duplicate, absolute
    keeper: str            # the file its group keeps, absolute
    dest: str | None       # move / links: where the original goes; delete: None
    digest: str            # digest of `path` at scan time
    keeper_digest: str


@dataclass
class RunReport:
    done: list[Action] = field(default_factory=list)
    skipped: list[tuple[Action, str]] = field(default_factory=list)


@dataclass
class UndoReport:
    restored: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)     # nothing to do: never happened or already undone
    lost: list[str] = field(default_factory=list)        # deleted files: cannot come back
    conflicts: list[tuple[str, str]] = field(default_factory=list)


class ManifestRefused(ValueError):
    """Undo refused a whole manifest before touching anything; the message is one line for the user."""


class _Blocked(Exception):
    """One file cannot be acted on safely now (the reason is the message); the others go on."""


def new_run_id() -> str:
    """Time stamp plus 32 random bits: two runs in the same second still get different manifests."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"


# ------------------------------------------------------------------------------------------------
# Paths


def _resolved(path: str) -> str:
    """`path` made absolute with its folders' symbolic links resolved (the file's own name kept): the
    form undo's no-symlink walk can reach again."""
    a = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(a)), os.path.basename(a))


def _folders(roots) -> list[str]:
    """The folders a run may touch: each scanned folder, or the folder of each scanned file, resolved."""
    out = set()
    for r in roots:
        rr = os.path.realpath(r)
        if os.path.isdir(rr):
            out.add(rr)
        elif os.path.lexists(r):
            out.add(os.path.dirname(_resolved(r)))
    return sorted(out)


def _under(path: str, folder: str) -> bool:
    """`path` strictly inside `folder` (both absolute and normalised; compared by name, not by resolving)."""
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def _within(path: str, folders) -> str | None:
    """The innermost of `folders` that holds `path`, or None."""
    inside = [f for f in folders if _under(path, f)]
    return max(inside, key=len) if inside else None


def _is_clean(p) -> bool:
    return isinstance(p, str) and "\0" not in p and os.path.isabs(p) and os.path.normpath(p) == p


def _root_of(path: str, roots: list[str]) -> str | None:
    rp = os.path.abspath(path)
    best = None
    for r in roots:
        ra = os.path.abspath(r)
        if os.path.isdir(ra) and (rp.startswith(ra.rstrip(os.sep) + os.sep)):
            if best is None or len(ra) > len(best):
                best = ra
    return best


def quarantine_path(path: str, roots: list[str], quarantine: str, taken: set[str]) -> str:
    """Where `path` goes in the quarantine: its path relative to the scanned folder it was found in
    (under that folder's name when several were scanned), made unique with .1, .2 ... if needed."""
    root = _root_of(path, roots)
    rel = os.path.relpath(os.path.abspath(path), root) if root else os.path.basename(path)
    if root and len([r for r in roots if os.path.isdir(r)]) > 1:
        rel = os.path.join(os.path.basename(root.rstrip(os.sep)) or "root", rel)
    dest = os.path.join(os.path.abspath(quarantine), rel)
    stem, ext = os.path.splitext(dest)
    k = 0
    while dest in taken or os.path.lexists(dest):
        k += 1
        dest = f"{stem}.{k}{ext}"
    taken.add(dest)
    return dest


# ------------------------------------------------------------------------------------------------
# Planning


def plan_actions(result, op: str, roots: list[str], quarantine: str | None = None) -> list[Action]:
    """One Action per removable member of every group (never a keeper, never a reference file). Paths are
    absolute with symbolic links in their folders resolved, as undo will check them."""
    if op not in OPS:
        raise ValueError(f"unknown action {op!r}; expected one of {OPS}")
    if op != "delete" and not quarantine:
        raise ValueError(f"action {op!r} needs a quarantine folder for the originals")
    roots = [os.path.realpath(r) for r in roots]
    quarantine = os.path.realpath(quarantine) if quarantine else None
    facts = result.features.facts
    taken: set[str] = set()
    out = []
    for g in result.groups:
        keeper = facts[g.members[0]]
        for m in result.removable(g):
            f = facts[m]
            path = _resolved(f.path)
            dest = None if op == "delete" else quarantine_path(path, roots, quarantine, taken)
            out.append(Action(op, path, _resolved(keeper.path), dest, f.digest, keeper.digest))
    return out


# ------------------------------------------------------------------------------------------------
# File system primitives: directory descriptors, no-replace rename, verified cross-device copy


def _open_dir(path: str, create_below: str | None = None) -> int:
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
                if create_below is None or not _under(cur, create_below):
                    raise
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                raise _Blocked(f"{_shown(cur)} is {'a symbolic link' if stat.S_ISLNK(st.st_mode) else 'not a folder'}"
                               ) from None
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def _dir(path: str, create_below: str | None = None):
    fd = _open_dir(path, create_below)
    try:
        yield fd
    finally:
        os.close(fd)


def _lstat(dfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    """Same file, unchanged: inode, size and modification time (ctime moves with every link or rename)."""
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns)


def _digest_at(dfd: int, name: str, st: os.stat_result) -> str | None:
    """Digest of `name` in `dfd` if it is still the regular file `st` describes, else None."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dfd)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:  # a symbolic link now stands there
            return None
        raise
    try:
        if not (stat.S_ISREG(st.st_mode) and _same(os.fstat(fd), st)):
            return None
        # The one digest (features.file_digest), of exactly the inode just checked: /dev/fd/N opens the
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


def _rename_noreplace(sfd: int, sname: str, dfd: int, dname: str) -> None:
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


def _copy_across(sfd: int, sname: str, dfd: int, dname: str, digest: str, tmp: str) -> os.stat_result:
    """Copy `sname` to `dname` on another file system: into `tmp` beside the target (O_EXCL), fsynced,
    checked against `digest`, then renamed to `dname` without replacing. Returns the source's stat."""
    src = os.open(sname, _FILE_FLAGS, dir_fd=sfd)
    try:
        st = os.fstat(src)
        out = os.open(tmp, _NEW_FILE_FLAGS, 0o600, dir_fd=dfd)
        try:
            with open(src, "rb", closefd=False) as fi, open(out, "wb", closefd=False) as fo:
                shutil.copyfileobj(fi, fo, 1 << 20)
            os.fchmod(out, stat.S_IMODE(st.st_mode))
            os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.fsync(out)
            copied = os.fstat(out)
        finally:
            os.close(out)
        if _digest_at(dfd, tmp, copied) != digest:
            raise _Blocked("it changed while being copied")
        _rename_noreplace(dfd, tmp, dfd, dname)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dfd)
        except FileNotFoundError:
            pass
        raise
    finally:
        os.close(src)
    return st


def _move(sfd: int, sname: str, dfd: int, dname: str, st: os.stat_result, digest: str, tmp: str) -> None:
    """Move regular file `sname`, still the file `st` describes, to `dname`; never replaces anything.
    Across file systems (EXDEV) the original is unlinked only once its verified copy is in place."""
    now = _lstat(sfd, sname)
    if now is None or not _same(now, st):
        raise _Blocked("it changed since it was checked")
    try:
        _rename_noreplace(sfd, sname, dfd, dname)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        copied = _copy_across(sfd, sname, dfd, dname, digest, tmp)
        now = _lstat(sfd, sname)
        if now is None or not _same(now, copied):
            os.unlink(dname, dir_fd=dfd)  # our own copy, of bytes that are no longer the file's
            raise _Blocked("it changed while being copied") from None
        os.unlink(sname, dir_fd=sfd)
    os.fsync(dfd)
    os.fsync(sfd)


def _drop_partial(dfd: int, tmp: str) -> None:
    """Remove a cross-device copy a killed run left half-done (named for this run and entry, so it is ours;
    the file it copied is still intact where it came from)."""
    st = _lstat(dfd, tmp)
    if st is not None and stat.S_ISREG(st.st_mode):
        os.unlink(tmp, dir_fd=dfd)


def _partial(run: str, seq: int) -> str:
    return f".imgsim-partial-{run}-{seq}"


def _fsync_dir(d: str) -> None:
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


# ------------------------------------------------------------------------------------------------
# Manifest: JSON lines, each with an HMAC-SHA256 over the line before's MAC and its own content


def _mac(key: bytes, prev: str, obj: dict) -> str:
    # Canonical JSON (sorted keys, ASCII escapes: exact even for non-UTF-8 names, PEP 383 surrogates).
    body = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, f"{prev}\n{body}".encode("ascii"), hashlib.sha256).hexdigest()


class _Manifest:
    """Append-only; every line flushed and fsynced before write() returns; locked (flock) while open, so
    an undo cannot race the run it undoes."""

    def __init__(self, f, key: bytes | None, prev: str = ""):
        self.f, self.key, self.prev = f, key, prev

    @classmethod
    def create(cls, path: str, key: bytes | None, header: dict) -> "_Manifest":
        path = os.path.abspath(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # O_EXCL: a manifest is never overwritten, so an earlier run's undo record cannot be lost.
        f = os.fdopen(os.open(path, _NEW_FILE_FLAGS, 0o644), "ab")
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        _fsync_dir(os.path.dirname(path))
        m = cls(f, key)
        m.write(header)
        return m

    def write(self, obj: dict) -> None:
        if self.key is not None:
            self.prev = _mac(self.key, self.prev, obj)
            obj = {**obj, "mac": self.prev}
        self.f.write(json.dumps(obj).encode("ascii") + b"\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def _write_key(quarantine: str, run: str) -> tuple[str, bytes]:
    """A new random key in the quarantine, readable by its owner only; (file name, key)."""
    key = secrets.token_bytes(32)
    name = f"imgsim-run-{run}.key"
    with _dir(quarantine) as qfd:
        fd = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=qfd)
        try:
            os.write(fd, key.hex().encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.fsync(qfd)
    return name, key


def _read_key(quarantine: str, name: str) -> bytes:
    """The run's key, if it is a regular file in the quarantine, owned by the user running undo and
    readable by nobody else (another user cannot have written it); raises _Blocked otherwise."""
    with _dir(quarantine) as qfd:
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=qfd)
        except FileNotFoundError:
            raise _Blocked(f"its key {_shown(os.path.join(quarantine, name))} is missing") from None
        except OSError as e:
            raise _Blocked(f"its key {_shown(os.path.join(quarantine, name))} cannot be opened ({e.strerror})"
                           ) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
                raise _Blocked(f"its key {_shown(os.path.join(quarantine, name))} is not a private file of this user")
            text = os.read(fd, 256).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise _Blocked(f"its key {_shown(os.path.join(quarantine, name))} is damaged") from None


def _parse(data: bytes) -> list[tuple[int, dict]]:
    """(line number, object) of each complete line. A line that does not parse was torn by a kill in the
    middle of writing it; its action had not started, and the MAC chain skips it."""
    out = []
    for n, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(obj, dict):
            raise _Blocked(f"line {n} is not a manifest record")
        out.append((n, obj))
    return out


def _verify(path: str, data: bytes) -> tuple[dict, list[dict], set[int], bytes | None, str]:
    """Check a manifest as a whole: (header, intents, seqs done, key, last MAC). Raises _Blocked with the
    reason when anything does not hold; nothing on disk is touched here."""
    lines = _parse(data)
    if not lines or "imgsim_manifest" not in lines[0][1]:
        raise _Blocked("it is empty or not an imgsim manifest")
    header = lines[0][1]
    if header["imgsim_manifest"] != MANIFEST_VERSION:
        raise _Blocked(f"it is a version {header['imgsim_manifest']!r} manifest; this imgsim undoes version "
                       f"{MANIFEST_VERSION} (signed) manifests only")
    roots, quarantine, key_name = header.get("roots"), header.get("quarantine"), header.get("key")
    run = header.get("run")
    if not (isinstance(roots, list) and all(_is_clean(r) for r in roots) and isinstance(run, str)
            and (quarantine is None or _is_clean(quarantine))
            and (key_name is None or (isinstance(key_name, str) and _KEY_NAME.fullmatch(key_name)))
            and (key_name is None) == (quarantine is None)):
        raise _Blocked("its header is malformed")
    key, prev = None, ""
    if key_name is not None:
        key = _read_key(quarantine, key_name)  # walks to the quarantine without following symbolic links
        for n, obj in lines:
            mac = obj.pop("mac", None)
            if not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(key, prev, obj)):
                raise _Blocked(f"line {n} was changed after the run (its MAC does not verify)")
            prev = mac
    intents, done, seqs, paths, dests = [], set(), set(), set(), set()
    for n, obj in lines[1:]:
        if obj.get("state") == "done":
            done.add(obj.get("seq"))
        if obj.get("state") != "intent":
            continue
        why = _bad_intent(obj, roots, quarantine, key is not None)
        if why is None and (obj["seq"] in seqs or obj["path"] in paths or (obj["dest"] and obj["dest"] in dests)):
            why = "repeats a file of another line"
        if why:
            raise _Blocked(f"line {n} {why}")
        seqs.add(obj["seq"])
        paths.add(obj["path"])
        dests.add(obj["dest"])
        intents.append(obj)
    for r in roots + ([quarantine] if quarantine else []):
        try:
            os.close(_open_dir(r))
        except FileNotFoundError:
            raise _Blocked(f"the folder {_shown(r)} recorded at the run no longer exists") from None
        except _Blocked as e:
            raise _Blocked(f"{e} now; it was a real folder at the run") from None
    return header, intents, done, key, prev


def _bad_intent(it: dict, roots: list[str], quarantine: str | None, signed: bool) -> str | None:
    """Why intent `it` is not one the run could have written, or None."""
    op, path, keeper, dest = it.get("op"), it.get("path"), it.get("keeper"), it.get("dest")
    if op not in OPS or not isinstance(it.get("seq"), int):
        return "is malformed"
    if not (_is_clean(path) and _is_clean(keeper) and all(isinstance(it.get(k), str) and _HEX.fullmatch(it[k])
                                                          for k in ("digest", "keeper_digest"))):
        return "is malformed"
    if _within(path, roots) is None or _within(keeper, roots) is None or path == keeper:
        return f"names {_shown(path)} or {_shown(keeper)}, outside the folders the run scanned"
    if op == "delete":
        return None if dest is None else "is malformed"
    if not signed:
        return "asks for a move, but the manifest has no run key"
    if not (_is_clean(dest) and _under(dest, quarantine)):
        return f"puts an original at {_shown(dest)}, outside the quarantine {_shown(quarantine)}"
    if op == "hardlink" and not (isinstance(it.get("keeper_dev"), int) and isinstance(it.get("keeper_ino"), int)):
        return "is malformed"
    return None


def read_manifest(path: str) -> tuple[dict, list[dict], set[int]]:
    """(header, intents in order, seqs marked done) of a manifest that verifies; ManifestRefused if not."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        header, intents, done, _, _ = _verify(path, data)
    except _Blocked as e:
        raise ManifestRefused(f"refusing {_shown(path)}: {e}") from None
    return header, intents, done


# ------------------------------------------------------------------------------------------------
# Doing


def _checked(a: Action, pfd: int, kfd: int) -> tuple[str | None, os.stat_result | None, os.stat_result | None]:
    """(why `a` must not run now or None, stat of the duplicate, stat of the keeper)."""
    pname, kname = os.path.basename(a.path), os.path.basename(a.keeper)
    p = _lstat(pfd, pname)
    if p is None:
        return "file is gone", None, None
    if not stat.S_ISREG(p.st_mode):
        return "no longer a regular file", None, None
    k = _lstat(kfd, kname)
    if k is None:
        return "the kept file is gone", None, None
    if not stat.S_ISREG(k.st_mode):
        return "the kept file is no longer a regular file", None, None
    if (p.st_dev, p.st_ino) == (k.st_dev, k.st_ino):
        return "already the same file as the kept one", None, None
    if _digest_at(pfd, pname, p) != a.digest:
        return "file changed since the scan", None, None
    if _digest_at(kfd, kname, k) != a.keeper_digest:
        return "the kept file changed since the scan", None, None
    if a.op == "hardlink" and p.st_dev != k.st_dev:
        return "the kept file is on another file system, where no hard link can reach", None, None
    if a.dest:
        try:
            with _dir(os.path.dirname(a.dest)) as dfd:
                if _lstat(dfd, os.path.basename(a.dest)) is not None:
                    return f"quarantine path {_shown(a.dest)} exists", None, None
        except FileNotFoundError:
            pass
    return None, p, k


def _run_one(a: Action, seq: int, man: _Manifest, run: str, quarantine: str | None) -> str | None:
    """Do `a` (intent fsynced first, done after); the reason it was skipped, or None."""
    pname, kname = os.path.basename(a.path), os.path.basename(a.keeper)
    with ExitStack() as es:
        try:
            pfd = es.enter_context(_dir(os.path.dirname(a.path)))
        except FileNotFoundError:
            return "file is gone"
        try:
            kfd = es.enter_context(_dir(os.path.dirname(a.keeper)))
        except FileNotFoundError:
            return "the kept file is gone"
        why, p, k = _checked(a, pfd, kfd)
        if why:
            return why
        extra = {"keeper_dev": k.st_dev, "keeper_ino": k.st_ino} if a.op == "hardlink" else {}
        man.write({"seq": seq, "state": "intent", **asdict(a), **extra})
        if a.op == "delete":
            now = _lstat(pfd, pname)
            if now is None or not _same(now, p):
                return "file changed since it was checked"
            os.unlink(pname, dir_fd=pfd)
            os.fsync(pfd)
        else:
            dname = os.path.basename(a.dest)
            dfd = es.enter_context(_dir(os.path.dirname(a.dest), create_below=quarantine))
            _move(pfd, pname, dfd, dname, p, a.digest, _partial(run, seq))
            if a.op != "move":
                try:
                    if a.op == "hardlink":
                        os.link(kname, pname, src_dir_fd=kfd, dst_dir_fd=pfd, follow_symlinks=False)
                    else:
                        os.symlink(a.keeper, pname, dir_fd=pfd)
                    os.fsync(pfd)
                except OSError as e:
                    try:
                        _move(dfd, dname, pfd, pname, os.stat(dname, dir_fd=dfd, follow_symlinks=False),
                              a.digest, _partial(run, seq))
                    except (OSError, _Blocked):
                        return f"cannot make the link ({e.strerror}); the original is in {_shown(a.dest)}"
                    return f"cannot make the link ({e.strerror}); left as it was"
        man.write({"seq": seq, "state": "done"})
    return None


def execute(actions: list[Action], manifest_path: str, header: dict | None = None, roots=None,
            quarantine: str | None = None, run_id: str | None = None) -> RunReport:
    """Run `actions`, each logged (fsynced) in the manifest before it starts and marked done after.

    Paths are resolved once, here; after that no folder is followed through a symbolic link.
    `roots`: the folders (or files) that were scanned, and `quarantine`: where originals go; undo will
    touch nothing outside them. Left out, they are taken from the actions themselves: the folders of
    every duplicate and keeper, and the deepest folder holding every quarantine path. An action outside
    them is skipped. Moves and links need the quarantine, where the run's key is written.
    """
    given = actions
    actions = []
    for a in given:
        paths = [a.path, a.keeper] + ([a.dest] if a.dest is not None else [])
        if a.op not in OPS or (a.dest is None) != (a.op == "delete") or not all(
                isinstance(p, str) and p and "\0" not in p for p in paths):
            raise ValueError(f"not a valid action (file paths; a quarantine path unless deleting): {a}")
        # Resolved now, once: from here on every folder is walked without following symbolic links.
        actions.append(replace(a, path=_resolved(a.path), keeper=_resolved(a.keeper),
                               dest=_resolved(a.dest) if a.dest else None))
    folders = _folders(roots) if roots is not None else sorted(
        {os.path.dirname(p) for a in actions for p in (a.path, a.keeper)})
    moving = [a for a in actions if a.op != "delete"]
    if quarantine is not None:
        quarantine = os.path.realpath(quarantine)
    elif moving:
        quarantine = os.path.commonpath([os.path.dirname(a.dest) for a in moving])
    if moving and quarantine == os.sep:
        raise ValueError("the quarantine paths of these actions share no folder but /; pass quarantine=")
    run = run_id or new_run_id()
    key_name = key = None
    if moving:
        os.makedirs(quarantine, exist_ok=True)
        key_name, key = _write_key(quarantine, run)
    man = _Manifest.create(manifest_path, key, {
        **(header or {}), "imgsim_manifest": MANIFEST_VERSION, "run": run,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cwd": os.getcwd(), "roots": folders,
        "quarantine": quarantine if moving else None, "key": key_name})
    rep = RunReport()
    try:
        for seq, (a, orig) in enumerate(zip(actions, given)):
            if _within(a.path, folders) is None or _within(a.keeper, folders) is None:
                why = "outside the scanned folders (reached through a symbolic link?)"
            elif a.dest is not None and not _under(a.dest, quarantine):
                why = f"its quarantine path is outside {_shown(quarantine)}"
            else:
                try:
                    why = _run_one(a, seq, man, run, quarantine)
                except _Blocked as e:
                    why = str(e)
            if why:
                rep.skipped.append((orig, why))
            else:
                rep.done.append(orig)
    finally:
        man.close()
    return rep


# ------------------------------------------------------------------------------------------------
# Undo


def _is_our_link(it: dict, pfd: int, pname: str, p: os.stat_result) -> bool:
    """Is what stands at the path the link the run made? Removing it then loses no bytes: a symbolic
    link to the keeper, or a second name of the keeper's inode while the keeper still names it."""
    if it["op"] == "symlink":
        return stat.S_ISLNK(p.st_mode) and os.readlink(pname, dir_fd=pfd) == it["keeper"]
    if not (stat.S_ISREG(p.st_mode) and p.st_nlink >= 2
            and (p.st_dev, p.st_ino) == (it["keeper_dev"], it["keeper_ino"])):
        return False
    try:
        with _dir(os.path.dirname(it["keeper"])) as kfd:
            k = _lstat(kfd, os.path.basename(it["keeper"]))
    except (FileNotFoundError, _Blocked):
        return False
    return k is not None and (k.st_dev, k.st_ino) == (p.st_dev, p.st_ino)


def _undo_one(it: dict, roots: list[str], run: str, rep: UndoReport) -> None:
    path, dest, digest = it["path"], it["dest"], it["digest"]
    pname, dname, tmp = os.path.basename(path), os.path.basename(dest), _partial(run, it["seq"])
    with ExitStack() as es:
        try:
            dfd = es.enter_context(_dir(os.path.dirname(dest)))
        except FileNotFoundError:
            dfd = None
        if dfd is not None:
            _drop_partial(dfd, tmp)
        d = _lstat(dfd, dname) if dfd is not None else None
        if d is None:
            if os.path.lexists(path):
                rep.already.append(path)  # never moved, or already restored
            else:
                rep.conflicts.append((path, f"gone, and so is its original in the quarantine ({_shown(dest)})"))
            return
        if _digest_at(dfd, dname, d) != digest:
            rep.conflicts.append((path, f"the original in the quarantine ({_shown(dest)}) changed since the run"))
            return
        # Folders the user removed since the run are made again, inside the scanned folder only.
        pfd = es.enter_context(_dir(os.path.dirname(path), create_below=_within(path, roots)))
        _drop_partial(pfd, tmp)
        p = _lstat(pfd, pname)
        if p is not None and it["op"] != "move" and _is_our_link(it, pfd, pname, p):
            now = _lstat(pfd, pname)
            if now is None or not _same(now, p):
                raise _Blocked("it changed since it was checked")
            os.unlink(pname, dir_fd=pfd)
            p = None
        if p is None:
            _move(dfd, dname, pfd, pname, d, digest, tmp)
            rep.restored.append(path)
        elif (stat.S_ISREG(p.st_mode) and (p.st_dev, p.st_ino) != (d.st_dev, d.st_ino)
              and (p.st_dev, p.st_ino) != (it.get("keeper_dev"), it.get("keeper_ino"))
              and _digest_at(pfd, pname, p) == digest):
            # A cross-device move killed between its copy and the unlink left the same bytes twice: the
            # quarantine's copy is the run's own, and the original is back in place.
            now = _lstat(dfd, dname)
            if now is None or not _same(now, d):
                raise _Blocked("the original in the quarantine changed since it was checked")
            os.unlink(dname, dir_fd=dfd)
            os.fsync(dfd)
            rep.already.append(path)
        else:
            rep.conflicts.append((path, f"something else is at the path now; the original is in {_shown(dest)}"))


def undo(manifest_path: str) -> UndoReport:
    """Put back everything the manifest's run did, newest first. Safe to run again (idempotent) and on a
    run that was killed at any point.

    The whole manifest is checked first (MAC chain under the run's key, every path inside the folders
    recorded at the run, those folders still real folders); if anything fails, ManifestRefused is raised
    and nothing is touched. Then each entry is re-checked as it is undone: an entry whose file changed is
    reported in `conflicts` and left alone."""
    with open(manifest_path, "r+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ManifestRefused(f"refusing to undo {_shown(manifest_path)}: another imgsim is using it right now; "
                                  f"nothing was changed") from None
        data = f.read()
        try:
            header, intents, _, key, prev = _verify(manifest_path, data)
        except _Blocked as e:
            raise ManifestRefused(f"refusing to undo {_shown(manifest_path)}: {e}; nothing was changed") from None
        rep = UndoReport()
        for it in reversed(intents):
            if it["op"] == "delete":
                (rep.already if os.path.lexists(it["path"]) else rep.lost).append(it["path"])
                continue
            try:
                _undo_one(it, header["roots"], header["run"], rep)
            except _Blocked as e:
                rep.conflicts.append((it["path"], str(e)))
            except OSError as e:
                rep.conflicts.append((it["path"], e.strerror or str(e)))
        if key is not None:
            if data and not data.endswith(b"\n"):
                f.write(b"\n")  # end a line torn by a kill, so the record below stands on its own line
            _Manifest(f, key, prev).write({"undo": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                           "restored": len(rep.restored), "conflicts": len(rep.conflicts)})
    return rep
