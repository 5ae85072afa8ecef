"""Review plans (dedup/plan.py) and `imgsim dedup --apply`: a good plan runs with manifest and undo; a
tampered or malformed one is refused with one line and exit 2 before anything is touched; a file that
changed since the review is skipped and reported while the rest goes ahead."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from imgsim_fast.cli.main import main
from imgsim_fast.io.digest import file_digest
from imgsim_fast.jobs.dedup.plan import PlanError, parse_plan
from test_actions import ctrl_c_at_action
from conftest import tree_snapshot


def _album(root, n=3):
    """n smooth random pictures (PNG) with two smaller JPEG copies each in sub/."""
    rng = np.random.default_rng(1)
    (root / "sub").mkdir(parents=True)
    for i in range(n):
        im = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((320, 240), Image.BICUBIC)
        im.save(root / f"pic{i}.png")
        im.resize((200, 150)).save(root / "sub" / f"pic{i}_a.jpg", quality=85)
        im.resize((160, 120)).save(root / "sub" / f"pic{i}_b.jpg", quality=70)
    return root


def _entry(p):
    return {"path": str(p), "digest": file_digest(str(p))}


def _plan(root, **kw):
    """What the review page exports for _album: keep each PNG, remove both JPEG copies."""
    doc = {"imgsim_plan": 1, "created": "2026-12-04T06:00:00.000Z", "report": "r.html", "roots": [str(root)],
           "reference": [],
           "groups": [{"keep": _entry(root / f"pic{i}.png"),
                       "remove": [_entry(root / "sub" / f"pic{i}_a.jpg"), _entry(root / "sub" / f"pic{i}_b.jpg")]}
                      for i in range(3)]}
    doc.update(kw)
    return doc


def _write(tmp_path, doc, name="plan.json"):
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(p)


@pytest.fixture
def album(tmp_path):
    return _album(tmp_path / "album")


def test_apply_moves_exactly_the_plan_and_undo_restores(tmp_path, album, capsys):
    before = tree_snapshot(album)
    doc = _plan(album)
    doc["groups"][1]["remove"].pop()  # a person unmarked pic1_b.jpg
    q = tmp_path / "q"
    assert main(["dedup", str(album), "--apply", _write(tmp_path, doc), "--move-to", str(q)]) == 0
    gone = {str(album / "sub" / n) for n in ("pic0_a.jpg", "pic0_b.jpg", "pic1_a.jpg", "pic2_a.jpg", "pic2_b.jpg")}
    after = tree_snapshot(album)
    assert set(after) == set(before) - gone
    assert all(after[p] == before[p] for p in after)
    for p in gone:  # in the quarantine at the same relative place, bytes unchanged
        moved = q / os.path.relpath(p, album)
        assert hashlib.sha256(moved.read_bytes()).hexdigest() == before[p]
    manifests = list(q.glob("imgsim-manifest-*.jsonl"))
    assert len(manifests) == 1
    assert json.loads(manifests[0].read_text().splitlines()[0])["plan"] == str(tmp_path / "plan.json")
    assert main(["undo", str(manifests[0])]) == 0
    assert tree_snapshot(album) == before


def test_apply_alone_only_checks(tmp_path, album, capsys):
    before = tree_snapshot(album)
    assert main(["dedup", "--apply", _write(tmp_path, _plan(album))]) == 0
    assert "6 files to remove" in capsys.readouterr().out
    assert tree_snapshot(album) == before


def test_a_plan_changes_files_only_in_folders_the_command_names(tmp_path, album, capsys):
    # A plan edited to reach outside the album (its roots widened to "/", a removal elsewhere) is a plan like
    # any other to the code: what it may change is bounded by the folders the person running it names.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copyfile(album / "pic0.png", outside / "kept_safe.png")
    doc = _plan(album)
    doc["roots"] = ["/"]
    doc["groups"][0]["remove"].append({"path": str(outside / "kept_safe.png"),
                                       "digest": file_digest(str(outside / "kept_safe.png"))})
    plan = _write(tmp_path, doc)
    before = tree_snapshot(album, outside)
    q = tmp_path / "q"
    for argv, why in ((["dedup", "--apply", plan, "--move-to", str(q)], "name the folders the plan may change"),
                      (["dedup", str(album), "--apply", plan, "--move-to", str(q)],
                       "outside the folders given on the command line")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and why in err, err
        assert not q.exists() and tree_snapshot(album, outside) == before
    assert main(["dedup", "--apply", plan]) == 0  # only checked: nothing to bound
    assert tree_snapshot(album, outside) == before
    # A quarantine inside the folders named is refused as for a scan (the next scan would find it again).
    assert main(["dedup", str(album), "--apply", _write(tmp_path, _plan(album), "ok.json"),
                 "--move-to", str(album / "q")]) == 2
    assert "is inside the scanned folder" in capsys.readouterr().err
    assert tree_snapshot(album, outside) == before


def _tampered(album, tmp_path):
    """Plans that must be refused as a whole, each with the reason the message must give."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("RGB", (32, 32)).save(outside / "x.png")
    p0 = str(album / "pic0.png")
    cases = {}
    d = _plan(album)
    d["groups"][0]["remove"].append(_entry(outside / "x.png"))
    cases["outside"] = (d, "outside the plan's roots")
    d = _plan(album)
    d["groups"][0]["remove"].append({"path": str(album / ".." / "elsewhere" / "x.png"),
                                     "digest": file_digest(str(outside / "x.png"))})
    cases["dotdot"] = (d, "outside the plan's roots")
    d = _plan(album, roots=[str(album), str(outside)])
    d["groups"][0]["remove"].append(_entry(outside / "x.png"))
    cases["widened roots"] = (d, None)  # refused by the command line's narrower root, below
    d = _plan(album)
    d["groups"][1]["remove"].append({"path": p0, "digest": file_digest(p0)})
    cases["keeper removed"] = (d, "which it also keeps")
    d = _plan(album)
    d["groups"][0]["remove"].append(d["groups"][0]["keep"])
    cases["own keeper removed"] = (d, "which it also keeps")
    d = _plan(album)
    d["groups"][2]["remove"].append(d["groups"][0]["remove"][0])
    cases["removed twice"] = (d, "twice")
    cases["reference"] = (_plan(album, reference=[str(album / "sub")]), "reference folder")
    cases["not json"] = ("{not json", "not a JSON plan")
    cases["version"] = (_plan(album, imgsim_plan=2), "a plan of version 2; this imgsim reads version 1")
    d = _plan(album)
    del d["imgsim_plan"]
    cases["no version"] = (d, "not an imgsim plan")
    d = _plan(album)
    d["groups"][0]["remove"][0]["path"] = "sub/pic0_a.jpg"
    cases["relative"] = (d, "not absolute")
    d = _plan(album)
    d["groups"][0]["keep"]["digest"] = "abc"
    cases["bad digest"] = (d, "digest is not")
    d = _plan(album)
    del d["groups"][0]["keep"]
    cases["no keeper"] = (d, "expected")
    cases["no roots"] = (_plan(album, roots=[]), "no roots")
    return cases


