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

import errno
import fcntl
import json
import os
import re
import secrets
import stat
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace

from imgsim_fast.io.names import display_path as _shown
from imgsim_fast.jobs.dedup.manifest import (KEY_NAME, MANIFEST_VERSION, ManifestWriter, parse_lines, read_key,
                                             read_seal, seal_key, verify_chain, write_key)
from imgsim_fast.jobs.dedup.safe_fs import (Blocked, digest_at, dir_at, drop_partial, is_clean, lstat_at, move_at, open_dir, resolved,
                      same_file, under, within)

__all__ = ["OPS", "Action", "ManifestRefused", "RunReport", "UndoReport", "execute", "new_run_id",
           "plan_actions", "quarantine_path", "read_manifest", "undo"]

OPS = ("move", "hardlink", "symlink", "delete")
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


def new_run_id() -> str:
    """Time stamp plus 32 random bits: two runs in the same second still get different manifests."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"


# ------------------------------------------------------------------------------------------------
# Planning


def _folders(roots) -> list[str]:
    """The folders a run may touch: each scanned folder, or the folder of each scanned file, resolved."""
    out = set()
    for r in roots:
        rr = os.path.realpath(r)
        if os.path.isdir(rr):
            out.add(rr)
        elif os.path.lexists(r):
            out.add(os.path.dirname(resolved(r)))
    return sorted(out)


def quarantine_path(path: str, roots: list[str], quarantine: str, taken: set[str]) -> str:
    """Where `path` goes in the quarantine: its path relative to the scanned folder it was found in
    (under that folder's name when several were scanned), made unique with .1, .2 ... if needed."""
    folders = [os.path.abspath(r) for r in roots if os.path.isdir(r)]
    root = within(os.path.abspath(path), folders)
    rel = os.path.relpath(os.path.abspath(path), root) if root else os.path.basename(path)
    if root and len(folders) > 1:
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
            path = resolved(f.path)
            dest = None if op == "delete" else quarantine_path(path, roots, quarantine, taken)
            out.append(Action(op, path, resolved(keeper.path), dest, f.digest, keeper.digest))
    return out


# ------------------------------------------------------------------------------------------------
# What a manifest may say


def _verify(data: bytes) -> tuple[dict, list[dict], set[int], bytes | None, str]:
    """Check a manifest as a whole: (header, intents, seqs done, key, last MAC). Raises Blocked with the
    reason when anything does not hold; nothing on disk is touched here."""
    # The header is the first line and is never torn (written before any action): judged first, so another
    # kind of file is called what it is, not "line 3767 is not a manifest record".
    try:
        head = json.loads(data.split(b"\n", 1)[0])
    except (json.JSONDecodeError, UnicodeDecodeError):
        head = None
    if not isinstance(head, dict) or "imgsim_manifest" not in head:
        raise Blocked("it is empty or not an imgsim manifest")
    lines = parse_lines(data)
    header = lines[0][1]
    if header["imgsim_manifest"] != MANIFEST_VERSION:
        raise Blocked(f"it is a version {header['imgsim_manifest']!r} manifest; this imgsim undoes version "
                      f"{MANIFEST_VERSION} (signed) manifests only")
    roots, quarantine, key_name = header.get("roots"), header.get("quarantine"), header.get("key")
    run = header.get("run")
    if not (isinstance(roots, list) and all(is_clean(r) for r in roots) and isinstance(run, str)
            and (quarantine is None or is_clean(quarantine))
            and (key_name is None or (isinstance(key_name, str) and KEY_NAME.fullmatch(key_name)))
            and (key_name is None) == (quarantine is None)):
        raise Blocked("its header is malformed")
    key, prev = None, ""
    if key_name is not None:
        key = read_key(quarantine, key_name)  # walks to the quarantine without following symbolic links
        seal = read_seal(quarantine, key_name)
        ends = [obj.get("mac") for _, obj in lines if "end" in obj]
        prev = verify_chain(lines, key)
        if seal is not None and seal not in ends:
            raise Blocked("lines were cut from its end after the run (the run's end record is missing)")
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
            raise Blocked(f"line {n} {why}")
        seqs.add(obj["seq"])
        paths.add(obj["path"])
        dests.add(obj["dest"])
        intents.append(obj)
    for r in roots + ([quarantine] if quarantine else []):
        try:
            os.close(open_dir(r))
        except FileNotFoundError:
            raise Blocked(f"the folder {_shown(r)} recorded at the run no longer exists") from None
        except Blocked as e:
            raise Blocked(f"{e} now; it was a real folder at the run") from None
    return header, intents, done, key, prev


def _bad_intent(it: dict, roots: list[str], quarantine: str | None, signed: bool) -> str | None:
    """Why intent `it` is not one the run could have written, or None."""
    op, path, keeper, dest = it.get("op"), it.get("path"), it.get("keeper"), it.get("dest")
    if op not in OPS or not isinstance(it.get("seq"), int):
        return "is malformed"
    if not (is_clean(path) and is_clean(keeper) and all(isinstance(it.get(k), str) and _HEX.fullmatch(it[k])
                                                        for k in ("digest", "keeper_digest"))):
        return "is malformed"
    if within(path, roots) is None or within(keeper, roots) is None:
        return f"names {_shown(path)} or {_shown(keeper)}, outside the folders the run scanned"
    if path == keeper:
        return f"names {_shown(path)} as both the duplicate and the file kept"
    if op == "delete":
        return None if dest is None else "is malformed"
    if not signed:
        return "asks for a move, but the manifest has no run key"
    if not (is_clean(dest) and under(dest, quarantine)):
        return f"puts an original at {_shown(dest)}, outside the quarantine {_shown(quarantine)}"
    if op == "hardlink" and not (isinstance(it.get("keeper_dev"), int) and isinstance(it.get("keeper_ino"), int)):
        return "is malformed"
    return None


def read_manifest(path: str) -> tuple[dict, list[dict], set[int]]:
    """(header, intents in order, seqs marked done) of a manifest that verifies; ManifestRefused if not."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        header, intents, done, _, _ = _verify(data)
    except Blocked as e:
        raise ManifestRefused(f"refusing {_shown(path)}: {e}") from None
    return header, intents, done


# ------------------------------------------------------------------------------------------------
# Doing


def _partial(run: str, seq: int) -> str:
    """The name of an unfinished cross-device copy: this run's and this entry's, so undo knows it is ours."""
    return f".imgsim-partial-{run}-{seq}"


def _checked(a: Action, pfd: int, kfd: int) -> tuple[str | None, os.stat_result | None, os.stat_result | None]:
    """(why `a` must not run now or None, stat of the duplicate, stat of the keeper)."""
    pname, kname = os.path.basename(a.path), os.path.basename(a.keeper)
    p = lstat_at(pfd, pname)
    if p is None:
        return "file is gone", None, None
    if not stat.S_ISREG(p.st_mode):
        return "no longer a regular file", None, None
    k = lstat_at(kfd, kname)
    if k is None:
        return "the kept file is gone", None, None
    if not stat.S_ISREG(k.st_mode):
        return "the kept file is no longer a regular file", None, None
    if (p.st_dev, p.st_ino) == (k.st_dev, k.st_ino):
        return "already the same file as the kept one", None, None
    if digest_at(pfd, pname, p) != a.digest:
        return "file changed since the scan", None, None
    if digest_at(kfd, kname, k) != a.keeper_digest:
        return "the kept file changed since the scan", None, None
    if a.op == "hardlink" and p.st_dev != k.st_dev:
        return "the kept file is on another file system, where no hard link can reach", None, None
    if a.dest:
        try:
            with dir_at(os.path.dirname(a.dest)) as dfd:
                if lstat_at(dfd, os.path.basename(a.dest)) is not None:
                    return f"quarantine path {_shown(a.dest)} exists", None, None
        except FileNotFoundError:
            pass
    return None, p, k


def _run_one(a: Action, seq: int, man: ManifestWriter, run: str, quarantine: str | None) -> str | None:
    """Do `a` (intent fsynced first, done after); the reason it was skipped, or None."""
    pname, kname = os.path.basename(a.path), os.path.basename(a.keeper)
    with ExitStack() as es:
        try:
            pfd = es.enter_context(dir_at(os.path.dirname(a.path)))
        except FileNotFoundError:
            return "file is gone"
        try:
            kfd = es.enter_context(dir_at(os.path.dirname(a.keeper)))
        except FileNotFoundError:
            return "the kept file is gone"
        why, p, k = _checked(a, pfd, kfd)
        if why:
            return why
        extra = {"keeper_dev": k.st_dev, "keeper_ino": k.st_ino} if a.op == "hardlink" else {}
        man.write({"seq": seq, "state": "intent", **asdict(a), **extra})
        if a.op == "delete":
            now = lstat_at(pfd, pname)
            if now is None or not same_file(now, p):
                return "file changed since it was checked"
            os.unlink(pname, dir_fd=pfd)
            os.fsync(pfd)
        else:
            dname = os.path.basename(a.dest)
            dfd = es.enter_context(dir_at(os.path.dirname(a.dest), create_below=quarantine))
            move_at(pfd, pname, dfd, dname, p, a.digest, _partial(run, seq))
            if a.op != "move":
                try:
                    if a.op == "hardlink":
                        os.link(kname, pname, src_dir_fd=kfd, dst_dir_fd=pfd, follow_symlinks=False)
                    else:
                        os.symlink(a.keeper, pname, dir_fd=pfd)
                    os.fsync(pfd)
                except OSError as e:
                    try:
                        move_at(dfd, dname, pfd, pname, os.stat(dname, dir_fd=dfd, follow_symlinks=False),
                                a.digest, _partial(run, seq))
                    except (OSError, Blocked):
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
        actions.append(replace(a, path=resolved(a.path), keeper=resolved(a.keeper),
                               dest=resolved(a.dest) if a.dest else None))
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
        key_name, key = write_key(quarantine, run)
    try:
        man = ManifestWriter.create(manifest_path, key, {
            **(header or {}), "imgsim_manifest": MANIFEST_VERSION, "run": run,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cwd": os.getcwd(), "roots": folders,
            "quarantine": quarantine if moving else None, "key": key_name})
    except BaseException:
        if key_name:  # no manifest (say --manifest names an existing file): its key would be litter
            with dir_at(quarantine) as qfd:
                os.unlink(key_name, dir_fd=qfd)
        raise
    rep = RunReport()
    full = False
    try:
        for seq, (a, orig) in enumerate(zip(actions, given)):
            if full:
                rep.skipped.append((orig, "not tried: no space left on the quarantine's device"))
                continue
            if within(a.path, folders) is None or within(a.keeper, folders) is None:
                why = "outside the scanned folders (reached through a symbolic link?)"
            elif a.dest is not None and not under(a.dest, quarantine):
                why = f"its quarantine path is outside {_shown(quarantine)}"
            else:
                try:
                    why = _run_one(a, seq, man, run, quarantine)
                except Blocked as e:
                    why = str(e)
                except OSError as e:  # one file's failure (a read-only folder, a full disk) ends only its own
                    # action: its manifest line is written, so undo finds the state whatever step it reached
                    why = f"{e.strerror or e}"
                    full = e.errno == errno.ENOSPC
            if why:
                rep.skipped.append((orig, why))
            else:
                rep.done.append(orig)
        try:  # what was done is recorded already: a seal that cannot be written costs only its own check
            man.write({"end": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "done": len(rep.done),
                       "skipped": len(rep.skipped)})
            if key is not None:
                seal_key(quarantine, key_name, man.prev)
        except OSError:
            pass
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
        with dir_at(os.path.dirname(it["keeper"])) as kfd:
            k = lstat_at(kfd, os.path.basename(it["keeper"]))
    except (FileNotFoundError, Blocked):
        return False
    return k is not None and (k.st_dev, k.st_ino) == (p.st_dev, p.st_ino)


def _undo_one(it: dict, roots: list[str], run: str, rep: UndoReport) -> None:
    path, dest, digest = it["path"], it["dest"], it["digest"]
    pname, dname, tmp = os.path.basename(path), os.path.basename(dest), _partial(run, it["seq"])
    with ExitStack() as es:
        try:
            dfd = es.enter_context(dir_at(os.path.dirname(dest)))
        except FileNotFoundError:
            dfd = None
        if dfd is not None:
            drop_partial(dfd, tmp)
        d = lstat_at(dfd, dname) if dfd is not None else None
        if d is None:
            if os.path.lexists(path):
                rep.already.append(path)  # never moved, or already restored
            else:
                rep.conflicts.append((path, f"gone, and so is its original in the quarantine ({_shown(dest)})"))
            return
        if digest_at(dfd, dname, d) != digest:
            rep.conflicts.append((path, f"the original in the quarantine ({_shown(dest)}) changed since the run"))
            return
        # Folders the user removed since the run are made again, inside the scanned folder only.
        pfd = es.enter_context(dir_at(os.path.dirname(path), create_below=within(path, roots)))
        drop_partial(pfd, tmp)
        p = lstat_at(pfd, pname)
        if p is not None and it["op"] != "move" and _is_our_link(it, pfd, pname, p):
            now = lstat_at(pfd, pname)
            if now is None or not same_file(now, p):
                raise Blocked("it changed since it was checked")
            os.unlink(pname, dir_fd=pfd)
            p = None
        if p is None:
            move_at(dfd, dname, pfd, pname, d, digest, tmp)
            rep.restored.append(path)
        elif (stat.S_ISREG(p.st_mode) and (p.st_dev, p.st_ino) != (d.st_dev, d.st_ino)
              and (p.st_dev, p.st_ino) != (it.get("keeper_dev"), it.get("keeper_ino"))
              and digest_at(pfd, pname, p) == digest):
            # A cross-device move killed between its copy and the unlink left the same bytes twice: the
            # quarantine's copy is the run's own, and the original is back in place.
            now = lstat_at(dfd, dname)
            if now is None or not same_file(now, d):
                raise Blocked("the original in the quarantine changed since it was checked")
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
            raise ManifestRefused(f"refusing to undo {_shown(manifest_path)}: another imgsim is using it right "
                                  f"now; nothing was changed") from None
        data = f.read()
        try:
            header, intents, _, key, prev = _verify(data)
        except Blocked as e:
            raise ManifestRefused(f"refusing to undo {_shown(manifest_path)}: {e}; nothing was changed") from None
        rep = UndoReport()
        for it in reversed(intents):
            if it["op"] == "delete":
                (rep.already if os.path.lexists(it["path"]) else rep.lost).append(it["path"])
                continue
            try:
                _undo_one(it, header["roots"], header["run"], rep)
            except Blocked as e:
                rep.conflicts.append((it["path"], str(e)))
            except OSError as e:
                rep.conflicts.append((it["path"], e.strerror or str(e)))
        if key is not None:
            if data and not data.endswith(b"\n"):
                f.write(b"\n")  # end a line torn by a kill, so the record below stands on its own line
            ManifestWriter(f, key, prev).write({"undo": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                "restored": len(rep.restored), "conflicts": len(rep.conflicts)})
    return rep
