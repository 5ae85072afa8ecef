"""Catalogs outside the photo folder (issue 15): `imgsim index DIR` puts the catalog in the XDG data folder
(tests/conftest.py points XDG_DATA_HOME at a temporary one), the readers find it from DIR or below, and an
in-folder catalog of an older version is still found, used and named once."""
import os

import numpy as np
import pytest
from PIL import Image

from imgsim_fast.catalog.store import default_catalog_path
from imgsim_fast.cli.main import main
from imgsim_fast.io.data_dirs import collection_dir, collection_name, data_home


def _folder(path, n=3):
    path.mkdir(parents=True)
    rng = np.random.default_rng(len(str(path)))
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(path / f"{i}.png")
    return path


def test_data_home_follows_xdg_and_ignores_a_relative_one(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert data_home() == os.path.join(str(tmp_path), "imgsim")
    monkeypatch.setenv("XDG_DATA_HOME", "relative/dir")  # the spec: a relative path is to be ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_home() == os.path.join(str(tmp_path), "home", ".local", "share", "imgsim")
    monkeypatch.delenv("XDG_DATA_HOME")
    assert data_home() == os.path.join(str(tmp_path), "home", ".local", "share", "imgsim")


def test_collection_names_are_readable_distinct_and_plain(tmp_path):
    a, b = tmp_path / "x" / "photos", tmp_path / "y" / "photos"
    assert collection_name(a).startswith("photos-") and collection_name(a) != collection_name(b)
    assert collection_name(a) == collection_name(str(a) + "/")  # one folder, one name
    odd = collection_name(tmp_path / "Été 2024: ../\nweird")
    assert "/" not in odd and "\n" not in odd and ":" not in odd and not odd.startswith(".")
    assert collection_name("/").startswith("root-")


def test_index_writes_nothing_in_the_folder_and_readers_find_it(tmp_path, xdg_data_home, monkeypatch, capsys):
    d = _folder(tmp_path / "photos")
    before = sorted(os.listdir(d))
    assert main(["index", str(d), "--workers", "1", "--no-progress"]) == 0
    cat = default_catalog_path(d)
    assert cat == os.path.join(collection_dir(d), "catalog.sqlite") and cat.startswith(str(xdg_data_home))
    assert os.path.exists(cat) and sorted(os.listdir(d)) == before
    (d / "sub").mkdir()
    monkeypatch.chdir(d / "sub")  # a reader below the folder finds its catalog
    capsys.readouterr()
    assert main(["query"]) == 0
    out, err = capsys.readouterr()
    assert sorted(os.path.basename(p) for p in out.split()) == before and err == ""


def test_search_beside_the_folder_finds_the_catalog_of_its_examples(tmp_path, xdg_data_home, monkeypatch, capsys):
    # `imgsim index photos/` then `imgsim search photos/0.png`, both run from the folder holding photos/: the
    # catalog is photos/'s, not the working folder's (user trial: "no catalog found here or above").
    d = _folder(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    assert main(["index", "photos", "--workers", "1", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["search", os.path.join("photos", "0.png"), "--top", "1", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "0.png" in out and err == "", (out, err)
    monkeypatch.chdir(d)  # from inside, the folder's own catalog, as before
    assert main(["search", "0.png", "--top", "1", "--no-progress"]) == 0


def test_an_older_in_folder_catalog_is_used_and_named_once(tmp_path, monkeypatch, capsys):
    d = _folder(tmp_path / "old")
    legacy = d / ".imgsim" / "catalog.sqlite"
    assert main(["index", str(d), "--catalog", str(legacy), "--workers", "1", "--no-progress"]) == 0
    assert default_catalog_path(d) == str(legacy)
    capsys.readouterr()
    assert main(["index", str(d), "--workers", "1", "--no-progress"]) == 0  # no second catalog
    _, err = capsys.readouterr()
    assert "older version" in err and str(legacy) in err
    assert not os.path.exists(collection_dir(d))
    monkeypatch.chdir(d)
    assert main(["query"]) == 0 and main(["query"]) == 0
    _, err = capsys.readouterr()
    assert err.count("older version") <= 1  # once per run (this process already said it for index)


@pytest.mark.parametrize("argv", [["query"], ["search"], ["explore"]])
def test_no_catalog_anywhere_is_one_line(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    assert main(argv + ["--no-progress"] if argv != ["query"] else argv) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and "no catalog found" in err
