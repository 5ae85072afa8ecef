"""Issue 11: a folder of real photos salted with a FIFO, a socket, a symlink to /dev/zero, and photos whose
names are not UTF-8 or hold a newline or a terminal escape. Every command must finish (each runs under a
timeout: the old code blocked forever on the FIFO), report the hostile entries per file, and write every
good file into its outputs."""
import csv
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
from PIL import Image

from imgsim_fast.catalog.store import default_catalog_path
from imgsim_fast.cli import main as cli_main
from imgsim_fast.io.names import display_path, path_text

# Name stems; each copy keeps its photo's extension.
NON_UTF8 = b"\xff\xfe"
NEWLINE = "new\nline"
ESCAPE = "esc\x1b[31mred"
HOSTILE = {"pipe.jpg", "sock.png", "zero.jpg"}


@pytest.fixture(scope="session")
def small_photos(photos, tmp_path_factory):
    """Six real photos scaled to 480 px wide (same format), so each command below runs in seconds."""
    if len(photos) < 6:
        pytest.skip(f"need 6 real photos, found {len(photos)}")
    d = tmp_path_factory.mktemp("small-photos")
    out = []
    for i, p in enumerate(photos[:: max(1, len(photos) // 6)][:6]):
        with Image.open(p) as im:
            im = im.convert("RGB")
            im.thumbnail((480, 480))
            dst = str(d / f"{i}{os.path.splitext(p)[1].lower()}")
            im.save(dst)
        out.append(dst)
    return out


@pytest.fixture
def salted(tmp_path, small_photos):
    """(folder, good paths as str) : 6 real photos (3 with hostile names) and 3 non-regular entries."""
    d = tmp_path / "imgs"
    d.mkdir()
    src = small_photos
    stems = [os.fsencode(n) for n in ("a", "b", "c", NEWLINE, ESCAPE)] + [NON_UTF8]
    good = []
    for s, stem in zip(src, stems):
        # bytes: the name need not be UTF-8
        dst = os.path.join(os.fsencode(str(d)), stem + os.fsencode(os.path.splitext(s)[1]))
        shutil.copyfile(s, dst)
        good.append(os.fsdecode(dst))
    os.mkfifo(d / "pipe.jpg")
    os.symlink("/dev/zero", d / "zero.jpg")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(d / "sock.png"))
    yield d, sorted(good)
    sock.close()


def _imgsim(*args, timeout=120):
    # A subprocess with a timeout: a hang is a failure, not a stuck test run.
    return subprocess.run([sys.executable, "-m", "imgsim_fast", *args], capture_output=True, timeout=timeout)


def test_names_rules():
    weird = os.fsdecode(b"x\xff\n\x1b[2J\xc2\x9b.jpg")
    assert path_text(weird) == "x\\xff\n\x1b[2J\x9b.jpg"  # valid Unicode, the control characters kept
    assert display_path(weird) == "x\\xff\\n\\x1b[2J\\x9b.jpg"  # ... and escaped for a terminal
    assert display_path("été/photo 1.jpg") == "été/photo 1.jpg"  # ordinary names untouched
    path_text(weird).encode("utf-8")  # would raise on a lone surrogate


def test_hash_csv_and_json_complete_with_hostile_entries(salted, tmp_path):
    d, good = salted
    out = tmp_path / "h.csv"
    r = _imgsim("hash", str(d), "--format", "csv", "-o", str(out), "--workers", "2", "--no-progress")
    assert r.returncode == 1, r.stderr  # README "Exit status": 1, some files failed (and are listed)
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "phash"]
    assert sorted(row[0] for row in rows[1:]) == sorted(path_text(p) for p in good)
    assert all(len(row[1]) == 16 for row in rows[1:])
    # Every hostile entry is one stderr line of its own; no raw escape or extra line reaches the terminal.
    err = r.stderr.decode("utf-8")
    assert "\x1b" not in err
    lines = err.splitlines()
    assert len(lines) == 3 and all(ln.startswith("imgsim: skipped ") for ln in lines)
    assert {os.path.basename(ln.split(": ")[1]) for ln in lines} == HOSTILE

    r = _imgsim("hash", str(d), "--workers", "1", "--no-progress")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert sorted(f["path"] for f in doc["files"]) == sorted(path_text(p) for p in good)
    assert {(os.path.basename(e["path"]), e["kind"]) for e in doc["errors"]} == {
        (n, "not_regular_file") for n in HOSTILE}


def test_dedup_finishes_and_reports_non_regular_files(salted):
    d, good = salted
    r = _imgsim("dedup", str(d), "--method", "phash", "--workers", "2", "--no-progress")
    assert r.returncode == 1, r.stderr
    assert f"{len(good)} images scanned, 3 skipped" in r.stdout.decode("utf-8")
    err = r.stderr.decode("utf-8")
    assert "\x1b" not in err
    assert sum("not a regular file" in ln for ln in err.splitlines()) == 3


def test_search_batch_out_and_sheets_with_hostile_query_names(salted, tmp_path, monkeypatch):
    d, good = salted
    lib = tmp_path / "lib"
    lib.mkdir()
    for p in good:  # the catalog holds the same photos under plain names
        shutil.copyfile(p, lib / f"{good.index(p)}{os.path.splitext(p)[1]}")
    monkeypatch.chdir(tmp_path)
    assert cli_main(["index", str(lib), "--no-progress"]) == 0
    out, sheets = tmp_path / "res.json", tmp_path / "sheets"
    assert cli_main(["search", str(d), "--catalog", default_catalog_path(lib), "--top", "3",
                     "--out", str(out), "--sheet", str(sheets)]) == 0
    res = json.loads(out.read_text(encoding="utf-8"))
    assert sorted(r["query"] for r in res) == sorted(path_text(p) for p in good)
    for r in res:  # each query is a copy of a catalog photo: found at distance 0
        assert r["error"] is None and r["hits"][0]["distance"] == 0
    assert len(os.listdir(sheets)) == len(good)