def test_tampered_or_malformed_plans_are_refused_and_touch_nothing(tmp_path, album, capsys):
    cases = _tampered(album, tmp_path)
    before = tree_snapshot(album, tmp_path / "elsewhere")
    q = tmp_path / "q"
    for name, (doc, why) in cases.items():
        plan = _write(tmp_path, doc, f"{name.replace(' ', '_')}.json")
        argv = ["dedup", str(album), "--apply", plan, "--move-to", str(q)]  # the user names the album
        if name == "widened roots":
            why = "outside the folders given on the command line"
        capsys.readouterr()
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("imgsim: error: ") and why in err, (name, err)
        assert not q.exists(), name  # not even the quarantine or a manifest
        assert tree_snapshot(album, tmp_path / "elsewhere") == before, name


def test_changed_files_are_skipped_and_reported_rest_goes_ahead(tmp_path, album, capsys):
    doc = _plan(album)
    with open(album / "sub" / "pic0_a.jpg", "ab") as f:
        f.write(b"edited after the review")
    (album / "pic2.png").write_bytes((album / "pic2.png").read_bytes() + b"x")  # a keeper changed
    before = tree_snapshot(album)
    q = tmp_path / "q"
    assert main(["dedup", str(album), "--apply", _write(tmp_path, doc), "--move-to", str(q)]) == 1
    out, err = capsys.readouterr()
    assert f"skipped {album / 'sub' / 'pic0_a.jpg'}: file changed since the review" in err
    # one count of what was skipped, before the run and at the end (it said "0 skipped" at the end)
    assert "6 files to remove, 3 skipped" in out and "3 files moved to" in out and "; 3 skipped;" in out, out
    assert err.count("its keeper") == 2  # both removals of group 3 skipped with their keeper
    moved = {str(album / "sub" / n) for n in ("pic0_b.jpg", "pic1_a.jpg", "pic1_b.jpg")}
    assert set(tree_snapshot(album)) == set(before) - moved
    assert all(tree_snapshot(album)[p] == before[p] for p in set(before) - moved)


def test_apply_with_hard_links_then_delete(tmp_path, album):
    doc = _plan(album)
    assert main(["dedup", str(album), "--apply", _write(tmp_path, doc), "--move-to", str(tmp_path / "q"),
                 "--link", "hard"]) == 0
    for g in doc["groups"]:
        for e in g["remove"]:
            assert os.path.samefile(e["path"], g["keep"]["path"])
    other = _album(tmp_path / "other")
    doc = _plan(other)
    assert main(["dedup", str(other), "--apply", _write(tmp_path, doc, "p2.json"), "--delete", "--yes",
                 "--manifest", str(tmp_path / "m.jsonl")]) == 0
    assert sorted(os.listdir(other / "sub")) == []
    assert sorted(os.listdir(other)) == ["pic0.png", "pic1.png", "pic2.png", "sub"]


def test_parse_plan_keeps_non_utf8_names_exact(tmp_path):
    name = os.fsdecode(b"/photos/caf\xe9.jpg")
    text = json.dumps({"imgsim_plan": 1, "roots": ["/photos"],
                       "groups": [{"keep": {"path": "/photos/a.jpg", "digest": "0" * 32},
                                   "remove": [{"path": name, "digest": "1" * 32}]}]})
    plan = parse_plan(json.loads(text))
    assert os.fsencode(plan.removals[0].path) == b"/photos/caf\xe9.jpg"
    with pytest.raises(PlanError):
        parse_plan([])


def test_an_interrupted_move_says_how_to_undo_what_was_done(tmp_path, album, capsys, monkeypatch):
    # Ctrl-C part way through the moves: each move is whole and in the manifest, and the one line says how
    # to put them back (it said only "interrupted", the manifest left for the user to find in Q).
    before = tree_snapshot(album)
    ctrl_c_at_action(monkeypatch, 3)
    q = tmp_path / "q"
    assert main(["dedup", str(album), "--apply", _write(tmp_path, _plan(album)), "--move-to", str(q)]) == 130
    err = capsys.readouterr().err
    manifest = next(q.glob("imgsim-manifest-*.jsonl"))
    assert f"undo what was done with: imgsim undo {manifest}" in err and err.endswith("imgsim: interrupted\n"), err
    monkeypatch.undo()
    assert main(["undo", str(manifest)]) == 0
    assert tree_snapshot(album) == before
