"""Queries equal a brute-force Python filter; similarity search equals brute-force ranking, ties by path."""
import os
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgsim_fast.catalog.store import Catalog, default_catalog_path, hash_array_name
from imgsim_fast.features.codes import hamming_reference
from imgsim_fast.catalog.query import AllTags, And, AnyTag, Field, Not, Or, Range, Tag, Text, compile_expr, select
from imgsim_fast.jobs.search import search

PHASH = hash_array_name("phash")
TAGS = ["beach", "Sun", "dog", "été", "city night", "cat"]
WORDS = ["sunset", "Beach", "dog", "ÉTÉ", "walk", "x"]
MAKES = [None, "Canon", "NIKON", "Sony"]
N_FILES = 150


def _random_files(seed):
    rng = random.Random(seed)
    files = []
    for i in range(N_FILES):
        make = rng.choice(MAKES)
        files.append({
            "path": f"/c/img{i:04d}.jpg",
            "tags": sorted(set(rng.sample(TAGS, rng.randint(0, 3)))),
            "description": " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 4))) or None,
            "make": make,
            "model": None if make is None else f"{make} M{rng.randint(1, 3)}",
            "taken": None if rng.random() < 0.2 else f"20{rng.randint(10, 23):02d}-{rng.randint(1, 12):02d}-"
                                                    f"{rng.randint(1, 28):02d}T12:00:00",
            "width": None if rng.random() < 0.1 else rng.choice([64, 640, 1024, 4000]),
            "height": rng.choice([48, 480, 768, 3000]),
            "size": rng.randint(0, 5000),
        })
    return files


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    """A catalog written through the Catalog API: random metadata, some files without codes, copies
    sharing a row, and dead rows (as removed files leave them)."""
    path = str(tmp_path_factory.mktemp("q") / "c.sqlite")
    files = _random_files(11)
    rng = np.random.default_rng(3)
    with Catalog(path, write=True) as w:
        w.ensure_array(PHASH, np.uint64, 1)
        with w.transaction():
            # Codes from a few bits flipped around a centre: many ties, as real near-duplicates give.
            centre = rng.integers(0, 2**63, dtype=np.uint64)
            codes = centre ^ (rng.integers(0, 2**16, size=N_FILES + 20, dtype=np.uint64) << np.uint64(3))
            start = w.append(PHASH, codes.reshape(-1, 1))
            for i, f in enumerate(files):
                desc = f["description"]
                cur = w.conn.execute(
                    "INSERT INTO files(path, size, mtime_ns, dev, inode, width, height, description, text_norm, "
                    "make, model, taken) VALUES (?, ?, 0, 0, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (f["path"], f["size"], i, f["width"], f["height"], desc, (desc or "").casefold(),
                     f["make"], f["model"], f["taken"]))
                fid = cur.lastrowid
                f["id"] = fid
                w.conn.executemany("INSERT INTO tags(file_id, norm, tag, source) VALUES (?, ?, ?, 'map')",
                                   [(fid, t.casefold(), t) for t in f["tags"]])
                if i % 10 == 9:
                    f["row"] = None  # no code (e.g. a file that failed to decode)
                    continue
                f["row"] = start + 20 + (i if i % 7 else i - 1)  # every 7th shares its neighbour's row
                w.conn.execute("INSERT INTO vectors(file_id, array, row) VALUES (?, ?, ?)", (fid, PHASH, f["row"]))
    c = Catalog(path)
    c.files_ref = files
    c.codes_ref = codes
    yield c
    c.close()


def _oracle(e, f) -> bool:
    def tags():
        return {t.casefold() for t in f["tags"]}

    if e is None:
        return True
    if isinstance(e, Tag):
        return e.name.casefold() in tags()
    if isinstance(e, AllTags):
        return all(n.casefold() in tags() for n in e.names)
    if isinstance(e, AnyTag):
        return any(n.casefold() in tags() for n in e.names)
    if isinstance(e, Text):
        return e.needle.casefold() in (f["description"] or "").casefold()
    if isinstance(e, Field):
        v = _value(f, e.name)
        if v is None:
            return False
        if e.op == "contains":
            return str(e.value).casefold() in str(v).casefold()
        return {"=": v == e.value, "!=": v != e.value, "<": v < e.value, "<=": v <= e.value,
                ">": v > e.value, ">=": v >= e.value}[e.op]
    if isinstance(e, Range):
        v = _value(f, e.name)
        return v is not None and (e.lo is None or v >= e.lo) and (e.hi is None or v <= e.hi)
    if isinstance(e, And):
        return all(_oracle(c, f) for c in e.children)
    if isinstance(e, Or):
        return any(_oracle(c, f) for c in e.children)
    if isinstance(e, Not):
        return not _oracle(e.child, f)
    raise TypeError(e)


def _value(f, name):
    if name == "camera":
        return f"{f['make'] or ''} {f['model'] or ''}".strip()
    if name == "pixels":
        return None if f["width"] is None or f["height"] is None else f["width"] * f["height"]
    return f[name]


