"""Hamming distance and search over packed binary codes: the thin Python face of the native kernels.

Codes are rows of uint64 words (see imgsim_fast.features.codes). This module only converts and validates input;
the scans run in csrc/ (hamming_search.cpp) on the best SIMD target the CPU has, chosen at first use
from CPUID/XGETBV and lowered by the IMGSIM_ISA environment variable (serial, avx2, avx512), the way
faiss honours FAISS_SIMD_LEVEL. Every target returns bit-identical results.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator

import numpy as np

from imgsim_fast import _core

__all__ = [
    "hamming_distance",
    "hamming_matrix",
    "hamming_topk",
    "hamming_radius",
    "simd_target",
    "available_targets",
    "use_target",
]

#: SIMD targets, lowest first (mirrors imgsim::Isa in csrc/hamming.h).
TARGETS = ("serial", "avx2", "avx512")


def _check_env() -> None:
    """Warn once at import about an IMGSIM_ISA value the native side ignored or could not honour.

    The C++ side never fails on it (an unknown name is ignored, an unsupported one falls back to the
    best target), so this warning is the only place a typo shows up.
    """
    asked = os.environ.get("IMGSIM_ISA")
    if asked is None or asked == "":
        return
    if asked not in TARGETS:
        warnings.warn(
            f"IMGSIM_ISA={asked!r} is not one of {', '.join(TARGETS)}; ignored "
            f"(using {_core.simd_target()!r})",
            RuntimeWarning,
            stacklevel=3,
        )
    elif TARGETS.index(asked) > TARGETS.index(_core.detected_target()):
        warnings.warn(
            f"IMGSIM_ISA={asked!r} is not supported by this CPU; using {_core.simd_target()!r}",
            RuntimeWarning,
            stacklevel=3,
        )


_check_env()


def simd_target() -> str:
    """The SIMD target the kernels use now: 'serial', 'avx2' or 'avx512'."""
    return _core.simd_target()


def available_targets() -> list[str]:
    """Targets this CPU (and OS) can run, lowest first: each is a valid argument to use_target()."""
    best = TARGETS.index(_core.detected_target())
    return list(TARGETS[: best + 1])


@contextlib.contextmanager
def use_target(name: str) -> Iterator[str]:
    """Run the enclosed block on SIMD target `name`, then restore the previous one.

    Meant for tests and benchmarks: the target is process-wide, so do not switch it while other threads
    are scanning. Raises ValueError for an unknown target or one this CPU cannot run.
    """
    previous = _core.simd_target()
    _core.set_simd_target(name)
    try:
        yield name
    finally:
        _core.set_simd_target(previous)


def _as_codes(x, what: str) -> np.ndarray:
    """`x` as a C-contiguous uint64 array, refusing any conversion that would change a code.

    Unsigned integers widen losslessly. int64 is reinterpreted bit for bit (hashes stored in signed
    64-bit columns, e.g. SQLite, come back negative when their top bit is set); narrower signed integers
    must be non-negative, since sign extension would invent set bits. Floats and bools are refused:
    a float cannot hold a 64-bit code exactly.
    """
    if isinstance(x, np.ndarray):
        a = x
    else:
        try:
            a = np.asarray(x)
        except (OverflowError, ValueError) as e:
            raise ValueError(f"{what}: cannot read as uint64 codes ({e})") from None
    if a.dtype == object or (not isinstance(x, np.ndarray) and a.dtype.kind == "f"):
        # Python ints beyond int64 make NumPy pick object or even float64 for a list; read them exactly.
        obj = np.asarray(x, dtype=object)
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in obj.ravel()):
            try:
                a = np.array(obj.tolist(), dtype=np.uint64)
            except (OverflowError, TypeError, ValueError) as e:
                raise ValueError(f"{what}: values are not integers in [0, 2**64) ({e})") from None
    kind = a.dtype.kind
    if kind == "u":
        a = a.astype(np.uint64, copy=False)
    elif kind == "i":
        if a.dtype.itemsize == 8:
            a = a.view(np.uint64)
        else:
            if a.size and a.min() < 0:
                raise ValueError(f"{what}: negative values in a {a.dtype} array are not codes")
            a = a.astype(np.uint64)
    else:
        raise TypeError(f"{what} must hold integer codes (uint64 words), got dtype {a.dtype}")
    return np.ascontiguousarray(a)


def _as_rows(x, what: str) -> np.ndarray:
    """Codes as (n, words): a 1-D array is n codes of one word (64-bit hashes, the common case)."""
    a = _as_codes(x, what)
    if a.ndim == 1:
        return a.reshape(-1, 1)
    if a.ndim != 2:
        raise ValueError(f"{what} must be 1-D (n,) or 2-D (n, words), got shape {a.shape}")
    return a


def _threads(threads: int | None) -> int:
    """None or <= 0 means every core; the native side treats 0 as std::thread::hardware_concurrency()."""
    if threads is None:
        return 0
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"threads must be an int or None, got {type(threads).__name__}")
    return max(int(threads), 0)


def _count(v, what: str) -> int:
    """k or r as a non-negative int; TypeError for non-integers (a float k is a bug, not a request)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{what} must be an int, got {type(v).__name__}")
    v = int(v)
    if v < 0:
        raise ValueError(f"{what} must be >= 0, got {v}")
    return min(v, 2**62)  # anything this large already means "all rows"


