"""Catalog and incremental indexer: exact work counts, crash-resume, readers during writes, duplicates."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from imgsim_fast.catalog.store import Catalog, CatalogError, CatalogLocked, default_catalog_path, hash_array_name
from imgsim_fast.catalog.indexer import index

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASH = hash_array_name("phash")


def make_image(path, seed, size=(64, 48)):
    """A random-blocks picture: different seeds give pHash codes far apart."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize(size, Image.Resampling.NEAREST)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if path.endswith(".webp"):
        im.save(path, lossless=True)
    else:
        im.save(path)
    return path


def make_tree(root, n, seed=0):
    paths = []
    for i in range(n):
        ext = ".jpg" if i % 2 else ".png"
        paths.append(make_image(os.path.join(root, f"d{i % 3}", f"img{i:03d}{ext}"), seed * 1000 + i))
    return paths


def catalog_of(root):
    return default_catalog_path(root)  # in the XDG data folder (tests/conftest.py makes it a temporary one)


def counts(s):
    keys = ("unchanged", "touched", "modified", "added", "renamed", "copied", "removed", "backfilled",
            "decoded", "digested", "failed")
    return {k: getattr(s, k) for k in keys if getattr(s, k)}


def test_reindex_does_exactly_the_needed_work(tmp_path):
    root = str(tmp_path / "photos")
    paths = make_tree(root, 12)
    s = index(root)
    assert counts(s) == {"added": 12, "decoded": 12, "digested": 12}
    assert s.batches == 1 and s.metadata_read == 12

    s = index(root)  # nothing changed: nothing opened
    assert counts(s) == {"unchanged": 12}
    assert s.metadata_read == 0

    os.utime(paths[0], ns=(1, 10**18))                       # touched: same bytes
    os.rename(paths[1], os.path.join(root, "moved.jpg"))      # renamed
    os.remove(paths[2])                                       # removed
    make_image(os.path.join(root, "new.png"), 999)            # added
    make_image(paths[3], 12345)                               # modified (new content, same path)
    shutil.copyfile(paths[4], os.path.join(root, "copy.png"))  # copy of an indexed file
    s = index(root)
    assert counts(s) == {"unchanged": 8, "touched": 1, "renamed": 1, "removed": 1, "added": 1,
                         "modified": 1, "copied": 1, "decoded": 2, "digested": 5}

    # The incrementally updated catalog says what a fresh index of the same files says.
    fresh = str(tmp_path / "fresh.sqlite")
    index(root, fresh)
    with Catalog(catalog_of(root)) as a, Catalog(fresh) as b:
        assert a.dump() == b.dump()
        assert a.count() == 13
        assert a.duplicate_groups() == [sorted([paths[4], os.path.join(root, "copy.png")])]


def test_new_hash_kind_is_backfilled_without_redoing_others(tmp_path):
    root = str(tmp_path / "p")
    make_tree(root, 5)
    index(root)
    s = index(root, kinds=("phash", "dhash"))
    assert counts(s) == {"backfilled": 5, "decoded": 5, "digested": 5}  # one read per file: digest and decode
    s = index(root, kinds=("phash", "dhash"))
    assert counts(s) == {"unchanged": 5}
    with Catalog(catalog_of(root)) as c:
        arrays = c.arrays()
        assert arrays[PHASH]["length"] == 5  # phash rows were not appended a second time
        assert arrays[hash_array_name("dhash")]["length"] == 5


def test_bad_files_are_per_file_errors_and_not_retried(tmp_path):
    root = str(tmp_path / "p")
    make_tree(root, 3)
    open(os.path.join(root, "zero.png"), "wb").close()
    with open(os.path.join(root, "junk.jpg"), "wb") as f:
        f.write(b"not an image at all")
    os.makedirs(os.path.join(root, "loop"))
    os.symlink("..", os.path.join(root, "loop", "up"))
    if sys.platform.startswith("linux"):
        with open(os.fsencode(os.path.join(root, "bad")) + b"\xff.png", "wb") as f:
            f.write(b"x")
    s = index(root, follow_symlinks=True)
    assert s.failed == 2 and s.added == 5
    with Catalog(catalog_of(root)) as c:
        errs = {os.path.basename(r.path): r.error_kind for r in c.files("error IS NOT NULL")}
        assert errs == {"zero.png": "empty", "junk.jpg": "not_image"}
        kinds = sorted(k for _, k, _ in c.walk_errors())
        assert "symlink_loop" in kinds
        if sys.platform.startswith("linux"):
            assert "bad_name" in kinds
    s = index(root, follow_symlinks=True)
    assert counts(s) == {"unchanged": 5}


def test_pixel_identical_files_found_and_only_candidates_decoded(tmp_path):
    root = str(tmp_path / "p")
    make_tree(root, 6)  # same size as the pair, unrelated content: must not be fully decoded
    a = make_image(os.path.join(root, "pair.png"), 4242)
    b = make_image(os.path.join(root, "pair.webp"), 4242)
    s = index(root)
    assert s.pixel_digested == 2
    with Catalog(catalog_of(root)) as c:
        assert c.duplicate_groups("pixels") == [[a, b]]
        assert c.duplicate_groups("content") == []
    assert index(root).pixel_digested == 0


