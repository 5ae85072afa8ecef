"""VectorIndex: HNSW recall against exact search, exact mode against brute force, deletes, persistence."""
import json
import os

import numpy as np
import pytest

from imgsim_fast.indexes.vectors import DEFAULT_EF, EXACT_THRESHOLD, IndexFileError, VectorIndex


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_knn(db, ids, q, k):
    """Reference: exact top-k by cosine, scores sorted descending."""
    sims = unit(q) @ unit(db).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(sims, order, axis=1)


def recall_at_k(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)])


@pytest.fixture(scope="module")
def random_20k():
    rng = np.random.default_rng(20240601)
    # i.i.d. Gaussian directions: the hardest case for HNSW (intrinsic dimension = d).
    return unit(rng.standard_normal((20_000, 64))), unit(rng.standard_normal((300, 64)))


@pytest.fixture(scope="module")
def clustered_20k():
    rng = np.random.default_rng(7)
    d, n_clusters = 128, 400
    centers = rng.standard_normal((n_clusters, d))
    # Noise of the same order as the centres: clusters overlap, so neighbours cross cluster borders.
    db = centers[rng.integers(0, n_clusters, 20_000)] + 0.8 * rng.standard_normal((20_000, d))
    q = centers[rng.integers(0, n_clusters, 300)] + 0.8 * rng.standard_normal((300, d))
    return unit(db), unit(q)


@pytest.mark.parametrize("data", ["random_20k", "clustered_20k"])
def test_hnsw_recall_at_default_ef(data, request):
    db, q = request.getfixturevalue(data)
    ids = np.arange(db.shape[0], dtype=np.int64) * 3 + 11  # ids that are not row numbers
    index = VectorIndex(db.shape[1], threads=2)
    index.add(db, ids)
    assert index.mode == "hnsw" and len(index) == db.shape[0] and index.ef == DEFAULT_EF
    got_i, got_s = index.knn(q, 10)
    ref_i, _ = brute_knn(db, ids, q, 10)
    # A random answer scores ~0.0005 here, a greedy walk stuck in a local optimum ~0.5.
    assert recall_at_k(got_i, ref_i) >= 0.98
    # Scores are true cosines of the returned ids, sorted best first.
    pos = (got_i - 11) // 3
    np.testing.assert_allclose(got_s, np.einsum("qd,qkd->qk", q, db[pos]), atol=1e-5)
    assert np.all(np.diff(got_s, axis=1) <= 1e-6)


@pytest.mark.parametrize("n", [0, 1, 7, 63, 64, 65])
def test_exact_mode_equals_brute_force(n):
    rng = np.random.default_rng(n)
    db = rng.standard_normal((n, 16)).astype(np.float32)
    ids = rng.permutation(1000)[:n].astype(np.int64)
    index = VectorIndex(16)
    index.add(db, ids)
    assert index.mode == "exact" and len(index) == n
    q = rng.standard_normal((5, 16)).astype(np.float32)
    got_i, got_s = index.knn(q, 10)
    kk = min(10, n)
    if n:
        ref_i, ref_s = brute_knn(db, ids, q, kk)
        np.testing.assert_array_equal(got_i[:, :kk], ref_i)  # random floats: no ties
        np.testing.assert_allclose(got_s[:, :kk], ref_s, atol=1e-6)
    assert np.all(got_i[:, kk:] == -1) and np.all(np.isneginf(got_s[:, kk:]))


def test_exact_ties_all_equal_scores():
    index = VectorIndex(4)
    index.add(np.ones((20, 4), np.float32), np.arange(20))
    got_i, got_s = index.knn(np.ones(4, np.float32), 5)
    np.testing.assert_allclose(got_s, 1.0, atol=1e-6)
    assert len(set(got_i[0])) == 5 and set(got_i[0]) <= set(range(20))


@pytest.mark.parametrize("threshold", [EXACT_THRESHOLD, 0])
def test_delete_and_readd(threshold):
    rng = np.random.default_rng(3)
    db = unit(rng.standard_normal((300, 32)))
    index = VectorIndex(32, exact_threshold=threshold, threads=1)
    index.add(db, np.arange(300))
    assert index.mode == ("exact" if threshold else "hnsw")
    # Each vector is its own nearest neighbour; deleted ones must never come back.
    index.mark_deleted([5, 6, 7])
    index.mark_deleted([5])  # again: a no-op
    assert len(index) == 297
    got_i, _ = index.knn(db[[5, 6, 7, 8]], 3)
    assert not set(got_i.ravel()) & {5, 6, 7} and got_i[3, 0] == 8
    with pytest.raises(KeyError):
        index.mark_deleted([100_000])
    with pytest.raises(KeyError):
        index.get_vectors([5])
    # Re-adding an id replaces its vector and revives it.
    new = unit(rng.standard_normal((1, 32)))
    index.add(new, [5])
    assert len(index) == 298
    got_i, got_s = index.knn(new, 1)
    assert got_i[0, 0] == 5 and got_s[0, 0] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(index.get_vectors([5]), new, atol=1e-6)
    assert 6 not in index.ids() and 5 in index.ids()


