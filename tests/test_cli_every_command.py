"""Every subcommand, discovered from `cli.build_parser`, given bad arguments: a nonexistent path, a bad
number, a bad choice, a missing value, nothing at all. Each must end with exit status 2 and one line on
stderr, never a traceback (issue 15; README "Exit status").

The cases run in one child process (a child per case would cost ~0.3 s each, over 150 cases): it calls
`cli.main` once per case, so an exception escaping main, which is what prints a traceback, is recorded
as one. The issue's own examples also run as separate commands, as a user types them.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from imgsim_fast.cli.main import build_parser, main

# Options whose value names an existing input; given a nonexistent path they must be refused with 2.
INPUT_PATHS = {"--catalog", "--like", "--apply", "--reference", "--sidecar-map", "--model", "--embed", "--allow-root"}
# What makes an input option used, where the base command line alone would ignore it.
USED_WITH = {("search", "--model"): ["--method", "clip"], ("explore", "--model"): ["--features", "embedding"]}
# Options naming a file to write (index --catalog creates one): only their missing value is checked here.
CREATES = {("index", "--catalog"), ("dedup", "--catalog"), ("serve", "--catalog"), ("serve", "--storage")}
OUTPUTS = {"--output", "--json", "--csv", "--html", "--move-to", "--manifest", "--sheet", "--out",
           "--json-out"}
# Free-text values (tags, descriptions, lists of names): garbage must not crash; it may match nothing.
FREE_TEXT = {"--kinds", "--keep", "--tag", "--any-tag", "--text", "--contains", "--camera", "--where", "--kind",
             "--label", "--host"}

_DRIVER = r"""
import contextlib, io, json, sys, traceback
from imgsim_fast.cli.main import main
out = []
for argv in json.load(sys.stdin):
    err, std = io.StringIO(), io.StringIO()
    tb = None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
        except BaseException:
            rc, tb = None, traceback.format_exc()
    out.append({"argv": argv, "rc": rc, "stderr": err.getvalue(), "traceback": tb})
json.dump(out, sys.__stdout__)
"""


def _subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def _value_options(sp):
    for a in sp._actions:
        if a.option_strings and a.nargs != 0 and not isinstance(a, argparse._HelpAction):
            yield a


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A folder of two pictures, its catalog, and a base command line per subcommand that succeeds."""
    d = tmp_path_factory.mktemp("cli")
    pics = d / "pics"
    pics.mkdir()
    rng = np.random.default_rng(3)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((64, 48)).save(pics / f"{i}.png")
    cat = str(d / "cat.sqlite")
    assert main(["index", str(pics), "--catalog", cat, "--workers", "1", "--no-progress"]) == 0
    missing = str(d / "missing" / "x.jpg")
    base = {
        "capabilities": ["--short"],
        "hash": [str(pics), "--workers", "1", "--no-progress"],
        "dedup": [str(pics), "--method", "exact", "--workers", "1", "--no-progress"],
        "undo": [missing],  # no valid manifest to start from: every undo case is bad usage
        "index": [str(pics), "--catalog", str(d / "other.sqlite"), "--workers", "1", "--no-progress"],
        "query": ["--catalog", cat],
        "search": [str(pics / "0.png"), "--catalog", cat],
        "explore": ["--catalog", cat, "--k", "1", "--features", "phash", "--out", str(d / "r.html"),
                    "--workers", "1"],
        # serve's base must return: listing the keys (serve itself would run until stopped).
        "serve": ["keys", "list", "--catalog", cat],
        # a local Ray (started once, ~10 s): the nested subcommands' own options are tested in test_cluster.py
        "cluster": ["index", str(pics), "--out", str(d / "features"), "--workers", "1"],
    }
    return d, missing, base


def _cases(missing, base):
    """(argv, expected exit status or None for 'any of 0 and 2') for every subcommand."""
    subs = _subcommands()
    assert set(subs) == set(base), "a new subcommand needs a base command line in this test"
    cases = []
    for name, sp in subs.items():
        positionals = [a for a in sp._actions if not a.option_strings]
        if name != "capabilities":
            cases.append(([name], 2))  # nothing given: a missing positional, query or catalog
        if positionals:
            cases.append(([name, missing], 2))  # a nonexistent path where a file or folder goes
        for a in _value_options(sp):
            opt = a.option_strings[-1]
            cases.append(([name, *base[name], opt], 2))  # the value missing
            if a.choices is not None:
                cases.append(([name, *base[name], opt, "bogus"], 2))
            elif a.type not in (None, str):
                cases.append(([name, *base[name], opt, "x/1"], 2))  # not a number, date or extension list
            elif opt in INPUT_PATHS and (name, opt) not in CREATES:
                cases.append(([name, *base[name], *USED_WITH.get((name, opt), []), opt, missing], 2))
            elif opt in FREE_TEXT:
                cases.append(([name, *base[name], opt, "\x1b[2J/nonexistent/.."], None))
            else:
                assert opt in OUTPUTS or (name, opt) in CREATES, f"{name} {opt}: classify it in this test (input, output, free text)"
    return cases


