"""Undo trusts nothing (issue 11): crafted and edited manifests, folders swapped for symbolic links after the
run, and keys that are not the user's are refused whole, with every file byte-identical; cross-device links
undo; a changed file is reported and left alone; manifest names never collide."""
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from imgsim_fast.cli.main import main
from imgsim_fast.jobs.dedup import actions as act
from imgsim_fast.jobs.dedup import manifest
from imgsim_fast.jobs.dedup import safe_fs as sfs
from imgsim_fast.features.extract import file_digest

from test_actions import crash_at_every_step, ctrl_c_at_action


def _snapshot(top):
    """Every entry under `top`: folders, symbolic links (their text) and files (SHA-256 of the bytes)."""
    out = {}
    for dp, dirs, files in os.walk(top):
        for d in dirs:
            p = os.path.join(dp, d)
            out[os.path.relpath(p, top)] = ("link", os.readlink(p)) if os.path.islink(p) else "dir"
        for f in files:
            p = os.path.join(dp, f)
            if os.path.islink(p):
                out[os.path.relpath(p, top)] = ("link", os.readlink(p))
            else:
                with open(p, "rb") as fh:
                    out[os.path.relpath(p, top)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _tree(top, n=4, seed=0):
    """album/k{i}.jpg kept, album/sub/d{i}.jpg their duplicates (other bytes), outside/victim.txt."""
    rng = np.random.default_rng(seed)
    root = top / "album"
    (root / "sub").mkdir(parents=True)
    for i in range(n):
        (root / f"k{i}.jpg").write_bytes(rng.bytes(3000 + i))
        (root / "sub" / f"d{i}.jpg").write_bytes(rng.bytes(2000 + i))
    (top / "outside").mkdir()
    (top / "outside" / "victim.txt").write_bytes(b"precious bytes the run never touched\n")
    return root


def _actions(root, op, quarantine, n=4):
    out = []
    for i in range(n):
        p, k = str(root / "sub" / f"d{i}.jpg"), str(root / f"k{i}.jpg")
        dest = None if op == "delete" else os.path.join(str(quarantine), "sub", f"d{i}.jpg")
        out.append(act.Action(op, p, k, dest, file_digest(p), file_digest(k)))
    return out


def _run(top, op, quarantine=None, n=4):
    root = top / "album"
    q = quarantine or top / "q"
    man = str(top / "m.jsonl")
    rep = act.execute(_actions(root, op, q, n), man, {"op": op}, roots=[str(root)], quarantine=str(q))
    assert len(rep.done) == n, rep.skipped
    return man


def _lines(man):
    with open(man) as f:
        return [json.loads(line) for line in f]


def _resign(man, objs):
    """Write `objs` as the manifest with a valid MAC chain under the run's own key: a forger who could read
    the key. What is refused then is refused by the path and file checks, not by the MAC."""
    h = objs[0]
    with open(os.path.join(h["quarantine"], h["key"])) as f:
        key = bytes.fromhex(f.read().strip())
    prev, out, end = "", [], None
    for o in objs:
        o = {k: v for k, v in o.items() if k != "mac"}
        prev = manifest.line_mac(key, prev, o)
        out.append(json.dumps({**o, "mac": prev}) + "\n")
        end = prev if "end" in o else end
    with open(man, "w") as f:
        f.writelines(out)
    if end is not None:  # and the key's seal, which such a forger could write as well
        os.unlink(os.path.join(h["quarantine"], manifest.seal_name(h["key"])))
        manifest.seal_key(h["quarantine"], h["key"], end)


def _undo_refused(capsys, man, *words):
    capsys.readouterr()
    assert main(["undo", man]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgsim: error: refusing to undo") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err
    return err


def _undo_refused_untouched(capsys, tree, man, *words):
    """Undo is refused with one line naming `words`, and not one file under `tree` changed."""
    before = _snapshot(tree)
    err = _undo_refused(capsys, man, *words)
    assert _snapshot(tree) == before
    return err


# ------------------------------------------------------------------------------------------------
# The manifest is bound to its run


def test_edited_line_is_refused_and_nothing_moves(tmp_path, capsys):
    _tree(tmp_path)
    man = _run(tmp_path, "move")
    text = Path(man).read_text()
    # The writer points the last entry's original somewhere else: one path in one line, nothing more.
    edited = text.replace("/q/sub/d3.jpg", "/q/sub/d2.jpg", 1)
    assert edited != text
    Path(man).write_text(edited)
    _undo_refused_untouched(capsys, tmp_path, man, "changed after the run")


@pytest.mark.parametrize("cut", [1, 3])  # the end record alone; it with the last action's two lines
def test_lines_cut_from_a_finished_runs_end_are_refused(tmp_path, capsys, cut):
    # The chain holds for any prefix of a manifest: only the key's seal, written once the run reached its end,
    # shows that a finished run's last lines are gone (a user cut two; undo left a file in the quarantine).
    _tree(tmp_path)
    man = _run(tmp_path, "move")
    lines = Path(man).read_text().splitlines(keepends=True)
    assert "end" in json.loads(lines[-1])
    Path(man).write_text("".join(lines[:-cut]))
    _undo_refused_untouched(capsys, tmp_path, man, "lines were cut from its end")


def test_a_seal_that_cannot_be_written_costs_only_its_check(tmp_path, monkeypatch):
    # A full disk at the seal: the run's report stands, no temporary file is left, and undo works unsealed.
    root = _tree(tmp_path)
    before = _snapshot(root)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(manifest.os, "replace", full)
    man = _run(tmp_path, "move")
    monkeypatch.undo()
    key = _lines(man)[0]["key"]
    assert sorted(os.listdir(tmp_path / "q")) == sorted(["sub", key])
    assert len(act.undo(man).restored) == 4 and _snapshot(root) == before


def test_a_run_killed_before_its_end_is_undone_as_far_as_it_went(tmp_path, monkeypatch):
    # No seal: the manifest ends where the run stopped, and undo restores what it records.
    root = _tree(tmp_path)
    before = _snapshot(root)
    ctrl_c_at_action(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        act.execute(_actions(root, "move", tmp_path / "q"), str(tmp_path / "m.jsonl"), {"op": "move"},
                    roots=[str(root)], quarantine=str(tmp_path / "q"))
    monkeypatch.undo()
    assert not any("end" in json.loads(x) for x in Path(tmp_path / "m.jsonl").read_text().splitlines())
    rep = act.undo(str(tmp_path / "m.jsonl"))
    assert len(rep.restored) == 2 and not rep.conflicts
    assert _snapshot(root) == before


def test_version_1_and_garbage_manifests_are_refused(tmp_path, capsys):
    _tree(tmp_path)
    man = _run(tmp_path, "move")
    lines = Path(man).read_text().splitlines()
    old = json.loads(lines[0])
    old["imgsim_manifest"] = 1
    Path(man).write_text("\n".join([json.dumps(old)] + lines[1:]) + "\n")
    before = _snapshot(tmp_path)
    _undo_refused(capsys, man, "version 1")
    Path(man).write_text("not a manifest\n")
    _undo_refused(capsys, man, "not an imgsim manifest")
    assert {k: v for k, v in _snapshot(tmp_path).items() if k != "m.jsonl"} == \
        {k: v for k, v in before.items() if k != "m.jsonl"}


@pytest.mark.parametrize("change", ["readable by others", "missing", "a symbolic link"])
def test_key_must_be_the_users_private_file(tmp_path, capsys, change):
    _tree(tmp_path)
    man = _run(tmp_path, "move")
    h = _lines(man)[0]
    key = os.path.join(h["quarantine"], h["key"])
    if change == "readable by others":
        os.chmod(key, 0o644)
    elif change == "missing":
        os.rename(key, str(tmp_path / "elsewhere.key"))
    else:
        os.rename(key, str(tmp_path / "elsewhere.key"))
        os.symlink(str(tmp_path / "elsewhere.key"), key)
    _undo_refused_untouched(capsys, tmp_path, man, "key")


def test_unsigned_manifest_cannot_ask_for_moves(tmp_path, capsys):
    """Dropping the key from the header (to skip the MAC) is refused: only deletions go unsigned."""
    _tree(tmp_path)
    man = _run(tmp_path, "move")
    objs = _lines(man)
    objs[0].update(key=None, quarantine=None)
    Path(man).write_text("".join(json.dumps({k: v for k, v in o.items() if k != "mac"}) + "\n" for o in objs))
    _undo_refused_untouched(capsys, tmp_path, man, "no run key")


# ------------------------------------------------------------------------------------------------
# The probe's three attacks, unsigned (the MAC refuses) and re-signed with the run's key (the path and
# no-replace checks refuse): every file outside the run, and every file at all, stays byte-identical.


def _attack(tmp_path, kind):
    """Edit the last intent of a finished move/hardlink run into one of the probe's attacks."""
    root = tmp_path / "album"
    victim = str(tmp_path / "outside" / "victim.txt")
    man = _run(tmp_path, "hardlink" if kind == "hardlink-overwrite-victim" else "move")
    objs = _lines(man)
    it = [o for o in objs if o.get("state") == "intent"][-1]
    if kind == "move-from-outside":
        # "undo" would move the victim from outside every dedup folder to a place the writer picked.
        it.update(dest=victim, path=str(root / "planted.txt"), digest=file_digest(victim))
    elif kind == "hardlink-overwrite-victim":
        # The victim as path and keeper: the old undo saw "our link" and replaced it with the original.
        it.update(path=victim, keeper=victim)
    else:  # move-dest-victim-delete
        # The path holds a file whose digest the writer knows; the old undo then unlinked `dest`.
        known = str(root / "k0.jpg")
        it.update(dest=victim, path=known, digest=file_digest(known))
    return man, objs


@pytest.mark.parametrize("signed", [False, True], ids=["edited", "re-signed"])
@pytest.mark.parametrize("kind", ["move-from-outside", "hardlink-overwrite-victim", "move-dest-victim-delete"])
def test_crafted_manifests_are_refused_whole(tmp_path, capsys, kind, signed):
    _tree(tmp_path)
    man, objs = _attack(tmp_path, kind)
    if signed:
        _resign(man, objs)
        words = ("outside",)
    else:
        lines = Path(man).read_text().splitlines()
        last = max(i for i, o in enumerate(objs) if o.get("state") == "intent")
        lines[last] = json.dumps(objs[last])  # with its old, now wrong, MAC
        Path(man).write_text("\n".join(lines) + "\n")
        words = ("changed after the run",)
    _undo_refused_untouched(capsys, tmp_path, man, *words)


def test_signed_entry_never_overwrites_a_file_the_run_did_not_make(tmp_path, capsys):
    """Inside the scanned folder and the quarantine, with a valid MAC: an entry claiming that a kept file
    (not a link the run made) stands where an original goes back is left alone, the kept file intact."""
    root = _tree(tmp_path)
    man = _run(tmp_path, "hardlink")
    objs = _lines(man)
    it = [o for o in objs if o.get("state") == "intent"][-1]
    k1 = os.stat(root / "k1.jpg")
    it.update(path=str(root / "k1.jpg"), keeper=str(root / "k0.jpg"), keeper_dev=k1.st_dev, keeper_ino=k1.st_ino)
    _resign(man, objs)
    before_k1 = _snapshot(root)["k1.jpg"]
    capsys.readouterr()
    assert main(["undo", man]) == 1
    err = capsys.readouterr().err
    assert f"left {root / 'k1.jpg'} alone" in err, err
    assert _snapshot(root)["k1.jpg"] == before_k1
    assert os.path.isfile(it["dest"])  # that entry's original stays in the quarantine
    for i in range(3):  # the honest entries were undone
        assert not os.path.samefile(root / "sub" / f"d{i}.jpg", root / f"k{i}.jpg")


# ------------------------------------------------------------------------------------------------
# Folders swapped for symbolic links after the run


def test_root_swapped_for_a_symlink_is_refused(tmp_path, capsys):
    root = _tree(tmp_path)
    man = _run(tmp_path, "move")
    # The scanned folder now leads somewhere else, where a file waits under an original's name.
    os.rename(root, tmp_path / "album.real")
    (tmp_path / "elsewhere" / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere" / "sub" / "keep.txt").write_bytes(b"someone else's file")
    os.symlink(tmp_path / "elsewhere", root)
    _undo_refused_untouched(capsys, tmp_path, man, "is a symbolic link")


def test_quarantine_swapped_for_a_symlink_is_refused(tmp_path, capsys):
    _tree(tmp_path)
    man = _run(tmp_path, "move")
    os.rename(tmp_path / "q", tmp_path / "q.real")
    os.symlink(tmp_path / "q.real", tmp_path / "q")  # even pointing at the real quarantine, key and all
    _undo_refused_untouched(capsys, tmp_path, man, "is a symbolic link")


def test_subfolder_swapped_for_a_symlink_leaves_its_entries_alone(tmp_path, capsys):
    root = _tree(tmp_path)
    man = _run(tmp_path, "move")
    os.rename(root / "sub", tmp_path / "sub.real")
    os.symlink(tmp_path / "outside", root / "sub")  # restoring "into sub" would write into outside/
    before_outside = _snapshot(tmp_path / "outside")
    capsys.readouterr()
    assert main(["undo", man]) == 1
    err = capsys.readouterr().err
    assert err.count("is a symbolic link") == 4, err
    assert _snapshot(tmp_path / "outside") == before_outside
    assert sorted(os.listdir(tmp_path / "q" / "sub")) == [f"d{i}.jpg" for i in range(4)]


# ------------------------------------------------------------------------------------------------
# Per entry: a file changed since the run is reported and left alone, the rest restored


def test_changed_original_is_left_alone_rest_restored(tmp_path, capsys):
    root = _tree(tmp_path)
    before = _snapshot(root)
    man = _run(tmp_path, "symlink")
    with open(tmp_path / "q" / "sub" / "d2.jpg", "ab") as f:
        f.write(b"edited in the quarantine")
    capsys.readouterr()
    assert main(["undo", man]) == 1
    err = capsys.readouterr().err
    assert "d2.jpg" in err and "changed since the run" in err and err.count("\n") == 1
    now = _snapshot(root)
    assert now.pop("sub/d2.jpg") == ("link", str(root / "k2.jpg"))  # still the run's link
    assert now == {k: v for k, v in before.items() if k != "sub/d2.jpg"}


def test_undo_recreates_a_removed_folder_inside_the_root(tmp_path):
    root = _tree(tmp_path)
    before = _snapshot(root)
    man = _run(tmp_path, "move")
    os.rmdir(root / "sub")  # emptied by the run, then tidied away by the user
    rep = act.undo(man)
    assert len(rep.restored) == 4 and not rep.conflicts
    assert _snapshot(root) == before


# ------------------------------------------------------------------------------------------------
# Round trips: exact restores, non-UTF-8 names, no leftovers, unique manifests


@pytest.mark.parametrize("op", ["move", "hardlink", "symlink"])
def test_round_trip_restores_exactly_and_leaves_nothing_behind(tmp_path, op):
    root = _tree(tmp_path)
    odd = os.fsdecode(b"caf\xe9 \n.jpg")  # not UTF-8, with a newline: kept exact through the manifest
    (root / "sub" / odd).write_bytes(b"odd name")
    (root / f"k-{odd}").write_bytes(b"its keeper")
    before = _snapshot(root)
    acts = _actions(root, op, tmp_path / "q") + [
        act.Action(op, str(root / "sub" / odd), str(root / f"k-{odd}"), str(tmp_path / "q" / "sub" / odd),
                   file_digest(str(root / "sub" / odd)), file_digest(str(root / f"k-{odd}")))]
    man = str(tmp_path / "m.jsonl")
    rep = act.execute(acts, man, roots=[str(root)], quarantine=str(tmp_path / "q"))
    assert len(rep.done) == 5
    r = act.undo(man)
    assert len(r.restored) == 5 and not r.conflicts
    assert _snapshot(root) == before
    assert act.undo(man).already and _snapshot(root) == before  # idempotent
    key = _lines(man)[0]["key"]
    left = _snapshot(tmp_path / "q")
    assert {k for k, v in left.items() if v != "dir"} == {key, manifest.seal_name(key)}  # no partial, temp or lock files


def test_existing_manifest_is_never_overwritten_and_nothing_is_left(tmp_path):
    root = _tree(tmp_path)
    (tmp_path / "m.jsonl").write_text("an earlier run's record\n")
    before = _snapshot(tmp_path)
    with pytest.raises(FileExistsError):
        act.execute(_actions(root, "move", tmp_path / "q"), str(tmp_path / "m.jsonl"), roots=[str(root)],
                    quarantine=str(tmp_path / "q"))
    assert {k: v for k, v in _snapshot(tmp_path).items() if k != "q"} == before
    assert os.listdir(tmp_path / "q") == []  # no key without its manifest


def test_delete_manifest_is_a_record_only(tmp_path):
    root = _tree(tmp_path)
    man = str(tmp_path / "m.jsonl")
    act.execute(_actions(root, "delete", None), man, roots=[str(root)])
    assert not (tmp_path / "q").exists() and _lines(man)[0]["key"] is None
    before = _snapshot(tmp_path)
    rep = act.undo(man)
    assert len(rep.lost) == 4 and not rep.restored
    assert _snapshot(tmp_path) == before


def test_manifest_names_unique_within_one_second(tmp_path, monkeypatch, capsys):
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (64, 48), (10, 200, 30)).save(tmp_path / name / "x.png")
        shutil.copy(tmp_path / name / "x.png", tmp_path / name / "y.png")
    monkeypatch.setattr(act.time, "strftime", lambda fmt, *a: "20261204-070000")  # the same second, twice
    for name in ("a", "b"):
        assert main(["dedup", str(tmp_path / name), "--method", "exact", "--move-to", str(tmp_path / "q"),
                     "--workers", "1", "--no-progress"]) == 0
    manifests = sorted(f for f in os.listdir(tmp_path / "q") if f.endswith(".jsonl"))
    assert len(manifests) == 2 and all(m.startswith("imgsim-manifest-20261204-070000-") for m in manifests)
    for m in manifests:
        assert main(["undo", str(tmp_path / "q" / m)]) == 0
    for name in ("a", "b"):
        assert sorted(os.listdir(tmp_path / name)) == ["x.png", "y.png"]


# ------------------------------------------------------------------------------------------------
# Across file systems


@pytest.fixture
def other_fs(tmp_path):
    """A folder on another file system than tmp_path (tmpfs /dev/shm), or skip."""
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system: /dev/shm is missing or on the same device as the test folder")
    d = tempfile.mkdtemp(prefix="imgsim-test-", dir="/dev/shm")
    yield d
    shutil.rmtree(d)


@pytest.mark.parametrize("op", ["move", "hardlink", "symlink"])
def test_cross_device_round_trip(tmp_path, other_fs, op):
    root = _tree(tmp_path, n=64)
    before = _snapshot(root)
    q = os.path.join(other_fs, "q")
    man = _run(tmp_path, op, quarantine=q, n=64)
    for i in range(64):
        assert os.path.isfile(os.path.join(q, "sub", f"d{i}.jpg"))
        d = root / "sub" / f"d{i}.jpg"
        assert os.path.lexists(d) == (op != "move") and (op == "move" or os.path.samefile(d, root / f"k{i}.jpg"))
    rep = act.undo(man)
    assert len(rep.restored) == 64 and not rep.conflicts
    assert _snapshot(root) == before
    key = _lines(man)[0]["key"]
    assert set(_snapshot(q)) == {"sub", key, manifest.seal_name(key)}  # originals gone from the quarantine, no partials


@pytest.mark.parametrize("link", ["hard", "sym"])
def test_cli_link_with_quarantine_on_another_file_system(tmp_path, other_fs, capsys, link):
    """The probe's case: `dedup --link hard|sym --move-to` a tmpfs quarantine, then `imgsim undo`."""
    from PIL import Image

    album = tmp_path / "album"
    album.mkdir()
    for i in range(6):
        Image.new("RGB", (64, 48), (40 * i, 200, 30)).save(album / f"x{i}.png")
        shutil.copy(album / f"x{i}.png", album / f"x{i}-copy.png")
    before = _snapshot(album)
    q = os.path.join(other_fs, "q")
    assert main(["dedup", str(album), "--method", "exact", "--link", link, "--move-to", q, "--workers", "1",
                 "--no-progress"]) == 0
    assert len([f for f in os.listdir(q) if f.endswith(".png")]) == 6
    (man,) = [os.path.join(q, f) for f in os.listdir(q) if f.endswith(".jsonl")]
    capsys.readouterr()
    assert main(["undo", man]) == 0
    assert capsys.readouterr().out.startswith("6 files restored")
    assert _snapshot(album) == before


def test_hard_link_to_a_keeper_on_another_file_system_is_skipped(tmp_path, other_fs):
    root = _tree(tmp_path, n=1)
    keeper = os.path.join(other_fs, "k.jpg")
    shutil.copy(root / "k0.jpg", keeper)
    before = _snapshot(root)
    p = str(root / "sub" / "d0.jpg")
    a = act.Action("hardlink", p, keeper, str(tmp_path / "q" / "d0.jpg"), file_digest(p), file_digest(keeper))
    rep = act.execute([a], str(tmp_path / "m.jsonl"), roots=[str(root), other_fs], quarantine=str(tmp_path / "q"))
    assert not rep.done and "another file system" in rep.skipped[0][1]
    assert _snapshot(root) == before


def test_cross_device_undo_after_crash_at_every_step(tmp_path, other_fs):
    """Killed at each rename, copy commit, unlink and link of a cross-device hard-link run, then undone."""
    root = _tree(tmp_path, n=2)
    before = _snapshot(root)

    def check(man):
        rep = act.undo(man)
        assert not rep.conflicts, rep.conflicts
        assert _snapshot(root) == before, man
        assert not [f for f in _snapshot(other_fs) if "partial" in f]

    kills = crash_at_every_step(
        tmp_path, lambda n: _actions(root, "hardlink", os.path.join(other_fs, f"q{n}"), n=2), [str(root)],
        lambda n: os.path.join(other_fs, f"q{n}"), check)
    # Per file: the rename that fails with EXDEV, the copy's no-replace rename, the unlink, the link.
    assert kills >= 2 * 4


# ------------------------------------------------------------------------------------------------
# The primitives under the checks


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "link-unlink"])
def test_rename_noreplace_never_replaces(tmp_path, monkeypatch, renameat2):
    if not renameat2:
        monkeypatch.setattr(sfs, "_RENAMEAT2", None)  # a C library without renameat2: the link fallback
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            sfs.rename_noreplace(fd, "a", fd, "b")
        assert (tmp_path / "a").read_bytes() == b"a" and (tmp_path / "b").read_bytes() == b"b"
        sfs.rename_noreplace(fd, "a", fd, "c")
    finally:
        os.close(fd)
    assert sorted(os.listdir(tmp_path)) == ["b", "c"] and (tmp_path / "c").read_bytes() == b"a"


def test_undo_refuses_while_the_manifest_is_in_use(tmp_path, capsys):
    import fcntl

    _tree(tmp_path)
    man = _run(tmp_path, "move")
    before = _snapshot(tmp_path)
    with open(man, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # as a running dedup (or another undo) holds it
        _undo_refused(capsys, man, "another imgsim is using it")
    assert _snapshot(tmp_path) == before


def test_the_printed_undo_command_pastes_as_it_is_and_counts_read_right(tmp_path, capsys):
    # A folder and a quarantine with spaces in their names: the hint after a scan says nothing changed, the
    # summary counts "1 file", and the undo line, split as a shell splits it, puts the file back.
    import shlex

    from PIL import Image

    d = tmp_path / "my photos"
    d.mkdir()
    im = Image.fromarray(np.random.default_rng(4).integers(0, 256, (24, 32, 3), dtype=np.uint8)).resize((320, 240))
    im.save(d / "a.png")
    im.save(d / "a copy.jpg", quality=90)
    before = _snapshot(d)
    assert main(["dedup", str(d), "--method", "phash", "--workers", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "\nnothing changed: --move-to DIR sets the duplicates aside" in out and _snapshot(d) == before
    q = tmp_path / "set aside"
    assert main(["dedup", str(d), "--method", "phash", "--workers", "1", "--no-progress", "--move-to", str(q)]) == 0
    out = capsys.readouterr().out
    assert "\n1 file moved to " in out and "nothing changed" not in out, out
    (line,) = [x for x in out.splitlines() if x.startswith("undo with: ")]
    argv = shlex.split(line[len("undo with: "):])
    assert argv[:2] == ["imgsim", "undo"] and len(argv) == 3, argv
    assert main(argv[1:]) == 0
    assert capsys.readouterr().out.startswith("1 file restored")
    assert _snapshot(d) == before
