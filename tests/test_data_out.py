"""Issue 15, data out: `--out` of hash, dedup and search writes .json, .csv and .parquet holding the same rows,
results give them to pyarrow and pandas, and a missing pyarrow is one line naming the extra."""
from __future__ import annotations

import csv
import json
import os
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from imgsim_fast.cli.main import main

pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """Five distinct pictures, one of them with two byte copies and one re-encoded: groups for dedup."""
    d = tmp_path_factory.mktemp("out")
    root = d / "pics"
    root.mkdir()
    rng = np.random.default_rng(15)
    for i in range(5):
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((96, 72), Image.BILINEAR).save(root / f"p{i}.png")
    shutil.copyfile(root / "p0.png", root / "p0-copy.png")
    shutil.copyfile(root / "p0.png", root / "p0-copy2.png")
    Image.open(root / "p1.png").save(root / "p1.jpg", quality=90)
    cat = str(d / "cat.sqlite")
    assert main(["index", str(root), "--catalog", cat, "--workers", "1", "--no-progress"]) == 0
    return root, cat


def _csv_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _as_text(rows):
    """Rows with every value as CSV writes it: None -> "", flags 0/1, numbers by str()."""
    def text(v):
        if v is None:
            return ""
        if isinstance(v, bool):
            return str(int(v))
        return str(v)

    return [{k: text(v) for k, v in r.items()} for r in rows]


def _json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _parquet_rows(path):
    return pq.read_table(path).to_pylist()


def _three(tmp_path, name):
    return [str(tmp_path / f"{name}.{ext}") for ext in ("json", "csv", "parquet")]


def test_hash_out_formats_hold_the_same_rows(library, tmp_path, capsys):
    root, _ = library
    paths = _three(tmp_path, "codes")
    for p in paths:
        assert main(["hash", str(root), "--kinds", "phash,dhash", "--out", p, "--workers", "1", "--no-progress"]) == 0
    doc = _json(paths[0])
    rows = _parquet_rows(paths[2])
    assert len(rows) == 8 and set(rows[0]) == {"path", "phash", "dhash"}
    assert rows == doc["files"]
    assert _as_text(rows) == _csv_rows(paths[1])
    assert doc["mode"] == "fast" and doc["errors"] == []


def test_dedup_out_formats_hold_the_same_rows(library, tmp_path, capsys):
    root, _ = library
    paths = _three(tmp_path, "groups")
    for p in paths:
        assert main(["dedup", str(root), "--method", "phash", "--out", p, "--workers", "1", "--no-progress"]) == 0
    doc = _json(paths[0])
    rows = _parquet_rows(paths[2])
    assert {r["group"] for r in rows} == set(range(1, len(doc["groups"]) + 1)) and len(doc["groups"]) >= 2
    assert [r["path"] for r in rows] == [m["path"] for g in doc["groups"] for m in g["members"]]
    assert _as_text(rows) == _csv_rows(paths[1])
    # --out FILE.csv is --csv FILE.
    legacy = str(tmp_path / "legacy.csv")
    assert main(["dedup", str(root), "--method", "phash", "--csv", legacy, "--workers", "1", "--no-progress"]) == 0
    assert _csv_rows(legacy) == _csv_rows(paths[1])


def test_search_out_formats_hold_the_same_rows(library, tmp_path, capsys):
    root, cat = library
    paths = _three(tmp_path, "hits")
    for p in paths:
        assert main(["search", str(root / "p0.png"), str(root / "p3.png"), "--catalog", cat, "--top", "3",
                     "--out", p]) == 0
    doc = _json(paths[0])
    rows = _parquet_rows(paths[2])
    # One row per hit and per identical copy of it: p0 has two copies, collapsed into its hit.
    assert sum(len(r["hits"]) for r in doc) == sum(1 for r in rows if r["copy_of"] is None) == 6
    assert sorted(r["path"] for r in rows if r["copy_of"] == str(root / "p0.png")) == \
        [str(root / "p0-copy.png"), str(root / "p0-copy2.png")]
    assert [(r["query"], r["rank"], r["path"]) for r in rows if r["copy_of"] is None] == \
        [(q["query"], h["rank"], h["path"]) for q in doc for h in q["hits"]]
    assert _as_text(rows) == _csv_rows(paths[1])


def test_results_as_arrow_and_pandas(library):
    import pandas as pd

    from imgsim_fast.jobs.search import ROW_COLUMNS, search

    root, cat = library
    res = search(cat, str(root / "p0.png"), k=3)
    t = res.to_arrow()
    assert t.column_names == list(ROW_COLUMNS) and t.num_rows == 3 + 2  # 3 hits, 2 copies of the first
    df = res.to_pandas()
    assert isinstance(df, pd.DataFrame) and df.to_dict("records")[0]["path"] == str(root / "p0.png")
    batch = search(cat, [str(root / "p0.png"), str(root / "p2.png")], k=2)
    assert batch.to_arrow().num_rows == len(batch[0].to_rows()) + len(batch[1].to_rows())


def test_missing_pyarrow_is_one_line_naming_the_extra(library, tmp_path, monkeypatch, capsys):
    from imgsim_fast.io.tables import MissingExtraError
    from imgsim_fast.jobs.search import search

    root, cat = library
    for name in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.") or m == "pandas"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` raises ImportError
    monkeypatch.setitem(sys.modules, "pandas", None)
    res = search(cat, str(root / "p0.png"), k=2)
    for call in (res.to_arrow, res.to_pandas):
        with pytest.raises(MissingExtraError, match=r"pip install 'imgsim_fast\[arrow\]'"):
            call()
    out = tmp_path / "r.parquet"
    assert main(["search", str(root / "p0.png"), "--catalog", cat, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "imgsim_fast[arrow]" in err and not out.exists()


def test_unknown_out_extension_is_refused_before_work(library, tmp_path, capsys):
    root, cat = library
    assert main(["search", str(root / "p0.png"), "--catalog", cat, "--out", str(tmp_path / "r.xlsx")]) == 2
    assert main(["dedup", str(root), "--out", str(tmp_path / "r.txt"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("--out writes .json, .csv or .parquet") == 2
    assert os.listdir(tmp_path) == []