tag_names = st.sampled_from(TAGS + ["BEACH", "none"])
dates = st.builds(lambda y, m: f"20{y:02d}-{m:02d}-01", st.integers(9, 24), st.integers(1, 12))
leaves = st.one_of(
    st.builds(Tag, tag_names),
    st.builds(lambda ns: AllTags(tuple(ns)), st.lists(tag_names, max_size=3)),
    st.builds(lambda ns: AnyTag(tuple(ns)), st.lists(tag_names, max_size=3)),
    st.builds(Text, st.sampled_from(["sun", "BEACH", "été", "dog walk", "", "zzz"])),
    st.builds(Field, st.just("make"), st.sampled_from(["=", "!="]), st.sampled_from(["Canon", "Sony", "x"])),
    st.builds(Field, st.just("camera"), st.just("contains"), st.sampled_from(["canon", "m2", "nikon m"])),
    st.builds(Field, st.sampled_from(["width", "height", "size", "pixels"]), st.sampled_from(["<", "<=", ">", ">="]),
              st.integers(0, 5000)),
    st.builds(Field, st.just("taken"), st.sampled_from([">=", "<"]), dates),
    st.builds(Range, st.sampled_from(["width", "size"]), st.one_of(st.none(), st.integers(0, 3000)),
              st.one_of(st.none(), st.integers(0, 5000))),
    st.builds(Range, st.just("taken"), st.one_of(st.none(), dates), st.one_of(st.none(), dates)),
)
exprs = st.recursive(leaves, lambda ch: st.one_of(
    st.builds(lambda cs: And(tuple(cs)), st.lists(ch, max_size=3)),
    st.builds(lambda cs: Or(tuple(cs)), st.lists(ch, max_size=3)),
    st.builds(Not, ch)), max_leaves=6)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(e=st.one_of(st.none(), exprs))
def test_select_equals_brute_force(cat, e):
    want = sorted(f["path"] for f in cat.files_ref if _oracle(e, f))
    assert [r.path for r in select(cat, e)] == want


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(e=st.one_of(st.none(), exprs), k=st.sampled_from([0, 1, 7, 20, 63, 64, 65, 200]), qi=st.integers(0, N_FILES + 19))
def test_search_equals_brute_force_ranking(cat, e, k, qi):
    q = cat.codes_ref[qi:qi + 1]
    cands = [f for f in cat.files_ref if f["row"] is not None and _oracle(e, f)]
    d = {f["path"]: int(hamming_reference(q.reshape(1, 1), cat.codes_ref[f["row"]].reshape(1, 1))[0, 0])
         for f in cands}
    want = sorted(d.items(), key=lambda x: (x[1], x[0]))[:k]
    got = search(cat, q, where=e, k=k).hits  # q: one code, (words,) uint64
    assert [(m.path, m.distance) for m in got] == want
    # A selective filter still returns k results whenever k files pass it (the over-fetch contract).
    assert len(got) == min(k, len(cands))


def test_compile_rejects_unknown_fields_and_ops():
    with pytest.raises(ValueError):
        compile_expr(Field("nope", "=", 1))
    with pytest.raises(ValueError):
        compile_expr(Field("width", "~", 1))
    with pytest.raises(TypeError):
        compile_expr("width > 1")
    sql, params = compile_expr(Tag("x") & ~Text("y'; DROP TABLE files; --"))
    assert "DROP" not in sql and params[-1].startswith("y'")  # values travel as parameters only


def test_a_field_of_numbers_reads_numeric_text_and_refuses_the_rest(cat):
    # A query string or a JSON body may carry "640" (it matched before, as SQLite compares it as a number):
    # still the same rows; "abc" or "nan" matched nothing and said nothing, and is now refused.
    w = next(f["width"] for f in cat.files_ref if f.get("width") is not None)
    as_number = [r.path for r in select(cat, Field("width", "=", w))]
    assert as_number and [r.path for r in select(cat, Field("width", "=", str(w)))] == as_number
    assert [r.path for r in select(cat, Range("width", str(w), None))] == \
        [r.path for r in select(cat, Range("width", w, None))]
    for bad in (Field("width", "=", "abc"), Field("width", "=", "nan"), Range("height", None, "tall"),
                Field("rating", "=", True)):
        with pytest.raises(ValueError, match="holds numbers"):
            compile_expr(bad)


def test_search_by_indexed_path_on_real_index(tmp_path):
    """End to end: tags from a mapping file, then a filtered similarity query."""
    import json

    from imgsim_fast.catalog.indexer import index
    from test_catalog import make_image

    root = str(tmp_path / "p")
    paths = [make_image(os.path.join(root, f"i{i}.png"), i) for i in range(8)]
    with open(os.path.join(root, "map.json"), "w") as f:
        json.dump({os.path.basename(p): ["beach"] for p in paths[::2]}, f)
    index(root, sidecar_map=os.path.join(root, "map.json"))
    with Catalog(default_catalog_path(root)) as c:
        hits = search(c, paths[0], where=Tag("beach"), k=3).hits
        assert hits[0].path == paths[0] and hits[0].distance == 0
        assert {h.path for h in hits} <= set(paths[::2]) and len(hits) == 3
        outside = search(c, paths[1], where=Tag("beach"), k=10).hits  # query image not in the filter
        assert len(outside) == 4 and paths[1] not in {h.path for h in outside}
