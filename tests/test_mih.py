"""Multi-index hashing (imgsim_fast.indexes.mih): exact results against the NumPy brute force, every search path.

The oracle is imgsim_fast.features.codes.hamming_reference with a stable (distance, id) order, so answers must be
identical, ties included. Each case runs on the forced table path ('mih'), the forced scan ('scan') and
the automatic choice ('auto'), so the fallback and the tables are both checked against the same oracle.
"""
from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgsim_fast.features.codes import hamming_reference, pack_bits
from imgsim_fast.indexes.mih import HammingIndex

PATHS = ("mih", "scan", "auto")
AWKWARD = (0, 1, 7, 63, 64, 65)


# --- data and oracle -------------------------------------------------------------------------------

def uniform(n: int, words: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**64, size=(n, words), dtype=np.uint64)


def clustered(n: int, words: int, seed: int) -> np.ndarray:
    """pHash-like codes: skewed bit frequencies, groups around centres with members planted at every
    distance 0..16 from their centre (so every radius and every tie pattern up to 16 occurs)."""
    rng = np.random.default_rng(seed)
    bits = 64 * words
    p = rng.uniform(0.15, 0.85, bits)
    n_centres = max(1, n // 34)
    centres = rng.random((n_centres, bits)) < p
    out = np.empty((n, bits), dtype=bool)
    for i in range(n):
        c = centres[i % n_centres].copy()
        d = (i // n_centres) % 17
        flip = rng.choice(bits, size=d, replace=False)
        c[flip] = ~c[flip]
        out[i] = c
    return pack_bits(out)


def make(kind: str, n: int, words: int, seed: int) -> np.ndarray:
    return (uniform if kind == "uniform" else clustered)(n, words, seed)


def shuffled_ids(n: int, seed: int) -> np.ndarray:
    """Distinct ids in no particular order, negative ones included (ids are not row numbers)."""
    rng = np.random.default_rng(seed)
    return rng.choice(np.arange(-5 * n - 10, 5 * n + 10), size=n, replace=False).astype(np.int64)


def queries_for(db: np.ndarray, words: int, seed: int, nq: int = 12) -> np.ndarray:
    """Half perturbed database codes (near neighbours exist), half uniform."""
    rng = np.random.default_rng(seed)
    q = uniform(nq, words, seed + 1)
    if len(db):
        pick = rng.integers(0, len(db), nq // 2)
        noise = uniform(nq // 2, words, seed + 2) & uniform(nq // 2, words, seed + 3) & uniform(nq // 2, words, seed + 4)
        q[: nq // 2] = db[pick] ^ (noise & uniform(nq // 2, words, seed + 5))  # ~1/16 of bits flipped
    return q


def brute_knn(db, ids, q, k):
    kk = min(k, len(db))
    out_i = np.zeros((len(q), kk), np.int64)
    out_d = np.zeros((len(q), kk), np.int32)
    if len(db) == 0:
        return out_i, out_d
    d = hamming_reference(q, db)
    for i in range(len(q)):
        order = np.lexsort((ids, d[i]))[:kk]
        out_i[i], out_d[i] = ids[order], d[i][order]
    return out_i, out_d


def brute_radius(db, ids, q, r):
    lims, out_i, out_d = [0], [], []
    d = hamming_reference(q, db) if len(db) else np.zeros((len(q), 0), np.int64)
    for i in range(len(q)):
        hit = np.flatnonzero(d[i] <= r)
        order = hit[np.lexsort((ids[hit], d[i][hit]))]
        out_i.append(ids[order])
        out_d.append(d[i][order])
        lims.append(lims[-1] + len(order))
    cat = lambda xs, t: np.concatenate(xs).astype(t) if xs else np.zeros(0, t)  # noqa: E731
    return np.array(lims, np.int64), cat(out_i, np.int64), cat(out_d, np.int32)


def brute_pairs(db, ids, r):
    if len(db) < 2:
        return set()
    d = hamming_reference(db, db)
    i, j = np.nonzero((d <= r) & (ids[:, None] < ids[None, :]))
    return {(int(ids[a]), int(ids[b]), int(d[a, b])) for a, b in zip(i, j)}


def check_all(index: HammingIndex, db, ids, q, radii=(0, 1, 3, 6, 10, 16), ks=(1, 5, 17)):
    for k in ks:
        got_i, got_d = index.knn(q, k, threads=2)
        ref_i, ref_d = brute_knn(db, ids, q, k)
        np.testing.assert_array_equal(got_d, ref_d, err_msg=f"knn dists k={k} path={index.path}")
        np.testing.assert_array_equal(got_i, ref_i, err_msg=f"knn ids k={k} path={index.path}")
        assert got_i.dtype == np.int64 and got_d.dtype == np.int32
    for r in radii:
        got = index.radius(q, r, threads=2)
        ref = brute_radius(db, ids, q, r)
        for g, e, name in zip(got, ref, ("lims", "ids", "dists")):
            np.testing.assert_array_equal(g, e, err_msg=f"radius {name} r={r} path={index.path}")


def build(bits, db, ids, path, m=None):
    index = HammingIndex(bits, m)
    index.path = path
    index.add(db, ids)
    return index


# --- exactness ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [64, 128, 256])
@pytest.mark.parametrize("kind", ["uniform", "clustered"])
@pytest.mark.parametrize("path", PATHS)
def test_matches_brute_force(bits, kind, path):
    words = bits // 64
    db = make(kind, 1500, words, seed=bits)
    ids = shuffled_ids(len(db), seed=bits + 1)
    q = queries_for(db, words, seed=bits + 2)
    index = build(bits, db, ids, path)
    check_all(index, db, ids, q)
    if path == "mih":
        # A do-nothing fallback would pass the comparison; prove the tables answered.
        assert index.stats()["last_scanned"] == 0 and index.stats()["last_candidates"] > 0


@pytest.mark.parametrize("bits,m", [(64, 4), (128, 8), (256, 16)])
@pytest.mark.parametrize("kind", ["uniform", "clustered"])
def test_explicit_m_hashed_tables(bits, m, kind):
    """Few long (16-bit) substrings: sparse keys take the open-addressing layout, not direct addressing.

    (Forced probing of 32-bit substrings for kNN on uniform codes would enumerate ~10^8 keys; the
    automatic path would scan instead, which the other tests cover.)"""
    words = bits // 64
    db = make(kind, 700, words, seed=7 * bits + m)
    ids = shuffled_ids(len(db), seed=3)
    q = queries_for(db, words, seed=5)
    index = build(bits, db, ids, "mih", m=m)
    check_all(index, db, ids, q, radii=(0, 2, 5, 9), ks=(1, 4))
    st_ = index.stats()
    assert st_["m"] == m and sum(st_["substring_bits"]) == bits and max(st_["substring_bits"]) <= 32


@pytest.mark.parametrize("n", AWKWARD)
@pytest.mark.parametrize("bits", [64, 256])
@pytest.mark.parametrize("path", PATHS)
def test_awkward_sizes(n, bits, path):
    words = bits // 64
    db = make("clustered", n, words, seed=n + bits)
    ids = shuffled_ids(n, seed=n)
    q = queries_for(db, words, seed=n + 9, nq=6)
    index = build(bits, db, ids, path)
    assert len(index) == n
    check_all(index, db, ids, q, radii=(0, 4, 16, bits), ks=(0, 1, 7, 100))
    got = set()
    for a, b, d in index.self_join(5, chunk_size=3):
        got |= set(zip(a.tolist(), b.tolist(), d.tolist()))
    assert got == brute_pairs(db, ids, 5)


def test_auto_m_follows_paper_rule():
    # m = round(b / log2 N): 64 / log2(5000) = 5.2 -> 5; 256 / log2(5000) = 20.8 -> 21.
    assert HammingIndex(64)._ix.auto_m(64, 5000) == 5
    assert HammingIndex(64)._ix.auto_m(256, 5000) == 21
    assert HammingIndex(64)._ix.auto_m(64, 1_000_000) == 3
    index = HammingIndex(64)
    index.add(uniform(5000, 1, 1))
    index.knn(uniform(1, 1, 2), 1)
    s = index.stats()
    assert s["m"] == 5 and s["m_auto"] and sorted(s["substring_bits"]) == [12, 13, 13, 13, 13]


def test_fallback_and_tables_both_used_and_equal():
    """The automatic path probes for small r and scans for large r; both agree with the forced paths."""
    db = uniform(20000, 1, 11)
    ids = np.arange(len(db), dtype=np.int64)[::-1].copy()
    q = queries_for(db, 1, 12, nq=8)
    auto = build(64, db, ids, "auto")
    scan = build(64, db, ids, "scan")
    mih = build(64, db, ids, "mih")
    for r in (0, 3, 20):
        res = [ix.radius(q, r) for ix in (auto, scan, mih)]
        for a, b in zip(res[0], res[1]):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(res[2], res[1]):
            np.testing.assert_array_equal(a, b)
        s = auto.stats()
        if r <= 3:  # ~1k probes per query against a 20k-row scan: the tables must win
            assert s["last_scanned"] == 0 and s["last_probes"] > 0
        else:  # C(16, <=6) * 3 + ... probes exceed the scan: the fallback must be taken
            assert s["last_scanned"] == len(q)
    np.testing.assert_array_equal(auto.knn(q, 10)[0], scan.knn(q, 10)[0])


def test_threads_do_not_change_results():
    db = clustered(3000, 2, 21)
    q = queries_for(db, 2, 22, nq=40)
    index = build(128, db, None, "auto")
    one = index.radius(q, 12, threads=1), index.knn(q, 9, threads=1)
    for t in (2, 0, -1, None):
        many = index.radius(q, 12, threads=t), index.knn(q, 9, threads=t)
        for a, b in zip(one[0] + one[1], many[0] + many[1]):
            np.testing.assert_array_equal(a, b)


# --- incremental updates -------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["mih", "auto"])
def test_adds_and_removes_between_queries(path):
    words = 2
    rng = np.random.default_rng(31)
    db_all = clustered(2400, words, 32)
    ids_all = shuffled_ids(len(db_all), 33)
    q = queries_for(db_all, words, 34, nq=8)
    index = HammingIndex(128)
    index.path = path
    alive = np.zeros(len(db_all), bool)
    start = 0
    for step, size in enumerate([1, 7, 64, 65, 300, 700, 1263]):
        index.add(db_all[start:start + size], ids_all[start:start + size])
        alive[start:start + size] = True
        start += size
        if step % 2:  # remove a random third of what is there (forces compaction past 25%)
            victims = rng.choice(np.flatnonzero(alive), size=alive.sum() // 3, replace=False)
            index.remove(ids_all[victims])
            alive[victims] = False
        assert len(index) == alive.sum()
        check_all(index, db_all[alive], ids_all[alive], q, radii=(0, 5, 12), ks=(1, 10))
    # A removed id may come back with a new code.
    back = np.flatnonzero(~alive)[:5]
    index.add(db_all[back[::-1]], ids_all[back])
    assert all(int(i) in index for i in ids_all[back])


def test_duplicate_ids_rejected_atomically():
    index = HammingIndex(64)
    index.add(uniform(10, 1, 1), np.arange(10))
    with pytest.raises(ValueError, match="already in the index"):
        index.add(uniform(3, 1, 2), [20, 21, 5])
    with pytest.raises(ValueError, match="duplicate id"):
        index.add(uniform(3, 1, 2), [30, 31, 30])
    assert len(index) == 10 and 20 not in index and 30 not in index


def test_remove_missing_raises_key_error_and_removes_nothing():
    index = HammingIndex(64)
    index.add(uniform(10, 1, 1))
    with pytest.raises(KeyError):
        index.remove([1, 2, 99])
    assert len(index) == 10
    index.remove([1, 1, 2])  # repeats count once
    assert len(index) == 8 and 1 not in index


def test_automatic_ids_continue_after_largest():
    index = HammingIndex(64)
    np.testing.assert_array_equal(index.add(uniform(3, 1, 1)), [0, 1, 2])
    index.add(uniform(1, 1, 2), [41])
    index.remove([41])
    np.testing.assert_array_equal(index.add(uniform(2, 1, 3)), [42, 43])  # never reuses 41


# --- self-join -------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [64, 128, 256])
@pytest.mark.parametrize("path", PATHS)
def test_self_join_matches_brute_force(bits, path):
    words = bits // 64
    db = clustered(900, words, bits)
    ids = shuffled_ids(len(db), bits)
    index = build(bits, db, ids, path)
    for r, chunk in ((0, 1), (4, 7), (9, 1000)):
        got = []
        for a, b, d in index.self_join(r, chunk_size=chunk):
            assert 1 <= len(a) <= chunk and a.dtype == np.int64 and d.dtype == np.int32
            got += list(zip(a.tolist(), b.tolist(), d.tolist()))
        ref = brute_pairs(db, ids, r)
        assert len(got) == len(set(got)), "a pair came out twice"
        assert all(a < b for a, b, _ in got)
        assert set(got) == ref
        assert len(ref) > 0  # the planted groups guarantee pairs at every r tested


def test_self_join_dense_duplicates_streams_bounded_chunks():
    """300 identical codes: 44,850 pairs, delivered in chunks of at most 64 with none lost or repeated."""
    db = np.repeat(uniform(1, 1, 5), 300, axis=0)
    index = build(64, db, None, "mih")
    n = 0
    seen = set()
    for a, b, d in index.self_join(0, chunk_size=64):
        assert len(a) <= 64 and (d == 0).all()
        n += len(a)
        seen |= set(zip(a.tolist(), b.tolist()))
    assert n == len(seen) == 300 * 299 // 2


def test_self_join_rejects_concurrent_modification():
    index = build(64, clustered(200, 1, 3), None, "auto")
    it = index.self_join(8, chunk_size=5)
    next(it)
    index.add(uniform(1, 1, 9))
    with pytest.raises(RuntimeError, match="changed"):
        next(it)


# --- persistence ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bits,m", [(64, None), (128, 6), (256, None)])
def test_save_load_round_trip(tmp_path, bits, m):
    words = bits // 64
    db = clustered(800, words, bits)
    ids = shuffled_ids(len(db), 1)
    index = build(bits, db, ids, "auto", m=m)
    index.remove(ids[::3])
    keep = np.ones(len(db), bool)
    keep[::3] = False
    path = tmp_path / "codes.mih"
    index.save(path)
    data = path.read_bytes()
    assert data[:8] == b"IMGSMIH\0"
    # The trailer is the CRC-32 of everything before it, the same one zlib computes.
    assert int.from_bytes(data[-4:], "little") == zlib.crc32(data[:-4])
    assert not [p for p in os.listdir(tmp_path) if ".tmp." in p]  # the temp file was renamed away
    loaded = HammingIndex.load(str(path))
    assert len(loaded) == keep.sum() and loaded.bits == bits
    assert loaded.stats()["m_auto"] == (m is None)
    np.testing.assert_array_equal(np.sort(loaded.ids()), np.sort(ids[keep]))
    q = queries_for(db, words, 3)
    check_all(loaded, db[keep], ids[keep], q, radii=(0, 7), ks=(3,))
    # Automatic ids continue where the saved index stopped.
    assert loaded.add(uniform(1, words, 1))[0] == ids.max() + 1


def test_save_load_empty(tmp_path):
    HammingIndex(128).save(tmp_path / "e.mih")
    loaded = HammingIndex.load(tmp_path / "e.mih")
    assert len(loaded) == 0 and loaded.bits == 128
    assert loaded.knn(uniform(2, 2, 1), 3)[0].shape == (2, 0)


def test_corrupt_files_raise_clear_errors(tmp_path):
    index = build(64, uniform(50, 1, 1), None, "auto")
    good = tmp_path / "good.mih"
    index.save(good)
    data = good.read_bytes()
    bad = tmp_path / "bad.mih"
    # Truncated anywhere: header, payload, trailer.
    for cut in (0, 5, 39, 44, len(data) // 2, len(data) - 1):
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError):
            HammingIndex.load(bad)
    # A single flipped bit anywhere is caught (header fields by their checks or the CRC, payload by the CRC).
    for pos in (0, 8, 12, 16, 24, 32, 40, len(data) // 2, len(data) - 5, len(data) - 1):
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        bad.write_bytes(bytes(flipped))
        with pytest.raises(ValueError):
            HammingIndex.load(bad)
    # Foreign files.
    for foreign in (b"", b"hello world, not an index at all........................", np.arange(100).tobytes()):
        bad.write_bytes(foreign)
        with pytest.raises(ValueError):
            HammingIndex.load(bad)
    # A future version says so.
    future = bytearray(data)
    future[8] = 2
    bad.write_bytes(bytes(future))
    with pytest.raises(ValueError, match="version"):
        HammingIndex.load(bad)
    with pytest.raises(FileNotFoundError):
        HammingIndex.load(tmp_path / "missing.mih")
    with pytest.raises(OSError):
        index.save(tmp_path / "no_such_dir" / "x.mih")
    with pytest.raises((ValueError, OSError)):
        HammingIndex.load(tmp_path)  # a directory


# --- input validation ------------------------------------------------------------------------------

def test_input_validation():
    with pytest.raises(ValueError):
        HammingIndex(96)
    with pytest.raises(ValueError):
        HammingIndex(64, m=1)  # substrings of 64 bits exceed the 32-bit tables
    with pytest.raises(ValueError):
        HammingIndex(64, m=65)
    index = HammingIndex(128)
    with pytest.raises(TypeError):
        index.add(np.zeros((2, 2), np.float64))
    with pytest.raises(ValueError):
        index.add(np.zeros((2, 3), np.uint64))
    with pytest.raises(ValueError):
        index.add(np.zeros((2, 2), np.uint64), ids=[1])
    with pytest.raises(TypeError):
        index.add(np.zeros((1, 2), np.uint64), ids=[1.5])
    index.add(np.zeros((1, 2), np.uint64))
    with pytest.raises(ValueError):
        index.knn(np.zeros((1, 2), np.uint64), -1)
    with pytest.raises(ValueError):
        index.radius(np.zeros((1, 2), np.uint64), -1)
    with pytest.raises(ValueError):
        index.knn(np.zeros((1, 4), np.uint64), 1)
    with pytest.raises(ValueError):
        index.self_join(1, chunk_size=0)
    with pytest.raises(ValueError):
        index.path = "fast"
    # The core binding refuses what the wrapper would have converted.
    with pytest.raises(TypeError):
        index._ix.add([[1, 2]], None)
    with pytest.raises(ValueError):
        index._ix.add(np.zeros((1, 2), np.int64), None)
    with pytest.raises(ValueError):
        index._ix.knn(np.zeros((2, 1), np.uint64)[::2], 1)


def test_int64_codes_view_as_uint64():
    db = uniform(20, 1, 4)
    a = build(64, db, None, "scan")
    b = build(64, db.view(np.int64), None, "scan")
    np.testing.assert_array_equal(a.knn(db, 3)[0], b.knn(db, 3)[0])
    np.testing.assert_array_equal(a.knn(db[:, 0], 3)[0], a.knn(db, 3)[0])  # 1-D: n codes of 64 bits


# --- property tests --------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    bits=st.sampled_from([64, 128, 256]),
    n=st.integers(0, 40),
    m_extra=st.one_of(st.none(), st.integers(0, 12)),
    seed=st.integers(0, 2**32 - 1),
    r=st.integers(0, 40),
    k=st.integers(0, 45),
    path=st.sampled_from(PATHS),
    n_remove=st.integers(0, 10),
)
def test_property_small_random(bits, n, m_extra, seed, r, k, path, n_remove):
    words = bits // 64
    rng = np.random.default_rng(seed)
    # Small alphabets of codes make ties and exact duplicates common.
    base = uniform(4, words, seed)
    db = base[rng.integers(0, 4, n)] ^ (uniform(n, words, seed + 1) & uniform(n, words, seed + 2)
                                          & uniform(n, words, seed + 3))
    ids = rng.choice(1000, size=n, replace=False).astype(np.int64) - 500
    # Forced probing of long substrings can enumerate millions of keys (kNN probes until every code is
    # seen when k >= n): keep substrings <= 8 bits there. 'auto' and 'scan' take any m.
    m = None if m_extra is None else (bits // 8 if path == "mih" else bits // 32) + m_extra
    index = build(bits, db, ids, path, m=m)
    gone = ids[: min(n_remove, n)]
    index.remove(gone)
    keep = ~np.isin(ids, gone)
    q = np.concatenate([db[:2], uniform(2, words, seed + 4)])
    check_all(index, db[keep], ids[keep], q, radii=(r,), ks=(k,))
    got = set()
    for a, b, d in index.self_join(r, chunk_size=5):
        got |= set(zip(a.tolist(), b.tolist(), d.tolist()))
    assert got == brute_pairs(db[keep], ids[keep], r)


# --- the batched scan (csrc/mih.cpp scan_tiles): many query blocks, many tiles, holes, late rows ---------

@pytest.mark.parametrize("bits", [64, 128, 256])
@pytest.mark.parametrize("path", ["scan", "auto"])
def test_batched_scan_blocks_tiles_removed_and_late_rows(bits, path):
    """The fallback scans queries in blocks of 32 over tiles of 16 KiB of codes and maps rows to ids only
    for rows that pass the SIMD filter. 100 queries (4 blocks, the last one partial) over ~5,000 rows
    (several tiles at every width), ids in no row order (ties must still go to the smaller id), removed
    rows inside tiles, and rows added after the tables were built: a scan that skipped a block, a tile
    edge, the removed-row check or the id mapping would disagree with the brute force."""
    words = bits // 64
    db = make("clustered", 5000, words, seed=bits + 7)  # many equal distances: tie order is tested
    ids = shuffled_ids(len(db), seed=bits + 8)
    index = build(bits, db, ids, path)
    q = queries_for(db, words, seed=bits + 9, nq=100)
    index.knn(q[:1], 1)  # build the tables now, so the rows below arrive after the build
    late = make("uniform", 100, words, seed=bits + 10)
    late_ids = np.arange(10**9, 10**9 + len(late), dtype=np.int64)
    index.add(late, late_ids)
    gone = ids[np.random.default_rng(bits).choice(len(ids), 600, replace=False)]  # < 25%: no compaction
    index.remove(gone)
    keep = ~np.isin(ids, gone)
    all_db = np.concatenate([db[keep], late])
    all_ids = np.concatenate([ids[keep], late_ids])
    assert index.stats()["indexed_rows"] == len(db)  # the late rows are scanned, not in the tables
    check_all(index, all_db, all_ids, q, radii=(0, 4, 12, 40), ks=(1, 10, 100))
    if path == "scan":
        assert index.stats()["last_scanned"] == len(q)


@pytest.mark.parametrize("path", ["scan", "auto"])
def test_self_join_scan_path_batches(path):
    """Self-join rows that choose the scan are scanned together, each only against later rows; r = 20
    on 64-bit codes makes 'auto' choose the scan too, so both paths run the batched kernel here."""
    db = make("clustered", 2500, 1, seed=41)
    ids = shuffled_ids(len(db), seed=42)
    index = build(64, db, ids, path)
    index.remove(ids[::17])
    keep = np.ones(len(ids), bool)
    keep[::17] = False
    got, scanned = set(), 0
    for a, b, d in index.self_join(20, chunk_size=5000, threads=2):
        got |= set(zip(a.tolist(), b.tolist(), d.tolist()))
        scanned += index.stats()["last_scanned"]  # stats describe the last chunk's step
    assert got == brute_pairs(db[keep], ids[keep], 20)
    assert scanned > 0
