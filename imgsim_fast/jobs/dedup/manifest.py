"""The action manifest's format: JSON lines, each carrying an HMAC-SHA256 over the MAC of the line before and
its own content, under a random key made for the run and kept beside its quarantine (0600).

A line torn by a kill mid-write does not parse and is skipped (its action had not started); any other change
to a line, or to the order of lines, breaks the chain. A run that reaches its end writes an end record and
then a seal beside its key holding that record's MAC (seal_key): lines cut from the end of a finished run's
manifest, which the chain alone cannot show, are then found missing. A run killed before its end has no
seal, and its manifest is undone as far as it goes. Paths keep their exact bytes: JSON's ASCII escapes
carry the lone surrogates of undecodable names (PEP 383). What a line may say is checked by actions.
"""
from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import stat

from imgsim_fast.io.names import display_path as _shown
from imgsim_fast.jobs.dedup.safe_fs import FILE_FLAGS, NEW_FILE_FLAGS, Blocked, dir_at, fsync_dir

__all__ = ["KEY_NAME", "MANIFEST_VERSION", "ManifestWriter", "line_mac", "parse_lines", "read_key", "read_seal",
           "seal_key", "seal_name", "verify_chain", "write_key"]

MANIFEST_VERSION = 2  # 2: HMAC chain, recorded folders, run key (version 1 manifests are refused)
KEY_NAME = re.compile(r"imgsim-run-[0-9A-Za-z-]{1,64}\.key")


def line_mac(key: bytes, prev: str, obj: dict) -> str:
    """HMAC-SHA256 of the previous line's MAC and `obj` as canonical JSON (sorted keys, ASCII escapes,
    so exact for non-UTF-8 names too)."""
    body = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, f"{prev}\n{body}".encode("ascii"), hashlib.sha256).hexdigest()


class ManifestWriter:
    """Append-only; every line flushed and fsynced before write() returns; locked (flock) while open, so
    an undo cannot race the run it undoes."""

    def __init__(self, f, key: bytes | None, prev: str = ""):
        self.f, self.key, self.prev = f, key, prev

    @classmethod
    def create(cls, path: str, key: bytes | None, header: dict) -> "ManifestWriter":
        path = os.path.abspath(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # O_EXCL: a manifest is never overwritten, so an earlier run's undo record cannot be lost.
        f = os.fdopen(os.open(path, NEW_FILE_FLAGS, 0o644), "ab")
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        fsync_dir(os.path.dirname(path))
        m = cls(f, key)
        m.write(header)
        return m

    def write(self, obj: dict) -> None:
        if self.key is not None:
            self.prev = line_mac(self.key, self.prev, obj)
            obj = {**obj, "mac": self.prev}
        self.f.write(json.dumps(obj).encode("ascii") + b"\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def write_key(quarantine: str, run: str) -> tuple[str, bytes]:
    """A new random key in the quarantine, readable by its owner only; (file name, key)."""
    key = secrets.token_bytes(32)
    name = f"imgsim-run-{run}.key"
    with dir_at(quarantine) as qfd:
        fd = os.open(name, NEW_FILE_FLAGS, 0o600, dir_fd=qfd)
        try:
            os.write(fd, key.hex().encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.fsync(qfd)
    return name, key


def seal_name(key_name: str) -> str:
    """The seal's file name beside the run's key (imgsim-run-ID.seal). A file of its own, so an imgsim made
    before seals still reads the key, and undoes the run as it would have."""
    return key_name[:-len(".key")] + ".seal"


def seal_key(quarantine: str, key_name: str, end_mac: str) -> None:
    """Write the run's seal: the MAC of its manifest's end record, private like the key (a new file renamed
    into place: a kill leaves no seal or the whole one, and a failed write leaves no temporary file)."""
    name = seal_name(key_name)
    tmp = f"{name}.{secrets.token_hex(4)}.tmp"
    with dir_at(quarantine) as qfd:
        fd = os.open(tmp, NEW_FILE_FLAGS, 0o600, dir_fd=qfd)
        try:
            try:
                os.write(fd, f"end {end_mac}\n".encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=qfd, dst_dir_fd=qfd)
        except BaseException:
            os.unlink(tmp, dir_fd=qfd)
            raise
        os.fsync(qfd)


def _private_text(quarantine: str, name: str, what: str) -> str | None:
    """The text of file `name` in the quarantine (None where it is missing) if it is a regular file owned by
    the user running undo and readable by nobody else (another user cannot have written it); raises Blocked
    otherwise."""
    shown = _shown(os.path.join(quarantine, name))
    with dir_at(quarantine) as qfd:
        try:
            fd = os.open(name, FILE_FLAGS, dir_fd=qfd)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise Blocked(f"its {what} {shown} cannot be opened ({e.strerror})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
                raise Blocked(f"its {what} {shown} is not a private file of this user")
            return os.read(fd, 256).decode("ascii", "replace").strip()
        finally:
            os.close(fd)


def read_key(quarantine: str, name: str) -> bytes:
    """The run's key, if it is a private file of this user in the quarantine (_private_text); raises Blocked
    otherwise."""
    text = _private_text(quarantine, name, "key")
    if text is None:
        raise Blocked(f"its key {_shown(os.path.join(quarantine, name))} is missing")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise Blocked(f"its key {_shown(os.path.join(quarantine, name))} is damaged") from None


def read_seal(quarantine: str, key_name: str) -> str | None:
    """The MAC of the run's end record from its seal, or None for a run that did not reach its end (or one
    made before seals); raises Blocked for a seal that is not a private file of this user or is damaged."""
    name = seal_name(key_name)
    text = _private_text(quarantine, name, "seal")
    if text is None:
        return None
    if not re.fullmatch(r"end [0-9a-f]{64}", text):
        raise Blocked(f"its seal {_shown(os.path.join(quarantine, name))} is damaged")
    return text[4:]


def parse_lines(data: bytes) -> list[tuple[int, dict]]:
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
            raise Blocked(f"line {n} is not a manifest record")
        out.append((n, obj))
    return out


def verify_chain(lines: list[tuple[int, dict]], key: bytes) -> str:
    """Check every line's MAC (removing it from the line); the last MAC, to chain an appended line to."""
    prev = ""
    for n, obj in lines:
        mac = obj.pop("mac", None)
        if not isinstance(mac, str) or not hmac.compare_digest(mac, line_mac(key, prev, obj)):
            raise Blocked(f"line {n} was changed after the run (its MAC does not verify)")
        prev = mac
    return prev