def test_grows_from_exact_to_hnsw_and_past_capacity():
    rng = np.random.default_rng(5)
    db = unit(rng.standard_normal((3000, 16)))
    index = VectorIndex(16, exact_threshold=500, threads=1)
    index.add(db[:400], np.arange(400))
    index.mark_deleted([0])
    assert index.mode == "exact"
    index.add(db[400:600], np.arange(400, 600))  # crosses the threshold: the graph is built
    assert index.mode == "hnsw" and len(index) == 599
    index.add(db[600:], np.arange(600, 3000))  # past the initial capacity (2 * 600)
    assert len(index) == 2999
    got_i, _ = index.knn(db[[0, 1, 2999 - 1]], 1)
    assert got_i[0, 0] != 0 and got_i[1, 0] == 1 and got_i[2, 0] == 2998


@pytest.mark.parametrize("threshold", [EXACT_THRESHOLD, 0])
def test_save_load_round_trip(tmp_path, threshold):
    rng = np.random.default_rng(11)
    db = unit(rng.standard_normal((500, 24)))
    index = VectorIndex(24, exact_threshold=threshold, M=12, ef=50, threads=1)
    index.add(db, np.arange(500) + 10**12)  # ids beyond 32 bits
    index.mark_deleted([10**12 + 3])
    q = unit(rng.standard_normal((20, 24)))
    before = index.knn(q, 10)
    path = tmp_path / "vectors.idx"
    index.save(path)
    meta = json.loads((tmp_path / "vectors.idx.json").read_text())
    assert meta["dim"] == 24 and meta["count"] == 499 and meta["mode"] == index.mode and meta["M"] == 12
    assert sorted(os.listdir(tmp_path)) == ["vectors.idx", "vectors.idx.json"]  # no temp files left
    loaded = VectorIndex.load(path)
    assert (loaded.mode, len(loaded), loaded.M, loaded.ef) == (index.mode, 499, 12, 50)
    after = loaded.knn(q, 10)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_allclose(after[1], before[1], atol=1e-6)
    index.save(path)  # overwrite in place
    assert len(VectorIndex.load(path)) == 499


@pytest.fixture(params=["exact", "hnsw"])
def saved_index(request, tmp_path):
    rng = np.random.default_rng(1)
    index = VectorIndex(8, exact_threshold=EXACT_THRESHOLD if request.param == "exact" else 0, threads=1)
    index.add(rng.standard_normal((200, 8)).astype(np.float32), np.arange(200))
    path = tmp_path / "i.idx"
    index.save(path)
    return path


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "truncated"),
    (lambda p: p.write_bytes(b""), "truncated"),
    (lambda p: _flip_byte(p, len(p.read_bytes()) // 2), "corrupt"),
    (lambda p: p.unlink(), "payload missing"),
    (lambda p: (p.parent / (p.name + ".json")).unlink(), "metadata not found"),
    (lambda p: (p.parent / (p.name + ".json")).write_text("{not json"), "not valid JSON"),
    (lambda p: (p.parent / (p.name + ".json")).write_text("[1, 2]"), "not an imgsim_fast vector index"),
    (lambda p: (p.parent / (p.name + ".json")).write_text(
        (p.parent / (p.name + ".json")).read_text().replace('"version": 1', '"version": 99')), "format version 99"),
    (lambda p: (p.parent / (p.name + ".json")).write_text(
        (p.parent / (p.name + ".json")).read_text().replace('"dim": 8', '"dim": "8"')), "'dim'"),
])
def test_damaged_files_give_clear_errors(saved_index, damage, message):
    damage(saved_index)
    with pytest.raises(IndexFileError, match=message):
        VectorIndex.load(saved_index)


def test_load_nothing_there(tmp_path):
    with pytest.raises(IndexFileError, match="not found"):
        VectorIndex.load(tmp_path / "absent.idx")


def test_input_validation():
    index = VectorIndex(4)
    with pytest.raises(ValueError, match="shape"):
        index.add(np.ones((2, 5), np.float32), [1, 2])
    with pytest.raises(ValueError, match=">= 0"):
        index.add(np.ones((1, 4), np.float32), [-1])
    with pytest.raises(ValueError, match="non-zero"):
        index.add(np.zeros((1, 4), np.float32), [1])
    with pytest.raises(ValueError, match="finite"):
        index.add(np.full((1, 4), np.nan, np.float32), [1])
    with pytest.raises(ValueError, match="unique"):
        index.add(np.ones((2, 4), np.float32), [1, 1])
    with pytest.raises(TypeError):
        index.add(np.ones((1, 4), np.float32), [1.5])
    with pytest.raises(ValueError):
        index.knn(np.ones(4, np.float32), 0)
    with pytest.raises(ValueError):
        VectorIndex(4, space="l2")
    with pytest.raises(ValueError):
        VectorIndex(0)
    assert len(index) == 0  # nothing was added by the failed calls


def test_a_deterministic_index_answers_the_same_every_build():
    # hnswlib's parallel inserts race for neighbours: two builds of the same vectors can answer differently
    # (dedup's groups then differed between two runs over one folder). Built on one thread, they cannot.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6000, 32)).astype(np.float32)
    x[3000:] = x[:3000] + 0.3 * rng.standard_normal((3000, 32)).astype(np.float32)

    def answers():
        vi = VectorIndex(32, exact_threshold=0, deterministic=True, M=8, ef_construction=40)
        vi.add(x, np.arange(len(x)))
        assert vi.mode == "hnsw"
        return vi.knn(x, k=10)

    (ids_a, sc_a), (ids_b, sc_b) = answers(), answers()
    assert np.array_equal(ids_a, ids_b) and np.array_equal(sc_a, sc_b)
