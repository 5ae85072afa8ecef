"""Dedup actions: move / hard link / symlink / delete, the manifest-first rule, undo (also after a crash at
every step), references never touched, refusal to delete without --yes."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from imgsim_fast.cli.main import main
from imgsim_fast.jobs.dedup import actions as act
from imgsim_fast.jobs.dedup import find_duplicates
from imgsim_fast.jobs.dedup import safe_fs as sfs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _album(root, n_pictures=3, copies=2, seed=0):
    """Synthetic smooth pictures (random low-frequency patterns) and recompressed copies in subfolders."""
    rng = np.random.default_rng(seed)
    (root / "a" / "b").mkdir(parents=True)
    (root / "ref").mkdir()
    for i in range(n_pictures):
        low = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        im = Image.fromarray(low).resize((320, 240), Image.Resampling.BICUBIC)
        im.save(root / f"pic{i}.png")
        for c in range(copies):
            sub = root / ("a" if c == 0 else "a/b")
            im.resize((160 + 40 * c, 120 + 30 * c)).save(sub / f"pic{i}_copy{c}.jpg", quality=85 - 10 * c)
    return root


def _digests(root):
    out = {}
    for dp, _, fs in os.walk(root):
        for f in fs:
            p = os.path.join(dp, f)
            if os.path.islink(p):
                out[os.path.relpath(p, root)] = ("link", os.readlink(p))
                continue
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _result(root, **kw):
    return find_duplicates([str(root)], method="phash", workers=1, progress=False, **kw)


def test_move_keeps_relative_paths_and_undo_restores(tmp_path):
    root = _album(tmp_path / "album")
    before = _digests(root)
    res = _result(root)
    assert len(res.groups) == 3 and all(len(g.members) == 3 for g in res.groups)
    q = tmp_path / "quarantine"
    plan = act.plan_actions(res, "move", [str(root)], str(q))
    assert len(plan) == 6 and all(a.path.endswith(".jpg") for a in plan)  # the PNG originals are kept
    rep = act.execute(plan, str(q / "m.jsonl"))
    assert len(rep.done) == 6 and not rep.skipped
    for a in plan:
        assert not os.path.exists(a.path) and os.path.isfile(a.dest)
        assert os.path.relpath(a.dest, q) == os.path.relpath(a.path, root)  # relative path kept
    assert set(_digests(root)) == {f"pic{i}.png" for i in range(3)}
    r1 = act.undo(str(q / "m.jsonl"))
    assert len(r1.restored) == 6
    assert _digests(root) == before
    r2 = act.undo(str(q / "m.jsonl"))  # idempotent
    assert not r2.restored and len(r2.already) == 6
    assert _digests(root) == before


@pytest.mark.parametrize("op", ["hardlink", "symlink"])
def test_links_replace_and_undo(tmp_path, op):
    root = _album(tmp_path / "album", n_pictures=2)
    before = _digests(root)
    res = _result(root)
    q = tmp_path / "orig"
    plan = act.plan_actions(res, op, [str(root)], str(q))
    act.execute(plan, str(tmp_path / "m.jsonl"))
    for a in plan:
        assert os.path.samefile(a.path, a.keeper)
        assert os.path.islink(a.path) == (op == "symlink")
        assert os.path.isfile(a.dest)
    act.undo(str(tmp_path / "m.jsonl"))
    assert _digests(root) == before
    act.undo(str(tmp_path / "m.jsonl"))
    assert _digests(root) == before


def test_delete_only_what_was_planned_and_undo_says_so(tmp_path):
    root = _album(tmp_path / "album", n_pictures=2)
    (root / "unrelated.txt").write_text("not an image")
    res = _result(root)
    plan = act.plan_actions(res, "delete", [str(root)])
    act.execute(plan, str(tmp_path / "m.jsonl"))
    left = set(_digests(root))
    assert left == {"pic0.png", "pic1.png", "unrelated.txt"}
    rep = act.undo(str(tmp_path / "m.jsonl"))
    assert len(rep.lost) == 4 and not rep.restored


def test_manifest_written_before_each_action(tmp_path, monkeypatch):
    root = _album(tmp_path / "album", n_pictures=2)
    res = _result(root)
    man = tmp_path / "m.jsonl"
    plan = act.plan_actions(res, "move", [str(root)], str(tmp_path / "q"))
    real_rename = sfs.rename_noreplace
    seen = []

    def checking_rename(sfd, sname, dfd, dname):
        # At the moment a file is moved, its intent (this very file, from this folder) is already on disk.
        src = os.path.join(os.readlink(f"/proc/self/fd/{sfd}"), sname)
        intents = [json.loads(line) for line in man.read_text().splitlines()[1:]]
        assert any(i.get("state") == "intent" and i["path"] == src and i["dest"] ==
                   os.path.join(os.readlink(f"/proc/self/fd/{dfd}"), dname) for i in intents), src
        seen.append(src)
        return real_rename(sfd, sname, dfd, dname)

    monkeypatch.setattr(sfs, "rename_noreplace", checking_rename)
    act.execute(plan, str(man))
    assert sorted(seen) == sorted(a.path for a in plan) and len(plan) == 4


def test_changed_file_and_missing_keeper_are_skipped(tmp_path):
    root = _album(tmp_path / "album", n_pictures=2)
    res = _result(root)
    plan = act.plan_actions(res, "move", [str(root)], str(tmp_path / "q"))
    with open(plan[0].path, "ab") as f:
        f.write(b"changed")  # modified after the scan
    keeper = plan[-1].keeper
    for a in plan:
        if a.keeper == keeper:
            skipped_for_keeper = a
    os.rename(keeper, keeper + ".away")  # the kept file vanished
    rep = act.execute(plan, str(tmp_path / "m.jsonl"))
    why = {a.path: w for a, w in rep.skipped}
    assert why[plan[0].path] == "file changed since the scan"
    assert why[skipped_for_keeper.path] == "the kept file is gone"
    assert os.path.exists(plan[0].path) and os.path.exists(skipped_for_keeper.path)


def test_reference_files_never_touched(tmp_path):
    root = _album(tmp_path / "album", n_pictures=2)
    # Make the reference copy the worst one by every criterion: it is kept anyway.
    for i in range(2):
        os.rename(root / "a" / "b" / f"pic{i}_copy1.jpg", root / "ref" / f"pic{i}_ref.jpg")
    ref_before = _digests(root / "ref")
    rc = main(["dedup", str(root), "--method", "phash", "--reference", str(root / "ref"), "--workers", "1",
               "--no-progress", "--move-to", str(tmp_path / "q"), "--manifest", str(tmp_path / "m.jsonl")])
    assert rc == 0
    assert _digests(root / "ref") == ref_before
    moved = [os.path.relpath(os.path.join(dp, f), tmp_path / "q") for dp, _, fs in os.walk(tmp_path / "q")
             for f in fs if not f.endswith((".jsonl", ".key", ".seal"))]
    assert sorted(moved) == ["album/a/pic0_copy0.jpg", "album/a/pic1_copy0.jpg", "album/pic0.png",
                             "album/pic1.png"] or sorted(moved) == ["a/pic0_copy0.jpg", "a/pic1_copy0.jpg",
                                                                    "pic0.png", "pic1.png"]
    assert main(["undo", str(tmp_path / "m.jsonl")]) == 0


def test_cli_refuses_delete_without_yes_and_no_tty(tmp_path):
    root = _album(tmp_path / "album", n_pictures=1)
    before = _digests(root)
    p = subprocess.run([sys.executable, "-m", "imgsim_fast", "dedup", str(root), "--method", "phash", "--delete",
                        "--workers", "1", "--no-progress"], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, cwd=tmp_path, timeout=60)
    assert p.returncode == 2 and "--yes" in p.stderr
    assert _digests(root) == before
    rc = main(["dedup", str(root), "--method", "phash", "--delete", "--yes", "--workers", "1", "--no-progress",
               "--manifest", str(tmp_path / "m.jsonl")])
    assert rc == 0
    assert set(_digests(root)) == {"pic0.png"}


def test_yes_without_delete_is_refused_before_the_scan(tmp_path, capsys):
    # `--yes` alone would run a plain scan: the user who meant to delete would believe it done.
    root = _album(tmp_path / "album", n_pictures=1)
    before = _digests(root)
    assert main(["dedup", str(root), "--method", "phash", "--yes", "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--yes only confirms --delete" in err and len(err.strip().splitlines()) == 1
    assert _digests(root) == before


# A child process that runs the actions and SIGKILLs itself on the Nth file-system call that changes a
# name (no-replace rename, link, symlink, unlink), i.e. at every point between the manifest line and the
# action's completion.
_CRASH = r"""
import os, pickle, signal, sys
from imgsim_fast.jobs.dedup import actions as act
from imgsim_fast.jobs.dedup import safe_fs as sfs
plan, manifest, roots, quarantine, n = pickle.load(open(sys.argv[1], "rb"))
count = [0]
def wrap(fn):
    def w(*a, **k):
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*a, **k)
    return w
