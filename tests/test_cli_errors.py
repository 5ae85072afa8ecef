"""Bad arguments and unusable catalogs: one line on stderr, a documented exit status (README, "Bad
input"), no traceback, and nothing created where nothing should be."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from imgsim_fast.catalog.store import Catalog
from imgsim_fast.cli.main import main


def _image(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((64, 48)).save(path)
    return path


@pytest.fixture()
def indexed(tmp_path, capsys):
    root = tmp_path / "p"
    root.mkdir()
    for i in range(4):
        _image(str(root / f"img{i}.png"), i)
    cat = str(tmp_path / "c.sqlite")
    assert main(["index", str(root), "--catalog", cat, "--workers", "1", "--no-progress"]) == 0
    capsys.readouterr()
    return str(root), cat


def _one_line_error(capsys, *needles):
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert err.count("\n") == 1, err
    for n in needles:
        assert n in err, err
    return err


def _usage_error(capsys, argv, *needles):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return _one_line_error(capsys, *needles)


@pytest.mark.parametrize("argv,needle", [
    (["search", "x.jpg", "--top", "-5"], "--top: must be at least 1"),
    (["query", "--top", "0"], "--top: must be at least 1"),
    (["explore", "--outliers", "-5"], "--outliers: must be 0 or more"),
    (["explore", "--k", "0"], "--k: must be at least 1"),
    (["dedup", "d", "--threshold", "1000"], "--threshold: must be a bit count from 0 to 64"),
    (["dedup", "d", "--flip-threshold", "-1"], "--flip-threshold: must be a bit count from 0 to 64"),
    (["dedup", "d", "--min-cosine", "nan"], "--min-cosine: must be a cosine from -1 to 1"),
    (["dedup", "d", "--min-cosine", "1.5"], "--min-cosine: must be a cosine from -1 to 1"),
    (["dedup", "d", "--workers", "0"], "--workers: must be at least 1"),
    (["hash", "d", "--hash-size", "9"], "--hash-size: invalid choice"),
    (["index", "d", "--batch-size", "x"], "--batch-size: 'x' is not a whole number"),
    (["query", "--min-width", "-1"], "--min-width: must be 0 or more"),
    (["query", "--after", "last week"], "--after: 'last week' is not an ISO date"),
    (["search", "q.jpg", "--before", "2020/01/01"], "--before: '2020/01/01' is not an ISO date"),
    (["nosuchcommand"], "invalid choice"),
])
def test_bad_arguments_are_one_line_usage_errors(argv, needle, capsys):
    err = _usage_error(capsys, argv, needle)
    assert err.startswith("imgsim")


@pytest.mark.parametrize("argv,needles", [
    (["dedup", "d", "--metod", "phash"], ("imgsim dedup: error: unrecognized arguments: --metod phash; did you mean "
                                          "--method?", "(see `imgsim dedup --help`)")),
    (["dedup", "d", "--thresold=3"], ("--thresold=3; did you mean --threshold?",)),
    (["search", "q.jpg", "--zzzzzz"], ("imgsim search: error: unrecognized arguments: --zzzzzz (see",)),
])
def test_an_unknown_option_is_refused_by_its_command_with_the_nearest_one_named(argv, needles, capsys):
    _usage_error(capsys, argv, *needles)


def test_index_of_a_missing_folder_creates_nothing(tmp_path, capsys):
    assert main(["index", str(tmp_path / "typo")]) == 2
    _one_line_error(capsys, "no such file or folder")
    assert os.listdir(tmp_path) == []  # no .imgsim/ in the parent folder


def test_unknown_model_fails_before_any_work(tmp_path, capsys):
    root = tmp_path / "p"
    root.mkdir()
    _image(str(root / "a.png"), 1)
    assert main(["index", str(root), "--embed", "nosuchmodel", "--no-progress"]) == 2
    _one_line_error(capsys, "unknown model 'nosuchmodel'")
    assert not (root / ".imgsim").exists()


def test_missing_garbage_folder_and_too_new_catalogs(indexed, tmp_path, capsys):
    root, cat = indexed
    q = os.path.join(root, "img0.png")
    assert main(["search", q, "--catalog", str(tmp_path / "none.sqlite")]) == 2
    _one_line_error(capsys, "no catalog at")

    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    for argv in (["search", q], ["query"], ["explore"], ["index", root]):
        assert main(argv + ["--catalog", str(garbage)]) == 2
        _one_line_error(capsys, "is damaged", "imgsim index --repair")

    folder = tmp_path / "folder.sqlite"
    folder.mkdir()
    assert main(["query", "--catalog", str(folder)]) == 2
    _one_line_error(capsys, "cannot read the catalog", "a folder")

    with Catalog(cat, write=True) as w, w.transaction():
        w.conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    for argv in (["search", q], ["index", root]):
        assert main(argv + ["--catalog", cat]) == 2
        _one_line_error(capsys, "schema version 999")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_catalog(indexed, capsys):
    root, cat = indexed
    os.chmod(cat, 0)
    try:
        assert main(["query", "--catalog", cat]) == 2
        _one_line_error(capsys, "permission denied")
    finally:
        os.chmod(cat, 0o644)


def test_second_concurrent_index_is_refused(indexed, capsys):
    root, cat = indexed
    with Catalog(cat, write=True):
        assert main(["index", root, "--catalog", cat, "--no-progress"]) == 2
        _one_line_error(capsys, "being written by another `imgsim index`")
        assert main(["query", "--catalog", cat]) == 0  # readers go on meanwhile


def test_index_exit_status_is_1_when_files_fail(tmp_path, capsys):
    root = tmp_path / "p"
    root.mkdir()
    _image(str(root / "a.png"), 1)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    assert main(["index", str(root), "--workers", "1", "--no-progress"]) == 1
    capsys.readouterr()
    assert main(["index", str(root), "--workers", "1", "--no-progress"]) == 0  # nothing failed this run


def test_closed_pipe_exits_141_quietly(indexed):
    root, cat = indexed
    p = subprocess.Popen([sys.executable, "-m", "imgsim_fast", "query", "--catalog", cat],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # like `| head -0`: closed before anything is written
    err = p.stderr.read().decode()
    p.stderr.close()
    assert p.wait(timeout=120) == 141
    assert err == ""


def test_a_quarantine_that_is_a_file_is_refused_before_the_scan(indexed, tmp_path, capsys):
    root, _ = indexed
    (tmp_path / "afile").write_text("x")
    assert main(["dedup", root, "--move-to", str(tmp_path / "afile"), "--no-progress"]) == 2
    out = capsys.readouterr().out
    assert out == ""  # refused before the scan: no groups printed, then the error (as it was)


def test_a_missing_example_is_named_as_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no catalog here or above: the typo is the likelier mistake
    assert main(["search", str(tmp_path / "nosuch.jpg")]) == 2
    _one_line_error(capsys, "nosuch.jpg: no such file or folder")


def test_index_and_search_say_where_they_wrote(indexed, tmp_path, capsys):
    root, cat = indexed
    assert main(["index", root, "--catalog", cat, "--no-progress"]) == 0
    assert f"catalog {cat}" in capsys.readouterr().out
    query = os.path.join(root, "img0.png")
    assert main(["search", query, "--catalog", cat, "--out", str(tmp_path / "h.csv")]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'h.csv'}\n"
