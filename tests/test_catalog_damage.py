"""A damaged catalog is detected, never trusted (issue 11): every file of a catalog is truncated, flipped,
zeroed or deleted in turn; search and query then either fail with one line naming `imgsim index
--repair`, or answer exactly what a fresh index answers, and after `--repair` they always do."""
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from imgsim_fast.catalog.store import Catalog, CatalogDamaged, hash_array_name
from imgsim_fast.cli.main import main
from imgsim_fast.catalog.indexer import index

PHASH = hash_array_name("phash")


@pytest.fixture(scope="module")
def small_photos(photos, tmp_path_factory):
    """Six real photos at 128 px wide (JPEG and PNG), plus a byte-identical copy of one (copies share
    array rows, so repairing a row must recompute both files)."""
    d = tmp_path_factory.mktemp("small-photos")
    out = []
    for i, src in enumerate(photos[:6]):
        with Image.open(src) as im:
            im = im.convert("RGB")
            im.thumbnail((128, 128))
            p = str(d / f"photo{i}.{'jpg' if i % 2 else 'png'}")
            im.save(p, quality=90) if p.endswith(".jpg") else im.save(p)
            out.append(p)
    shutil.copyfile(out[0], str(d / "copy-of-photo0.png"))
    return str(d)


def _index_args(root, cat, clip):
    return ["index", root, "--catalog", cat, "--embed", clip, "--workers", "1", "--no-progress"]


@pytest.fixture(scope="module")
def baseline(small_photos, tiny_clip, tmp_path_factory):
    """A freshly indexed catalog (pHash + CLIP embeddings) and the answers it gives."""
    cat = str(tmp_path_factory.mktemp("baseline") / "catalog.sqlite")
    assert main(_index_args(small_photos, cat, tiny_clip)) == 0
    with Catalog(cat) as c:
        assert len(c.arrays()) == 2 and PHASH in c.arrays()
        dump = c.dump()
    return cat, dump


def _answers(cat, root, clip, capsys):
    """(exit status, stdout, stderr) of three read commands; stops at the first that fails."""
    q = os.path.join(root, "photo1.jpg")
    out = []
    for args in (["search", q, "--top", "4", "--json"],
                 ["search", q, "--method", "clip", "--model", clip, "--top", "4", "--json"],
                 ["query", "--like", q, "--top", "4", "--json"]):
        rc = main(args + ["--catalog", cat])
        o, e = capsys.readouterr()
        assert "Traceback" not in o + e
        if rc != 0:
            return rc, None, e
        doc = json.loads(o)
        for h in doc.get("hits", []) if isinstance(doc, dict) else []:
            h.pop("file_id")  # row ids differ between two catalogs of the same files
        out.append(doc)
    return 0, out, ""