for name in ("link", "symlink", "unlink"):
    setattr(act.os, name, wrap(getattr(os, name)))
sfs.rename_noreplace = wrap(sfs.rename_noreplace)
act.execute(plan, manifest, roots=roots, quarantine=quarantine)
"""


def ctrl_c_at_action(monkeypatch, n):
    """Ctrl-C as the run's `n`th action is about to start (actions._run_one raises KeyboardInterrupt)."""
    from imgsim_fast.jobs.dedup import actions as act

    real, calls = act._run_one, []

    def run_one(*a, **k):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(act, "_run_one", run_one)


def crash_at_every_step(tmp_path, plan_for, roots, quarantine_for, check):
    """Run the plan in a child killed at its 1st, 2nd, ... name-changing call until one run completes;
    after each, `check(manifest)` (undo, compare)."""
    import pickle

    script = tmp_path / "crash.py"
    script.write_text(_CRASH)
    for n in range(1, 40):
        man = str(tmp_path / f"m{n}.jsonl")
        with open(tmp_path / "plan.pkl", "wb") as f:
            pickle.dump((plan_for(n), man, roots, quarantine_for(n), n), f)
        p = subprocess.run([sys.executable, str(script), str(tmp_path / "plan.pkl")], cwd=REPO, timeout=60,
                           capture_output=True, text=True)
        assert p.returncode in (0, -9), p.stderr
        check(man)
        if p.returncode == 0:
            return n - 1  # how many times it was killed
    raise AssertionError("the run never completed")


@pytest.mark.parametrize("op", ["move", "hardlink", "symlink"])
def test_undo_after_crash_at_every_step(tmp_path, op):
    root = _album(tmp_path / "album", n_pictures=1, copies=2)
    before = _digests(root)
    res = _result(root)

    def check(man):
        act.undo(man)
        assert _digests(root) == before, (op, man)
        act.undo(man)  # and again: nothing changes
        assert _digests(root) == before

    kills = crash_at_every_step(tmp_path, lambda n: act.plan_actions(res, op, [str(root)], str(tmp_path / f"q{n}")),
                                [str(root)], lambda n: str(tmp_path / f"q{n}"), check)
    # move: 1 rename per file; links: a rename then a link. Two files: every one of those calls was hit.
    assert kills >= 2 * (1 if op == "move" else 2)