def _query_vector(q) -> np.ndarray:
    """One code as (words,); a scalar is a 1-word code."""
    a = _as_codes(q, "q")
    if a.ndim == 0:
        a = a.reshape(1)
    elif a.ndim == 2 and a.shape[0] == 1:
        a = a[0]
    elif a.ndim != 1:
        raise ValueError(f"q must be one code, shape (words,) or (1, words), got shape {a.shape}")
    return np.ascontiguousarray(a)


def _db_rows(db, words: int) -> np.ndarray:
    """db as (n, words); 1-D means one word per code, and is only valid for 1-word queries."""
    a = _as_codes(db, "db")
    if a.ndim == 1 and words == 1:
        return a.reshape(-1, 1)
    if a.ndim != 2:
        raise ValueError(f"db must be 2-D (n, {words}) (or 1-D for 1-word codes), got shape {a.shape}")
    return a


def hamming_distance(q, db) -> np.ndarray:
    """Hamming distance from one code `q` ((words,) or (1, words)) to every row of `db` -> (n,) int32.

    int32 rather than uint: differences and comparisons of distances then never wrap.
    """
    qv = _query_vector(q)
    return _core.hamming_distance(qv, _db_rows(db, qv.shape[0]))


def hamming_matrix(a, b, threads: int | None = None) -> np.ndarray:
    """All-pairs distances between rows of `a` (m, words) and `b` (n, words) -> (m, n) uint16.

    uint16 halves the memory of int32 (distances fit: codes of up to 1023 words); the scan is tiled so
    a block of `b` stays in L1 while several rows of `a` use it.
    """
    aa = _as_rows(a, "a")
    return _core.hamming_matrix(aa, _db_rows(b, aa.shape[1]), _threads(threads))


def hamming_topk(queries, db, k: int, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest rows of `db` for each query -> (ids int64 (m, kk), dists int32 (m, kk)), kk = min(k, n).

    Rows are sorted by (distance, index): ties go to the smaller index, so the answer is fully
    determined and equal on every SIMD target and thread count. As for db, 1-D `queries` are many
    1-word codes; pass a single multi-word query as (1, words).
    """
    q = _as_rows(queries, "queries")
    kk = _count(k, "k")
    return _core.hamming_topk(q, _db_rows(db, q.shape[1]), kk, _threads(threads))


def hamming_radius(
    queries, db, r: int, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row of `db` within distance r (inclusive) of each query, as CSR (lims, ids, dists).

    The hits of query i are ids[lims[i]:lims[i + 1]] (int64) with dists (int32), sorted by
    (distance, index); the layout of faiss' RangeSearchResult, so results of many queries live in three
    flat arrays instead of a list of arrays.
    """
    q = _as_rows(queries, "queries")
    rr = _count(r, "r")
    return _core.hamming_radius(q, _db_rows(db, q.shape[1]), rr, _threads(threads))