def test_array_bytes_past_committed_length_are_ignored_then_cut(tmp_path):
    root = str(tmp_path / "p")
    make_tree(root, 4)
    index(root)
    cat_path = catalog_of(root)
    bin_path = os.path.join(cat_path + ".arrays", PHASH + ".bin")
    with open(bin_path, "ab") as f:  # what a kill between fsync and COMMIT leaves behind
        f.write(b"\xab" * 12)
    with Catalog(cat_path) as r:
        assert len(r.array(PHASH)) == 4
    make_image(os.path.join(root, "new.png"), 77)
    index(root)
    assert os.path.getsize(bin_path) == 5 * 8
    with Catalog(cat_path) as r:
        ids, rows, codes = r.vectors(PHASH)
        assert sorted(rows.tolist()) == list(range(5))


def test_second_writer_is_refused_and_newer_schema_is_rejected(tmp_path):
    p = str(tmp_path / "c.sqlite")
    with Catalog(p, write=True):
        with pytest.raises(CatalogLocked):
            Catalog(p, write=True)
        with Catalog(p) as reader:  # readers are welcome
            assert reader.count() == 0
    with Catalog(p, write=True) as w, w.transaction():
        w.conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(CatalogError):
        Catalog(p)
    with pytest.raises(CatalogError):
        Catalog(str(tmp_path / "missing.sqlite"))


_CHILD = """
import sys
sys.path.insert(0, {repo!r})
from PIL import Image
from imgsim_fast.features import hashing
from imgsim_fast.runtime import pool as pipeline
from imgsim_fast.indexes import hamming
from imgsim_fast.catalog.indexer import index
hashing.hash_images([Image.new("L", (64, 48))])  # compile the kernels before the clock starts
print("ready", flush=True)
index({root!r}, {cat!r}, batch_size=2, workers=1)
print("done", flush=True)
"""


def _start_indexer(root, cat):
    code = _CHILD.format(repo=REPO, root=root, cat=cat)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def test_sigkill_at_random_points_then_resume_equals_uninterrupted_run(tmp_path):
    root = str(tmp_path / "p")
    make_tree(root, 40)
    reference = str(tmp_path / "ref.sqlite")
    p = _start_indexer(root, reference)
    t0 = time.perf_counter()
    assert p.stdout.readline().strip() == "done"
    run_s = time.perf_counter() - t0  # indexing alone, imports excluded
    p.communicate(timeout=120)
    cat = str(tmp_path / "killed.sqlite")
    rng = random.Random(5)  # seeded kill points, spread over the run
    partial = []
    for _ in range(3):
        p = _start_indexer(root, cat)
        time.sleep(rng.uniform(0.1, 0.7) * run_s)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        p.stdout.close()
        if os.path.exists(cat):
            try:
                with Catalog(cat) as c:
                    partial.append(c.count())
            except CatalogError as e:  # killed while SQLite had made the file and not yet the schema
                assert "holds no catalog yet" in str(e), e
    s = index(root, cat, batch_size=2)
    assert s.added + s.unchanged == 40
    with Catalog(reference) as a, Catalog(cat) as b:
        assert a.dump() == b.dump()
        assert b.count() == 40
    assert partial, "the kills never let the indexer create its catalog"
    print("partial counts at the kills:", partial)


def test_reader_during_write_sees_consistent_state(tmp_path):
    root = str(tmp_path / "p")
    make_tree(root, 30)
    cat = str(tmp_path / "c.sqlite")
    p = _start_indexer(root, cat)
    seen = set()
    try:
        while p.poll() is None:
            if not os.path.exists(cat):
                continue
            try:
                r = Catalog(cat)
            except CatalogError:  # created but not yet migrated
                continue
            with r:
                if PHASH not in r.arrays():
                    continue
                with r.snapshot():
                    n_ok = r.conn.execute("SELECT count(*) FROM files WHERE error IS NULL").fetchone()[0]
                    length = r.arrays()[PHASH]["length"]
                    ids, rows, codes = r.vectors(PHASH)
                # Fresh files without copies: one row per file, every row committed and mapped.
                assert n_ok == length == len(ids) == len(codes)
                assert (rows < length).all()
                seen.add(length)
    finally:
        p.communicate(timeout=120)
    assert p.returncode == 0
    assert len(seen) >= 2, f"reader saw only {seen}: the test did not overlap the writer"


def test_cli_index_and_query(tmp_path, capsys):
    from imgsim_fast.cli.main import main

    root = str(tmp_path / "p")
    paths = make_tree(root, 4)
    with open(os.path.join(root, "map.json"), "w") as f:
        json.dump({os.path.relpath(paths[0], root): {"tags": ["beach", "sun"]}}, f)
    assert main(["index", root, "--sidecar-map", os.path.join(root, "map.json"), "--workers", "1",
                 "--no-progress", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["added"] == 4
    assert main(["query", "--catalog", catalog_of(root), "--tag", "beach", "--json"]) == 0
    assert [r["path"] for r in json.loads(capsys.readouterr().out)] == [paths[0]]
    assert main(["query", "--catalog", catalog_of(root), "--like", paths[1], "--top", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0] == {"path": paths[1], "distance": 0} and len(hits) == 2
