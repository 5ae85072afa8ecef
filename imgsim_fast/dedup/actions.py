"""Acting on duplicate groups, safely: quarantine (move), replace by hard or symbolic link, delete; and undo.

Every action is appended to a JSON-lines manifest and fsynced BEFORE it happens, and marked done after,
so a run killed at any instant can be undone from its manifest (`undo`). Undo is idempotent: each step
looks at what is on disk and only moves what is still to be moved back.

Before touching a file the executor re-checks what the scan saw: the duplicate still has the digest it
had, the keeper still exists with its digest, and they are not already the same file. Anything else is
skipped and reported; nothing that was not planned is ever touched. Replacing by a link moves the
original into the quarantine first (so undo can restore it); delete is the only irreversible action.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field

from .features import file_digest

__all__ = ["OPS", "Action", "RunReport", "UndoReport", "plan_actions", "execute", "undo", "quarantine_path"]

OPS = ("move", "hardlink", "symlink", "delete")
MANIFEST_VERSION = 1
_PARTIAL = ".imgsim-partial"


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


# ------------------------------------------------------------------------------------------------
# Planning


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


def plan_actions(result, op: str, roots: list[str], quarantine: str | None = None) -> list[Action]:
    """One Action per removable member of every group (never a keeper, never a reference file)."""
    if op not in OPS:
        raise ValueError(f"unknown action {op!r}; expected one of {OPS}")
    if op != "delete" and not quarantine:
        raise ValueError(f"action {op!r} needs a quarantine folder for the originals")
    facts = result.features.facts
    taken: set[str] = set()
    out = []
    for g in result.groups:
        keeper = facts[g.members[0]]
        for m in result.removable(g):
            f = facts[m]
            dest = None if op == "delete" else quarantine_path(f.path, roots, quarantine, taken)
            out.append(Action(op, os.path.abspath(f.path), os.path.abspath(keeper.path), dest, f.digest,
                              keeper.digest))
    return out


# ------------------------------------------------------------------------------------------------
# Manifest


class Manifest:
    """Append-only JSON lines; every line flushed and fsynced before write() returns."""

    def __init__(self, path: str, header: dict):
        self.path = os.path.abspath(path)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        # O_EXCL: a manifest is never overwritten, so an earlier run's undo record cannot be lost.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.f = os.fdopen(fd, "w", encoding="utf-8")
        _fsync_dir(os.path.dirname(self.path))
        self.write({"imgsim_manifest": MANIFEST_VERSION, **header})

    def write(self, obj: dict) -> None:
        self.f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def read_manifest(path: str) -> tuple[dict, list[dict], set[int]]:
    """(header, intents in order, seqs marked done). A torn last line (killed mid-write) is ignored."""
    header, intents, done = None, [], set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue  # only the last line can be torn: its action never started
            if header is None:
                if obj.get("imgsim_manifest") != MANIFEST_VERSION:
                    raise ValueError(f"{path} is not an imgsim manifest (version {MANIFEST_VERSION})")
                header = obj
            elif obj.get("state") == "intent":
                intents.append(obj)
            elif obj.get("state") == "done":
                done.add(obj["seq"])
    if header is None:
        raise ValueError(f"{path} is empty or not an imgsim manifest")
    return header, intents, done


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
# Doing


def _move(src: str, dst: str) -> None:
    """Move a file; across file systems copy (fsynced) under a partial name, rename, then unlink."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno != 18:  # EXDEV
            raise
        part = dst + _PARTIAL
        shutil.copy2(src, part)
        with open(part, "rb") as f:
            os.fsync(f.fileno())
        os.rename(part, dst)
        _fsync_dir(os.path.dirname(dst))
        os.unlink(src)
    _fsync_dir(os.path.dirname(dst))
    _fsync_dir(os.path.dirname(src))


def _check(a: Action) -> str | None:
    """Why `a` must not run now, or None."""
    if not os.path.lexists(a.path):
        return "file is gone"
    if os.path.islink(a.path) or not os.path.isfile(a.path):
        return "no longer a regular file"
    if not os.path.isfile(a.keeper):
        return "the kept file is gone"
    if os.path.samefile(a.path, a.keeper):
        return "already the same file as the kept one"
    if file_digest(a.path) != a.digest:
        return "file changed since the scan"
    if file_digest(a.keeper) != a.keeper_digest:
        return "the kept file changed since the scan"
    if a.dest and os.path.lexists(a.dest):
        return f"quarantine path {a.dest} exists"
    return None


def execute(actions: list[Action], manifest_path: str, header: dict | None = None) -> RunReport:
    """Run `actions`, each logged (fsynced) in the manifest before it starts and marked done after."""
    rep = RunReport()
    man = Manifest(manifest_path, {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cwd": os.getcwd(),
                                   **(header or {})})
    try:
        for seq, a in enumerate(actions):
            why = _check(a)
            if why:
                rep.skipped.append((a, why))
                continue
            man.write({"seq": seq, "state": "intent", **asdict(a)})
            if a.op == "delete":
                os.unlink(a.path)
                _fsync_dir(os.path.dirname(a.path))
            else:
                _move(a.path, a.dest)
                if a.op == "hardlink":
                    os.link(a.keeper, a.path)
                elif a.op == "symlink":
                    os.symlink(a.keeper, a.path)
                if a.op != "move":
                    _fsync_dir(os.path.dirname(a.path))
            man.write({"seq": seq, "state": "done"})
            rep.done.append(a)
    finally:
        man.close()
    return rep


# ------------------------------------------------------------------------------------------------
# Undo


def _is_our_link(path: str, keeper: str) -> bool:
    if os.path.islink(path):
        return os.path.realpath(path) == os.path.realpath(keeper)
    return os.path.isfile(path) and os.path.exists(keeper) and os.path.samefile(path, keeper)


def undo(manifest_path: str) -> UndoReport:
    """Put back everything the manifest's run did, newest first. Safe to run again (idempotent) and on a
    run that was killed at any point."""
    _, intents, _ = read_manifest(manifest_path)
    rep = UndoReport()
    for it in reversed(intents):
        path, dest, op = it["path"], it.get("dest"), it["op"]
        if op == "delete":
            (rep.already if os.path.exists(path) else rep.lost).append(path)
            continue
        if dest and os.path.lexists(dest + _PARTIAL):
            os.unlink(dest + _PARTIAL)  # a cross-device copy that never completed; the source is intact
        have_dest = bool(dest) and os.path.isfile(dest)
        if not have_dest:
            rep.already.append(path)  # never moved, or already restored
            continue
        if os.path.lexists(path):
            if op in ("hardlink", "symlink") and _is_our_link(path, it["keeper"]):
                os.replace(dest, path)  # atomically puts the original back over our link
                rep.restored.append(path)
            elif not os.path.islink(path) and file_digest(path) == it["digest"]:
                os.unlink(dest)  # killed between copy and unlink of a cross-device move
                rep.already.append(path)
            else:
                rep.conflicts.append((path, f"something else is at the path now; the original is in {dest}"))
            continue
        _move(dest, path)
        rep.restored.append(path)
    with open(manifest_path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"undo": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "restored": len(rep.restored)}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return rep
