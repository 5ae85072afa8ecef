"""Issue 15, one search: `query` is an alias of `search`, distances are shown in dedup's words, byte-identical
hits are collapsed into one, and search with neither example nor text lists what the filters pass."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from imgsim_fast.cli.main import main
from imgsim_fast.jobs.dedup.detect import DEFAULTS
from imgsim_fast.jobs.search import search

N_COPIES = 11


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """Six distinct pictures; `a.png` has 11 byte copies and a re-encoded JPEG twin; `b.png` a tag."""
    d = tmp_path_factory.mktemp("unified")
    root = d / "pics"
    root.mkdir()
    rng = np.random.default_rng(7)
    for name in "abcdef":
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((128, 96), Image.BILINEAR).save(root / f"{name}.png")
    for i in range(N_COPIES):
        shutil.copyfile(root / "a.png", root / f"a-copy{i:02d}.png")
    Image.open(root / "a.png").save(root / "a-twin.jpg", quality=80)
    with open(d / "map.json", "w") as f:
        json.dump({str(root / "b.png"): ["beach"], str(root / "a-copy03.png"): ["beach"]}, f)
    cat = str(d / "cat.sqlite")
    assert main(["index", str(root), "--catalog", cat, "--kinds", "phash,dhash", "--workers", "1", "--no-progress",
                 "--sidecar-map", str(d / "map.json")]) == 0
    return root, cat


def _out(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out


def test_query_alias_gives_the_results_of_search(library, capsys):
    root, cat = library
    q = str(root / "a-twin.jpg")
    new = json.loads(_out(capsys, ["search", q, "--catalog", cat, "--top", "4", "--json"]))
    old = json.loads(_out(capsys, ["query", "--like", q, "--catalog", cat, "--top", "4", "--json"]))
    assert [(h["path"], h["distance"]) for h in new["hits"]] == [(r["path"], r["distance"]) for r in old]
    assert [h["copies"] for h in new["hits"]] == [r.get("copies", []) for r in old]
    # The human output is the same lines; filters too (query's --text is search's --contains).
    assert _out(capsys, ["search", q, "--catalog", cat, "--method", "dhash"]) == \
        _out(capsys, ["query", "--like", q, "--catalog", cat, "--kind", "dhash"])
    listed = json.loads(_out(capsys, ["search", "--tag", "beach", "--catalog", cat, "--json"]))
    rows = json.loads(_out(capsys, ["query", "--tag", "beach", "--catalog", cat, "--json"]))
    assert [h["path"] for h in listed["hits"]] == [r["path"] for r in rows] == [str(root / "a-copy03.png"),
                                                                                str(root / "b.png")]


def test_search_without_example_lists_the_catalog(library, capsys):
    root, cat = library
    lines = _out(capsys, ["search", "--catalog", cat]).splitlines()
    # 6 pictures and the twin; a's 11 copies are one line with it.
    assert len(lines) == 7
    assert f"{root / 'a-copy00.png'}  +{N_COPIES} identical copies" in lines
    assert len(_out(capsys, ["search", "--catalog", cat, "--no-collapse"]).splitlines()) == 7 + N_COPIES


def test_identical_copies_collapse_into_one_hit(library, capsys):
    root, cat = library
    q = str(root / "a.png")
    lines = _out(capsys, ["search", q, "--catalog", cat, "--top", "3"]).splitlines()
    assert lines[0].endswith(f"  {q}  +{N_COPIES} identical copies"), lines  # the example heads its copies
    assert "0/64 bits, duplicate-close" in lines[0]
    assert len(lines) == 3 and str(root / "a-twin.jpg") in lines[1]  # k counts distinct contents
    res = search(cat, q, k=3)
    assert res.hits[0].path == q and len(res.hits[0].copies) == N_COPIES
    assert sorted(res.hits[0].copies) == sorted(str(root / f"a-copy{i:02d}.png") for i in range(N_COPIES))
    flat = search(cat, q, k=3 + N_COPIES, collapse=False)
    assert [h.distance for h in flat.hits[:N_COPIES + 1]] == [0] * (N_COPIES + 1)
    assert all(not h.copies for h in flat.hits)
    # exclude_self leaves the example out, but its copies are other files: one of them is the hit.
    res = search(cat, q, k=2, exclude_self=True)
    assert res.hits[0].distance == 0 and q not in [res.hits[0].path, *res.hits[0].copies]
    assert len(res.hits[0].copies) == N_COPIES - 1


def test_closeness_words_follow_the_dedup_thresholds(library):
    root, cat = library
    seen = set()
    for name in "abcdef":
        for h in search(cat, str(root / f"{name}.png"), k=20).hits:
            want = ("duplicate-close" if h.distance <= DEFAULTS.phash else
                    "similar" if h.distance <= DEFAULTS.similar_phash else "different")
            assert h.closeness == want and h.describe() == f"{h.distance}/64 bits, {want}"
            seen.add(want)
    assert {"duplicate-close", "different"} <= seen  # copies, and unrelated random pictures
    # Hashes the thresholds were not measured for get the distance alone.
    h = search(cat, str(root / "a.png"), method="dhash", k=1).hits[0]
    assert h.closeness is None and h.describe() == "0/64 bits"


def test_example_as_a_stored_code(library):
    from imgsim_fast.catalog.store import Catalog

    root, cat = library
    with Catalog(cat) as c:
        code = c.vector_of("phash-8-fast", str(root / "c.png"))
        by_code = search(c, code, k=4)
        by_path = search(c, str(root / "c.png"), k=4)
    assert [(h.path, h.distance) for h in by_code.hits] == [(h.path, h.distance) for h in by_path.hits]
    with pytest.raises(ValueError, match="uint64 code"):
        search(cat, np.zeros(3, np.float32))


def test_text_and_example_together_is_refused(library):
    root, cat = library
    with pytest.raises(ValueError, match="not both"):
        search(cat, str(root / "a.png"), text="a red car")
    with pytest.raises(ValueError, match="CLIP embeddings, not by phash"):
        search(cat, text="a red car", method="phash")