def test_every_subcommand_refuses_bad_arguments_in_one_line(setup):
    d, missing, base = setup
    cases = _cases(missing, base)
    argvs = [argv for argv, _ in cases]
    # The bases succeed (undo has none), so a refused case is refused for the option it varies.
    argvs += [[name, *args] for name, args in base.items() if name != "undo"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    p = subprocess.run([sys.executable, "-c", _DRIVER], input=json.dumps(argvs), capture_output=True,
                       text=True, cwd=str(d), env=env, timeout=300)  # cwd: no catalog here or above
    assert p.returncode == 0, p.stderr[-3000:]
    results = json.loads(p.stdout)
    bases = results[len(cases):]
    for r in bases:
        assert r["rc"] == 0 and r["traceback"] is None, r
    bad = []
    for (argv, want), r in zip(cases, results):
        ok = r["traceback"] is None and "Traceback" not in r["stderr"]
        ok = ok and (r["rc"] == want if want is not None else r["rc"] in (0, 2))
        if r["rc"] == 2:
            ok = ok and r["stderr"].count("\n") == 1 and r["stderr"].startswith("imgsim")
        if not ok:
            bad.append(r)
    assert not bad, json.dumps([{k: (v if k != "traceback" else (v or "")[-600:]) for k, v in r.items()} for r in bad], indent=1)
    assert len(cases) > 100


def _imgsim(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "imgsim_fast", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


@pytest.mark.parametrize("args,needle", [
    (["dedup", "/nonexistent"], "/nonexistent: no such file or folder"),
    (["hash", "/nonexistent"], "/nonexistent: no such file or folder"),
    (["query", "--like", "missing.jpg"], "missing.jpg: file not found"),
    (["query", "--after", "2020-13-45"], "'2020-13-45' is not an ISO date"),
    (["query", "--where", "width=abc"], "width holds numbers; 'abc' is not one"),  # matched nothing, exit 0
    # `search` with no example lists the catalog (what `query` without --like did); with both, it says so.
    (["search", "x.jpg", "--text", "a car"], "give example images (or a folder / list file of them) or --text, not both"),
    (["undo", "/nonexistent"], "/nonexistent: no such file or directory"),
])
def test_issue_examples_as_typed(setup, args, needle):
    d, _, base = setup
    if args[0] in ("query", "search"):
        args = args + ["--catalog", base["query"][1]]
    p = _imgsim(*args, cwd=str(d))
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1 and needle in p.stderr, p.stderr


def test_exit_status_1_when_some_files_fail_2_when_none_is_readable(tmp_path, capsys):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    opts = ["--workers", "1", "--no-progress"]
    assert main(["dedup", str(tmp_path), "--method", "exact", *opts]) == 2  # nothing readable
    assert "bad.jpg" in capsys.readouterr().err
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "ok.png")
    for cmd in (["dedup", str(tmp_path), "--method", "exact"], ["hash", str(tmp_path)]):
        assert main(cmd + opts) == 1
        err = capsys.readouterr().err
        assert "skipped" in err and "bad.jpg" in err, err
    (tmp_path / "bad.jpg").unlink()
    assert main(["dedup", str(tmp_path), "--method", "exact", *opts]) == 0


def test_dedup_refuses_reports_that_would_overwrite_each_other_or_a_foreign_folder_before_the_scan(
        tmp_path, capsys):
    # Two reports naming one file (the later one won, both said "wrote"), and a review page whose thumbnail
    # folder holds files imgsim did not make (refused, but only after the scan and the printed groups).
    (tmp_path / "mine_files").mkdir()
    (tmp_path / "mine_files" / "holiday.txt").write_text("not imgsim's")
    for opts, needle in ((["--json", "a.json", "--csv", "a.json"], "--json and --csv both name a.json"),
                         (["--html", "r.html", "--out", "r.html"], "--out and --html both name r.html"),
                         (["--html", str(tmp_path / "mine.html")], "mine_files exists and was not made by imgsim")):
        assert main(["dedup", str(tmp_path), "--method", "exact", "--no-progress", *opts]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and needle in err, (out, err)
    assert (tmp_path / "mine_files" / "holiday.txt").read_text() == "not imgsim's"
