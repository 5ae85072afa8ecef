"""Native Hamming kernels vs the NumPy reference (imgsim_fast.features.codes.hamming_reference), under every SIMD
target this machine can run: results must be bit-exact, with ties broken by the smaller index."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgsim_fast import _core
from imgsim_fast.features.codes import hamming_reference
from imgsim_fast.indexes.hamming import (
    available_targets,
    hamming_distance,
    hamming_matrix,
    hamming_radius,
    hamming_topk,
    simd_target,
    use_target,
)

TARGETS = available_targets()
SIZES = [0, 1, 7, 63, 64, 65, 1031]  # empty, one, below / at / above a SIMD block and a 64-row tile
WORDS = [1, 2, 3, 4]  # 3 takes the generic path


@pytest.fixture(params=TARGETS)
def target(request):
    with use_target(request.param):
        yield request.param


def random_codes(rng, n, words, low_entropy=False):
    """Random codes; low_entropy draws from few bits so that many distances tie."""
    if low_entropy:
        return (rng.integers(0, 4, size=(n, words), dtype=np.uint64) << np.uint64(62)) | np.uint64(1)
    return rng.integers(0, 2**64, size=(n, words), dtype=np.uint64)


def ref_topk(q, db, k):
    """Exact top-k: a stable sort of (distance, index) per query, so ties go to the smaller index."""
    d = hamming_reference(q, db)
    order = np.argsort(d, axis=1, kind="stable")[:, : min(k, db.shape[0])]
    return order.astype(np.int64), np.take_along_axis(d, order, axis=1).astype(np.int32)


def ref_radius(q, db, r):
    d = hamming_reference(q, db)
    lims, ids, dists = [0], [], []
    for row in d:
        hit = np.nonzero(row <= r)[0]
        hit = hit[np.argsort(row[hit], kind="stable")]
        ids.append(hit)
        dists.append(row[hit])
        lims.append(lims[-1] + len(hit))
    return np.array(lims, np.int64), np.concatenate(ids).astype(np.int64), np.concatenate(dists).astype(np.int32)


def test_targets_reported():
    assert TARGETS[0] == "serial"
    assert _core.detected_target() == TARGETS[-1]
    assert simd_target() in TARGETS
    for t in TARGETS:
        with use_target(t):
            assert simd_target() == t


def test_unsupported_or_unknown_target_raises():
    with pytest.raises(ValueError, match="unknown SIMD target"):
        _core.set_simd_target("neon")
    if "avx512" not in TARGETS:
        with pytest.raises(ValueError, match="not supported"):
            _core.set_simd_target("avx512")


@pytest.mark.parametrize("words", WORDS)
@pytest.mark.parametrize("n", SIZES)
def test_distance_and_matrix(target, n, words):
    rng = np.random.default_rng(1000 * n + words)
    db = random_codes(rng, n, words)
    q = random_codes(rng, 9, words)
    ref = hamming_reference(q, db)
    got = hamming_distance(q[0], db)
    assert got.dtype == np.int32 and got.shape == (n,)
    np.testing.assert_array_equal(got, ref[0])
    np.testing.assert_array_equal(hamming_distance(q[:1], db), ref[0])  # (1, w) query
    m = hamming_matrix(q, db)
    assert m.dtype == np.uint16 and m.shape == (9, n)
    np.testing.assert_array_equal(m, ref)


@pytest.mark.parametrize("words", WORDS)
@pytest.mark.parametrize("n", SIZES)
def test_topk(target, n, words):
    rng = np.random.default_rng(2000 * n + words)
    db = random_codes(rng, n, words, low_entropy=(n % 2 == 1))  # odd n: heavy ties
    q = random_codes(rng, 5, words)
    for k in sorted({0, 1, 5, n, n + 3, 300}):  # 300 > 256 takes the counting path when n allows
        ids, dists = hamming_topk(q, db, k)
        rids, rd = ref_topk(q, db, k)
        assert ids.dtype == np.int64 and dists.dtype == np.int32
        assert ids.shape == (5, min(k, n))
        np.testing.assert_array_equal(ids, rids, err_msg=f"k={k}")
        np.testing.assert_array_equal(dists, rd, err_msg=f"k={k}")


@pytest.mark.parametrize("words", WORDS)
@pytest.mark.parametrize("n", SIZES)
def test_radius(target, n, words):
    rng = np.random.default_rng(3000 * n + words)
    db = random_codes(rng, n, words, low_entropy=(n % 2 == 1))
    q = np.concatenate([random_codes(rng, 4, words), db[:1]])  # one query that has an exact match
    for r in (0, 28 * words, 64 * words, 10**9):
        lims, ids, dists = hamming_radius(q, db, r)
        rl, ri, rd = ref_radius(q, db, r)
        np.testing.assert_array_equal(lims, rl, err_msg=f"r={r}")
        np.testing.assert_array_equal(ids, ri, err_msg=f"r={r}")
        np.testing.assert_array_equal(dists, rd, err_msg=f"r={r}")
    if n:
        # a do-nothing radius search would return no hits: r = 0 must find the db row itself
        lims, ids, _ = hamming_radius(q[-1:], db, 0)
        assert 0 in ids[lims[0] : lims[1]]


def test_pruning_with_many_ties(target):
    """Every row at the same distance: top-k must return the k smallest indices."""
    db = np.full((5000, 2), 0xF0F0F0F0F0F0F0F0, dtype=np.uint64)
    ids, dists = hamming_topk(np.zeros((3, 2), np.uint64), db, 10)
    np.testing.assert_array_equal(ids, np.tile(np.arange(10), (3, 1)))
    assert (dists == 64).all()
    # exact matches at the end must displace them
    db[-3:] = 0
    ids, dists = hamming_topk(np.zeros((1, 2), np.uint64), db, 4)
    np.testing.assert_array_equal(ids, [[4997, 4998, 4999, 0]])
    np.testing.assert_array_equal(dists, [[0, 0, 0, 64]])


@pytest.mark.parametrize("words", [1, 2, 3, 4])
def test_threads_agree(target, words):
    rng = np.random.default_rng(4000 + words)
    db = random_codes(rng, 20011, words)
    q = random_codes(rng, 67, words)
    a = hamming_topk(q, db, 10, threads=1)
    b = hamming_topk(q, db, 10, threads=2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(hamming_topk(q, db, 10, threads=None)[0], a[0])
    rids, rd = ref_topk(q[:3], db, 10)  # and not merely equal to each other
    np.testing.assert_array_equal(a[0][:3], rids)
    np.testing.assert_array_equal(a[1][:3], rd)
    ra = hamming_radius(q, db, 25 * words, threads=1)
    rb = hamming_radius(q, db, 25 * words, threads=2)
    for x, y in zip(ra, rb):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(hamming_matrix(q, db, threads=1), hamming_matrix(q, db, threads=2))
    np.testing.assert_array_equal(hamming_matrix(q[:1], db, threads=2), hamming_reference(q[:1], db))


def test_large_db_topk_exact(target):
    """A scan long enough to cross many tiles, checked against the reference on a few queries."""
    rng = np.random.default_rng(5)
    db = random_codes(rng, 100_003, 1)
    q = random_codes(rng, 3, 1)
    ids, dists = hamming_topk(q, db, 10)
    rids, rd = ref_topk(q, db, 10)
    np.testing.assert_array_equal(ids, rids)
    np.testing.assert_array_equal(dists, rd)


def test_non_contiguous_and_other_dtypes(target):
    rng = np.random.default_rng(6)
    base = random_codes(rng, 300, 8)
    db = base[::3, 1:5]  # strided rows and columns
    q_f = np.asfortranarray(random_codes(rng, 6, 4))
    ref = hamming_reference(q_f, np.ascontiguousarray(db))
    np.testing.assert_array_equal(hamming_matrix(q_f, db), ref)
    np.testing.assert_array_equal(hamming_distance(q_f[2], db), ref[2])
    np.testing.assert_array_equal(hamming_topk(q_f, db, 7)[0], ref_topk(q_f, np.ascontiguousarray(db), 7)[0])
    # int64 is reinterpreted bit for bit (negative = top bit set); uint8 / int32 widen; lists work
    signed = db.view(np.int64)
    np.testing.assert_array_equal(hamming_matrix(q_f, signed), ref)
    small = rng.integers(0, 2**31, size=(40, 1), dtype=np.int32)
    np.testing.assert_array_equal(
        hamming_matrix(small, small.astype(np.uint8)),
        hamming_reference(small.astype(np.uint64), small.astype(np.uint8).astype(np.uint64)),
    )
    np.testing.assert_array_equal(hamming_distance([3], [0, 1, 7, 2**64 - 1]), [2, 1, 1, 62])
    # 1-D db: one word per code
    flat = random_codes(rng, 50, 1)
    np.testing.assert_array_equal(hamming_matrix(flat[:4], flat.ravel()), hamming_reference(flat[:4], flat))


def test_errors():
    db = np.zeros((10, 2), np.uint64)
    q = np.zeros((3, 2), np.uint64)
    with pytest.raises(TypeError, match="integer codes"):
        hamming_matrix(q.astype(np.float64), db)
    with pytest.raises(TypeError, match="integer codes"):
        hamming_distance(np.zeros(2, bool), db)
    with pytest.raises(ValueError, match="negative"):
        hamming_matrix(np.full((1, 2), -1, np.int32), db)
    with pytest.raises(ValueError, match="same width"):
        hamming_matrix(np.zeros((3, 3), np.uint64), db)
    with pytest.raises(ValueError, match="2-D"):
        hamming_topk(np.zeros((2, 2, 2), np.uint64), db, 1)
    with pytest.raises(ValueError, match="2-D"):
        hamming_topk(q, np.zeros(20, np.uint64), 1)  # 1-D db only for 1-word codes
    with pytest.raises(ValueError, match="one code"):
        hamming_distance(q, db)
    with pytest.raises(ValueError, match="at least one"):
        hamming_matrix(np.zeros((3, 0), np.uint64), np.zeros((2, 0), np.uint64))
    with pytest.raises(ValueError, match="k must be >= 0"):
        hamming_topk(q, db, -1)
    with pytest.raises(ValueError, match="r must be >= 0"):
        hamming_radius(q, db, -1)
    with pytest.raises(TypeError, match="k must be an int"):
        hamming_topk(q, db, 2.5)
    with pytest.raises(TypeError, match="threads"):
        hamming_topk(q, db, 2, threads="2")
    with pytest.raises(ValueError, match="not integers"):
        hamming_distance([2**70], [1])


def test_core_validates_without_the_wrapper():
    """The bindings check their own input: the Python layer is a convenience, not the safety net."""
    db = np.zeros((10, 2), np.uint64)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        _core.hamming_matrix([[1, 2]], db)
    with pytest.raises(ValueError, match="dtype uint64"):
        _core.hamming_matrix(db.astype(np.int64), db)
    with pytest.raises(ValueError, match="dtype uint64"):
        _core.hamming_matrix(db.astype(">u8"), db)
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.hamming_matrix(np.asfortranarray(np.zeros((3, 2), np.uint64)), db)
    with pytest.raises(ValueError, match="1-D"):
        _core.hamming_distance(db, db)
    with pytest.raises(ValueError, match="k must be >= 0"):
        _core.hamming_topk(db, db, -3)
    with pytest.raises(ValueError, match="r must be >= 0"):
        _core.hamming_radius(db, db, -3)
    with pytest.raises(ValueError, match="1023 words"):
        _core.hamming_matrix(np.zeros((1, 1024), np.uint64), np.zeros((1, 1024), np.uint64))


def run_with_env(value):
    code = "from imgsim_fast.indexes.hamming import simd_target; print(simd_target())"
    env = dict(os.environ, IMGSIM_ISA=value)
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip(), p.stderr


@pytest.mark.parametrize("name", TARGETS)
def test_env_override(name):
    out, err = run_with_env(name)
    assert out == name
    assert "Warning" not in err


def test_env_override_bad_values():
    out, err = run_with_env("quantum")  # unknown: ignored, with a warning
    assert out == TARGETS[-1]
    assert "IMGSIM_ISA='quantum'" in err
    if "avx512" not in TARGETS:  # unsupported: best available, with a warning
        out, err = run_with_env("avx512")
        assert out == TARGETS[-1]
        assert "not supported" in err


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    n=st.integers(0, 80),
    m=st.integers(0, 4),
    words=st.integers(1, 5),
    k=st.integers(0, 90),
    r=st.integers(0, 330),
    seed=st.integers(0, 2**32 - 1),
    bits=st.sampled_from([2, 64]),  # few bits: many ties
)
def test_property_small(n, m, words, k, r, seed, bits):
    rng = np.random.default_rng(seed)
    mask = np.uint64(2**bits - 1)
    db = rng.integers(0, 2**64, size=(n, words), dtype=np.uint64) & mask
    q = rng.integers(0, 2**64, size=(m, words), dtype=np.uint64) & mask
    ref = hamming_reference(q, db)
    rids, rd = ref_topk(q, db, k)
    rl, ri, rdd = ref_radius(q, db, r) if m else (np.zeros(1, np.int64), None, None)
    for t in TARGETS:
        with use_target(t):
            np.testing.assert_array_equal(hamming_matrix(q, db), ref)
            ids, dists = hamming_topk(q, db, k)
            np.testing.assert_array_equal(ids, rids)
            np.testing.assert_array_equal(dists, rd)
            lims, ids, dists = hamming_radius(q, db, r)
            np.testing.assert_array_equal(lims, rl)
            if m:
                np.testing.assert_array_equal(ids, ri)
                np.testing.assert_array_equal(dists, rdd)