def _copy_catalog(src, dst_dir):
    os.makedirs(dst_dir)
    for name in os.listdir(os.path.dirname(src)):
        s = os.path.join(os.path.dirname(src), name)
        (shutil.copytree if os.path.isdir(s) else shutil.copyfile)(s, os.path.join(dst_dir, name))
    return os.path.join(dst_dir, os.path.basename(src))


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _damage(path, how, where=None):
    data = _read(path) if os.path.exists(path) else b""
    if how == "delete":
        os.remove(path)
    elif how == "truncate":
        with open(path, "wb") as f:
            f.write(data[:len(data) // 2])
    elif how == "zero":
        with open(path, "wb") as f:
            f.write(bytes(len(data)))
    elif how == "flip":
        off = len(data) // 2 if where is None else where
        if off >= len(data):
            pytest.skip(f"{os.path.basename(path)} has no byte {off}")
        b = bytearray(data)
        b[off] ^= 0x10
        with open(path, "wb") as f:
            f.write(bytes(b))
    elif how == "append":
        with open(path, "ab") as f:
            f.write(b"\x5a" * 4096)


def _sqlite_offset(cat, what):
    """Byte offset inside catalog.sqlite of a path string, or of a header field."""
    data = _read(cat)
    if what == "path":
        return data.index(b"photo3.jpg") + 5
    if what == "header":
        return 18  # file format write version
    return None


KINDS = {"sqlite": "catalog.sqlite", "lock": "catalog.sqlite.lock",
         "phash": f"catalog.sqlite.arrays/{PHASH}.bin", "embed": "EMBED"}
CASES = ([(k, h, None) for k in ("sqlite", "phash", "embed") for h in ("truncate", "flip", "zero", "delete")]
         + [("lock", "delete", None), ("lock", "append", None), ("phash", "append", None), ("embed", "append", None),
            ("sqlite", "flip", "path"), ("sqlite", "flip", "header"), ("arrays-dir", "delete", None)])


@pytest.mark.parametrize("kind,how,where", CASES, ids=[f"{k}-{h}{'-' + w if w else ''}" for k, h, w in CASES])
def test_damaged_catalog_errors_or_answers_right_and_repair_restores(kind, how, where, baseline, small_photos,
                                                                     tiny_clip, tmp_path, capsys):
    cat0, dump0 = baseline
    rc, expected, _ = _answers(cat0, small_photos, tiny_clip, capsys)
    assert rc == 0
    cat = _copy_catalog(cat0, str(tmp_path / "cat"))
    if kind == "arrays-dir":
        shutil.rmtree(cat + ".arrays")
    else:
        rel = KINDS[kind]
        if rel == "EMBED":
            rel = "catalog.sqlite.arrays/" + next(n for n in os.listdir(cat + ".arrays") if n.startswith("embed-"))
        target = os.path.join(os.path.dirname(cat), rel)
        _damage(target, how, _sqlite_offset(cat, where) if where else None)

    rc, got, err = _answers(cat, small_photos, tiny_clip, capsys)
    if rc == 0:
        assert got == expected, "a damaged catalog answered differently from a fresh one, without an error"
    else:
        assert rc == 2
        assert err.count("\n") == 1 and err.startswith("imgsim: error: "), err
        if not (kind == "sqlite" and how == "delete"):  # no catalog left: "run `imgsim index DIR` first"
            assert "imgsim index --repair" in err, err

    # A plain `index` never builds on damage; --repair brings back a fresh index's answers.
    rc = main(["index", small_photos, "--catalog", cat, "--workers", "1", "--no-progress"])
    o, e = capsys.readouterr()
    assert "Traceback" not in o + e
    assert rc in (0, 2)
    args = ["index", small_photos, "--catalog", cat, "--workers", "1", "--no-progress", "--repair"]
    if kind == "sqlite" and how != "delete":
        args += ["--embed", tiny_clip]  # a lost database cannot say which models it held
    assert main(args) == 0
    o, e = capsys.readouterr()
    assert "Traceback" not in o + e
    rc, got, err = _answers(cat, small_photos, tiny_clip, capsys)
    if kind == "sqlite" and how == "delete":
        assert rc == 2  # a deleted database was re-created by `index` without --embed: no CLIP embeddings
        assert main(_index_args(small_photos, cat, tiny_clip)) == 0
        capsys.readouterr()
        rc, got, err = _answers(cat, small_photos, tiny_clip, capsys)
    assert (rc, err) == (0, "")
    assert got == expected
    with Catalog(cat) as c:
        _assert_same_catalog(c.dump(), dump0)
        assert c.verify() == []


def _assert_same_catalog(got, want):
    """Equal dumps, except that embeddings may differ in the last float bits: a file embedded in another
    batch composition (a repair re-embeds only some files) goes through other BLAS blockings."""
    assert got["walk_errors"] == want["walk_errors"]
    assert got["files"].keys() == want["files"].keys()
    for p, w in want["files"].items():
        g = dict(got["files"][p])
        gv, wv = g.pop("vectors"), dict(w)
        wv = wv.pop("vectors")
        assert g == {k: v for k, v in w.items() if k != "vectors"}, p
        assert gv.keys() == wv.keys(), p
        for name in wv:
            if name.startswith("embed-"):
                np.testing.assert_allclose(gv[name], wv[name], atol=1e-5)
            else:
                assert gv[name] == wv[name], (p, name)


def test_flipped_row_is_recomputed_alone(small_photos, tmp_path):
    """Repair re-decodes only the files whose rows lie in a damaged block (here: all of them, one
    block), and a plain index run refuses, naming the repair, instead of reporting them unchanged."""
    cat = str(tmp_path / "c.sqlite")
    s = index(small_photos, cat)
    assert s.added == 6 and s.copied == 1
    path = os.path.join(cat + ".arrays", PHASH + ".bin")
    with open(path, "r+b") as f:
        f.seek(3 * 8 + 2)
        b = f.read(1)
        f.seek(3 * 8 + 2)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(CatalogDamaged, match="imgsim index --repair"):
        index(small_photos, cat)
    with Catalog(cat) as r, pytest.raises(CatalogDamaged, match=r"1 of 1 blocks"):
        r.vectors(PHASH)
    s = index(small_photos, cat, repair=True)
    assert s.repaired == 7 and s.backfilled == 7 and s.decoded == 7 and s.unchanged == 0
    fresh = str(tmp_path / "fresh.sqlite")
    index(small_photos, fresh)
    with Catalog(cat) as a, Catalog(fresh) as b:
        assert a.dump() == b.dump()
    assert index(small_photos, cat, repair=True).repaired == 0


def test_many_blocks_only_damaged_block_recomputed(tmp_path):
    """With several blocks, a flipped byte costs only its block's rows."""
    from imgsim_fast.catalog import store as catalog_mod

    cat = str(tmp_path / "c.sqlite")
    rows = catalog_mod.BLOCK_BYTES // 8  # 64-bit codes per block
    n = 2 * rows + 5
    with Catalog(cat, write=True) as c:
        c.ensure_array(PHASH, np.uint64, 1)
        data = np.arange(1, n + 1, dtype=np.uint64).reshape(-1, 1)
        for s in range(0, n, 3000):  # several transactions, blocks filled across them
            with c.transaction():
                c.append(PHASH, data[s:s + 3000])
        with c.transaction():
            c.conn.executemany("INSERT INTO files(path, size, mtime_ns, dev, inode) VALUES (?, 0, 0, 0, 0)",
                               [(f"/x/{i}",) for i in range(n)])
            c.conn.executemany("INSERT INTO vectors(file_id, array, row) VALUES (?, ?, ?)",
                               [(i + 1, PHASH, i) for i in range(n)])
        assert c.verify() == []
    with Catalog(cat) as r:
        assert np.array_equal(r.array(PHASH), data)
    with open(os.path.join(cat + ".arrays", PHASH + ".bin"), "r+b") as f:
        f.seek((rows + 10) * 8)
        f.write(b"\xff")
    with Catalog(cat, write=True) as c:
        damage = c.verify()
        assert [(d.array, d.blocks) for d in damage] == [(PHASH, [1])]
        assert c.repair_arrays(damage) == {PHASH: rows}
        assert c.verify() == []
        ids, vrows, codes = c.vectors(PHASH)
        assert len(ids) == n - rows and not ((vrows >= rows) & (vrows < 2 * rows)).any()
        assert np.array_equal(codes[:, 0], vrows.astype(np.uint64) + 1)  # the other rows kept their values


def test_nan_embedding_is_a_per_file_failure_not_stored(small_photos, tiny_clip, tmp_path, capsys):
    """A model that returns NaN: each file is recorded as failed (exit 1), nothing is stored."""
    import torch
    import transformers

    bad = str(tmp_path / "nan-clip")
    shutil.copytree(tiny_clip, bad)
    m = transformers.CLIPModel.from_pretrained(bad)
    with torch.no_grad():
        m.visual_projection.weight[0, 0] = float("nan")
    m.save_pretrained(bad)
    cat = str(tmp_path / "c.sqlite")
    assert main(["index", small_photos, "--catalog", cat, "--embed", bad, "--workers", "1", "--no-progress"]) == 1
    capsys.readouterr()
    with Catalog(cat) as c:
        errs = {r.error for r in c.files()}
        assert errs == {"embedding failed: the model returned NaN or infinity"}
        assert all(a["length"] == 0 for n, a in c.arrays().items() if n.startswith("embed-"))


def test_database_damage_found_on_open_and_repair_moves_it_aside(small_photos, tmp_path):
    cat = str(tmp_path / "c.sqlite")
    index(small_photos, cat)
    data = bytearray(_read(cat))
    off = data.index(b"photo2.png")
    data[off] ^= 0x20  # 'p' -> 'P': the path no longer matches its UNIQUE index entry
    with open(cat, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(CatalogDamaged, match="imgsim index --repair"):
        Catalog(cat)
    s = index(small_photos, cat, repair=True)
    assert s.added == 6 and s.copied == 1
    assert any("moved it to" in n for n in s.repair_notes)
    aside = [n for n in os.listdir(tmp_path) if ".damaged-" in n]
    assert any(n.endswith(".arrays") for n in aside) and any(n.endswith("c.sqlite" + n[n.index(".damaged-"):])
                                                             for n in aside)


def test_cli_damage_is_one_line_in_a_real_process(baseline, small_photos, tmp_path):
    cat0, _ = baseline
    cat = _copy_catalog(cat0, str(tmp_path / "cat"))
    with open(os.path.join(cat + ".arrays", PHASH + ".bin"), "r+b") as f:
        f.write(b"\0" * 8)
    p = subprocess.run([sys.executable, "-m", "imgsim_fast", "search", os.path.join(small_photos, "photo1.jpg"),
                        "--catalog", cat], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "imgsim index --repair" in p.stderr, p.stderr


def test_version_1_catalog_is_sealed_on_upgrade(small_photos, tmp_path):
    """A catalog written before block checksums existed gets them from its files on the next index,
    which then checks it like any other (and reads are unchanged)."""
    cat = str(tmp_path / "c.sqlite")
    index(small_photos, cat)
    with Catalog(cat) as c:
        before = c.dump()
    con = sqlite3.connect(cat, isolation_level=None)
    con.execute("DROP TABLE array_blocks")
    con.execute("ALTER TABLE arrays DROP COLUMN block_rows")
    con.execute("ALTER TABLE arrays DROP COLUMN max_tx_rows")
    con.execute("DROP INDEX files_rating")  # version 3's additions (XMP rating and label) go too
    con.execute("ALTER TABLE files DROP COLUMN rating")
    con.execute("ALTER TABLE files DROP COLUMN label")
    con.execute("DROP TABLE pixel_checks")  # and version 4's (dedup's looks at pixels)
    con.execute("DROP TABLE keep_verdicts")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()
    with open(os.path.join(cat + ".arrays", PHASH + ".bin"), "ab") as f:
        f.write(b"\x01" * 8)  # a killed version-1 run's uncommitted row: cut, not sealed
    assert index(small_photos, cat).unchanged == 7
    with Catalog(cat) as c:
        assert c.schema_version() >= 2 and c.verify() == []
        assert c.dump() == before
    with open(os.path.join(cat + ".arrays", PHASH + ".bin"), "r+b") as f:
        f.write(b"\0")
    with Catalog(cat) as c, pytest.raises(CatalogDamaged):
        c.array(PHASH)
