"""What a run leaves on disk (issue 11: `DIR.tmp` and `.lock` files were left over): after index, search --out,
explore --out, dedup --json/--csv/--html and hash -o, only the outputs asked for and the catalog's own files exist,
and a write that fails (the output path is a folder, its folder is missing) leaves no temporary file and
names the path the user gave."""
import os
import shutil

import pytest
from PIL import Image

from imgsim_fast.catalog.store import default_catalog_path
from imgsim_fast.io.atomic_write import replacing, write_text
from imgsim_fast.cli.main import main


def _tree(root) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out


def _strays(root) -> list[str]:
    """Temporary and lock files anywhere under root (the catalog, and its lock, which stays on purpose:
    README, "Damaged catalogs", are in the XDG data folder, outside it)."""
    return sorted(p for p in _tree(root) if ".tmp" in os.path.basename(p) or p.endswith(".lock"))


@pytest.fixture()
def small(tmp_path, photos, capsys):
    d = tmp_path / "photos"
    d.mkdir()
    for i, src in enumerate(photos[:6]):
        im = Image.open(src).convert("RGB")
        im.thumbnail((160, 160))
        im.save(d / f"p{i}.jpg", quality=85)
    shutil.copy(d / "p0.jpg", d / "p0 copy.jpg")  # one duplicate group for the dedup reports
    assert main(["index", str(d), "--workers", "1", "--no-progress"]) == 0
    capsys.readouterr()
    return tmp_path, d


def test_completed_runs_leave_only_their_outputs(small, capsys):
    root, d = small
    cat = default_catalog_path(d)
    out = root / "out"
    out.mkdir()
    assert main(["search", str(d / "p1.jpg"), "--catalog", cat, "--out", str(out / "hits.json")]) == 0
    assert main(["explore", "--catalog", cat, "--out", str(out / "map.html"), "--workers", "1"]) == 0
    assert main(["dedup", str(d), "--workers", "1", "--no-progress", "--json", str(out / "g.json"),
                 "--csv", str(out / "g.csv"), "--html", str(out / "review.html")]) == 0
    assert main(["hash", str(d), "--workers", "1", "--no-progress", "--format", "csv", "-o", str(out / "h.csv")]) == 0
    capsys.readouterr()
    assert _strays(root) == []
    assert {p for p in _tree(out) if os.sep not in p} == {"hits.json", "map.html", "map.json", "map_files", "g.json", "g.csv",
                                                          "review.html", "review_files", "h.csv"}
    assert len((out / "h.csv").read_text().splitlines()) == 1 + 7  # header + every file
    # The catalog folder holds the catalog's files and nothing else: no SQLite journal left open either;
    # the photo folder holds the photos and nothing else (the catalog is in the XDG data folder).
    assert set(os.listdir(os.path.dirname(cat))) == {"catalog.sqlite", "catalog.sqlite.lock", "catalog.sqlite.arrays"}
    assert sorted(os.listdir(d)) == sorted(["p0 copy.jpg"] + [f"p{i}.jpg" for i in range(6)])
    assert oct(os.stat(out / "g.json").st_mode & 0o077) == oct(0o666 & ~_umask() & 0o077)  # a plain file's mode


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("argv", [
    ["search", "{d}/p1.jpg", "--catalog", "{cat}", "--out", "{target}"],
    ["explore", "--catalog", "{cat}", "--out", "{target}", "--workers", "1"],
    ["dedup", "{d}", "--workers", "1", "--no-progress", "--json", "{target}"],
    ["dedup", "{d}", "--workers", "1", "--no-progress", "--csv", "{target}"],
    ["dedup", "{d}", "--workers", "1", "--no-progress", "--html", "{target}"],
    ["hash", "{d}", "--workers", "1", "--no-progress", "-o", "{target}"],
], ids=["search", "explore", "dedup-json", "dedup-csv", "dedup-html", "hash"])
def test_an_output_that_is_a_folder_is_refused_leaving_nothing(small, capsys, argv):
    root, d = small
    target = root / "taken"
    target.mkdir()
    (target / "mine.txt").write_text("the user's file\n")
    before = _tree(root)
    args = [a.format(d=d, cat=default_catalog_path(d), target=target) for a in argv]
    assert main(args) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("imgsim: error: "), err
    assert str(target) in err and ".tmp" not in err, err  # names the path given, not a temporary file
    assert _strays(root) == []
    assert _tree(root) == before  # nothing made: no X.tmp, no report_files folder, no half-written report
    assert (target / "mine.txt").read_text() == "the user's file\n"


def test_missing_folder_of_an_output_is_one_line_naming_it(small, capsys):
    root, d = small
    target = root / "no" / "such" / "g.json"
    assert main(["dedup", str(d), "--workers", "1", "--no-progress", "--json", str(target)]) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and str(target) in err and ".tmp" not in err, err
    assert _strays(root) == []


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "r.json"
    write_text(p, "old\n")
    with pytest.raises(RuntimeError):
        with replacing(p) as f:
            f.write("half of the new")
            raise RuntimeError("disk full, say")
    assert p.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["r.json"]
    write_text(p, "new\n")
    assert p.read_text() == "new\n" and os.listdir(tmp_path) == ["r.json"]
