"""HammingIndex: exact k-nearest, radius and all-pairs search over 64/128/256-bit codes by multi-index hashing.

Multi-index hashing (Norouzi, Punjani & Fleet, "Fast Search in Hamming Space with Multi-Index Hashing",
CVPR 2012 / TPAMI 2014) splits each code into m disjoint substrings with one hash table each; by the
pigeonhole principle a code within distance r of a query agrees with it to within about r / m bits on
some substring, so probing small substring neighbourhoods finds every match. Results are exact. When
probing would cost more than scanning (large r, small index, dense clusters) a query falls back to the
SIMD scan of imgsim_fast.indexes.hamming transparently. The algorithm lives in csrc/mih.cpp; this module only
converts input.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from imgsim_fast import _core

__all__ = ["HammingIndex"]


def _codes(codes, words: int, what: str = "codes") -> np.ndarray:
    """(n, words) C-contiguous uint64; a 1-D array is one code when words > 1, n codes when words == 1."""
    a = np.asarray(codes)
    if a.dtype != np.uint64:
        if a.dtype.kind not in "iu":
            raise TypeError(f"{what} must be unsigned 64-bit integers (numpy uint64), got dtype {a.dtype}")
        if a.dtype.itemsize != 8:
            raise TypeError(f"{what} must be 64-bit words (numpy uint64), got dtype {a.dtype}")
        a = a.view(np.uint64)  # int64 words carry the same bits
    if a.ndim == 1:
        a = a.reshape(-1, 1) if words == 1 else a.reshape(1, -1)
    if a.ndim != 2 or a.shape[1] != words:
        raise ValueError(f"{what} must have shape (n, {words}) for {64 * words}-bit codes, got {a.shape}")
    return np.ascontiguousarray(a)


def _ids(ids, what: str = "ids") -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{what} must be integers, got dtype {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {a.shape}")
    if a.dtype == np.uint64 and a.size and int(a.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{what} must fit int64")
    return np.ascontiguousarray(a, dtype=np.int64)


def _threads(threads: int | None) -> int:
    return 0 if threads is None else int(threads)


class HammingIndex:
    """Exact Hamming search over packed codes with int64 ids, by multi-index hashing.

    bits: 64, 128 or 256. m: number of substrings (tables); None picks round(bits / log2 N), the paper's
    rule, again at every table rebuild as the index grows. Codes can be added and removed at any time,
    queries see every change. Queries run on `threads` cores (None or <= 0: all) without the GIL.
    """

    def __init__(self, bits: int = 64, m: int | None = None, *, _native=None):
        if _native is not None:
            self._ix = _native
            return
        if m is not None and int(m) <= 0:
            raise ValueError(f"m must be a positive number of substrings or None, got {m}")
        self._ix = _core.MihIndex(int(bits), 0 if m is None else int(m))

    @property
    def bits(self) -> int:
        return self._ix.bits

    @property
    def words(self) -> int:
        return self._ix.words

    def __len__(self) -> int:
        return len(self._ix)

    def __contains__(self, id_) -> bool:
        return int(id_) in self._ix

    def __repr__(self) -> str:
        s = self._ix.stats()
        return f"HammingIndex(bits={self.bits}, size={s['size']}, m={s['m'] or 'auto'})"

    def ids(self) -> np.ndarray:
        """Ids of the codes in the index, in insertion order (after compaction)."""
        return self._ix.ids()

    def add(self, codes, ids=None) -> np.ndarray:
        """Add codes (n, words) uint64 with int64 ids; returns the ids.

        ids=None numbers them after the largest id ever added (from 0). A duplicate id, in the index or
        within the batch, raises ValueError and adds nothing.
        """
        c = _codes(codes, self.words)
        if ids is None:
            first = self._ix.add(c, None)
            return np.arange(first, first + len(c), dtype=np.int64)
        i = _ids(ids)
        if len(i) != len(c):
            raise ValueError(f"{len(i)} ids for {len(c)} codes")
        self._ix.add(c, i)
        return i

    def remove(self, ids) -> None:
        """Remove ids; KeyError (and nothing removed) if one is not in the index."""
        self._ix.remove(_ids(ids))

    def knn(self, queries, k: int, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest codes of each query: (ids (q, kk) int64, dists (q, kk) int32), kk = min(k, len).

        Rows ascend by (distance, id): ties go to the smaller id.
        """
        if int(k) < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        return self._ix.knn(_codes(queries, self.words, "queries"), int(k), _threads(threads))

    def radius(self, queries, r: int, threads: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every code within distance r of each query, as CSR (lims (q + 1,), ids, dists).

        Hits of query i are ids[lims[i]:lims[i + 1]], sorted by (distance, id).
        """
        if int(r) < 0:
            raise ValueError(f"r must be >= 0, got {r}")
        return self._ix.radius(_codes(queries, self.words, "queries"), int(r), _threads(threads))

    def self_join(
        self, r: int, chunk_size: int = 1 << 20, threads: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Every pair of codes within distance r, exactly once, in chunks (ids_a, ids_b, dists).

        ids_a < ids_b in every pair. Chunks hold at most chunk_size pairs and memory stays bounded by a
        few chunks however many pairs there are. Adding or removing codes while iterating raises
        RuntimeError at the next chunk.
        """
        if int(r) < 0:
            raise ValueError(f"r must be >= 0, got {r}")
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        cursor = self._ix.self_join(int(r), _threads(threads))
        n = int(chunk_size)

        def chunks():
            while True:
                chunk = cursor.next(n)
                if chunk is None:
                    return
                yield chunk

        return chunks()

    def stats(self) -> dict:
        """m, substring bits, sizes, memory in bytes, and what the last query did.

        last_scanned counts queries of the last call answered by the linear scan (the fallback);
        last_probes and last_candidates the buckets looked up and codes verified through the tables.
        """
        return self._ix.stats()

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to `path` atomically (temp file, fsync, rename): header, codes, ids, CRC-32."""
        self._ix.save(os.fspath(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HammingIndex":
        """Read an index written by save(). A truncated, corrupt or foreign file raises ValueError,
        a missing or unreadable one OSError."""
        return cls(_native=_core.MihIndex.load(os.fspath(path)))

    # Tests and benchmarks: force the search path ('auto', 'mih' or 'scan'). Results never change.
    @property
    def path(self) -> str:
        return self._ix.path

    @path.setter
    def path(self, value: str) -> None:
        self._ix.path = value
