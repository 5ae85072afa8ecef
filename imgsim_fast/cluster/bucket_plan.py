"""The join's bucket plan: which bits make each pigeonhole substring, and which buckets are cut again because
they would hold more than `max_bucket` codes (issue 14: pHash bits are skewed, and at 10^8 codes one
(substring, value) bucket held ~10M codes; the reduce task verifying it was killed at 7-11 GB).

Substrings are dealt from the bits' statistics as the single-machine self-join deals them (csrc/mih_cost.cpp):
bits sorted by -log2 P(a random pair agrees on the bit) = -log2(p^2 + (1 - p)^2), dealt in snake order, so the
r + 1 substrings carry equal information and no substring is made of the most skewed bits only.

A bucket (codes agreeing exactly on substring s) that is too large is cut again by the same pigeonhole: two of
its codes within r bits differ in at most r of the remaining bits, so they agree on one of r + 1 disjoint
sub-substrings of those bits; every code of the bucket goes to r + 1 sub-buckets, which are cut again if still
too large, while r + 1 bits remain. Every pair within r lies in the bucket its codes reach by taking, at every
level, the FIRST substring they agree on (the pair's canonical path); a reduce task keeps a pair only in that
bucket, so each pair leaves the reduce side once, however many levels the plan has.

Bucket keys are 64-bit hashes of the path and the masked code values (SplitMix64). A hash collision only
merges two buckets: the canonical-path test is on the codes themselves, so it keeps results exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["BucketPlan", "bit_probabilities", "plan_buckets"]

BITS = 64
_GOLDEN = 0x9E3779B97F4A7C15


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, on uint64 arrays."""
    with np.errstate(over="ignore"):
        z = z + np.uint64(_GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def bucket_key(parent, s: int, masked: np.ndarray) -> np.ndarray:
    """Key of the child bucket `s` of the bucket keyed `parent` (0 at the top) holding codes whose masked bits
    are `masked`."""
    with np.errstate(over="ignore"):
        return _mix(_mix(np.asarray(parent, np.uint64) + np.uint64(s + 1)) ^ masked)


_M64 = (1 << 64) - 1


def _mix_int(z: int) -> int:
    """_mix on one Python int (the reduce side's per-bucket path search: numpy scalars cost ~10x more)."""
    z = (z + _GOLDEN) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def bit_probabilities(codes: np.ndarray) -> np.ndarray:
    """P(bit b is set), b = 0..63, of uint64 codes."""
    codes = np.asarray(codes, np.uint64).ravel()
    if not len(codes):
        return np.full(BITS, 0.5)
    return np.array([((codes >> np.uint64(b)) & np.uint64(1)).mean() for b in range(BITS)])


@lru_cache(maxsize=4096)
def _deal(info: tuple, free: int, m: int) -> tuple:
    """m disjoint masks over the bits set in `free`: bits by information (most first), dealt in snake order
    (0..m-1, m-1..0, ...), so lengths differ by at most one and information is balanced."""
    bits = [b for b in range(BITS) if free >> b & 1]
    bits.sort(key=lambda b: -info[b])  # stable: equal information keeps bit order (the contiguous layout)
    masks = [0] * m
    for j, b in enumerate(bits):
        rnd, pos = divmod(j, m)
        masks[m - 1 - pos if rnd % 2 else pos] |= 1 << b
    return tuple(masks)


@dataclass(frozen=True)
class BucketPlan:
    """radius: the pigeonhole's r. info: per-bit information (None: every bit alike). heavy: keys of buckets
    cut again. max_bucket: the bound the plan was made for (codes a bucket is expected to hold at most)."""

    radius: int
    info: tuple | None = None
    heavy: frozenset = frozenset()
    max_bucket: int = 0

    def __post_init__(self):
        if not 0 <= self.radius < BITS:
            raise ValueError(f"radius must be in 0..{BITS - 1}, got {self.radius}")

    def layout(self, path: tuple = ()) -> tuple:
        """The r + 1 masks of the substrings under the bucket reached by `path` (substring indices)."""
        free = (1 << BITS) - 1
        info = self.info if self.info is not None else (1.0,) * BITS
        for depth in range(len(path)):
            free &= ~_deal(info, free, self.radius + 1)[path[depth]]
        return _deal(info, free, self.radius + 1)

    def splittable(self, path: tuple) -> bool:
        """Whether the bucket at `path` has r + 1 bits left to cut it again."""
        used = 0
        for depth in range(len(path)):
            used |= self.layout(path[:depth])[path[depth]]
        return BITS - bin(used).count("1") >= self.radius + 1

    def _heavy_array(self) -> np.ndarray:
        return np.fromiter(self.heavy, np.uint64, len(self.heavy))

    def keyed(self, codes: np.ndarray, ids: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(keys, ids, codes) of every bucket record of the codes: one per substring, r + 1 instead for each
        record that would fall in a heavy bucket, recursively."""
        out = []
        heavy = self._heavy_array()

        def walk(path, parent, codes, ids):
            for s, mask in enumerate(self.layout(path)):
                k = bucket_key(parent, s, codes & np.uint64(mask))
                cut = np.isin(k, heavy) if len(heavy) else np.zeros(len(k), bool)
                if cut.any():
                    walk(path + (s,), k[cut], codes[cut], ids[cut])
                    keep = ~cut
                    out.append((k[keep], ids[keep], codes[keep]))
                else:
                    out.append((k, ids, codes))

        walk((), np.zeros(len(codes), np.uint64), np.asarray(codes, np.uint64), np.asarray(ids))
        return out

    def records_per_code(self, codes: np.ndarray, block: int = 4096) -> float:
        """Mean records a code of `codes` gets (r + 1 without cuts), keyed `block` codes at a time: a deep plan
        can give a code hundreds of records."""
        codes = np.asarray(codes, np.uint64).ravel()
        total = 0
        for s in range(0, len(codes), block):
            part = codes[s:s + block]
            total += sum(len(k) for k, _, _ in self.keyed(part, np.zeros(len(part), np.int64)))
        return total / max(1, len(codes))

    def path_of(self, key: int, code: int) -> tuple | None:
        """The substring path of the bucket `key` that `code` was keyed into (None: not found)."""

        def search(path, parent):
            for s, mask in enumerate(self.layout(path)):
                k = _mix_int(_mix_int((parent + s + 1) & _M64) ^ (code & mask))
                if k == key:
                    return path + (s,)
                if k in self.heavy:
                    found = search(path + (s,), k)
                    if found is not None:
                        return found
            return None

        return search((), 0)

    def canonical(self, x: np.ndarray, path: tuple) -> np.ndarray:
        """For XORs x of pairs met in the bucket at `path`: True where, at every level, the path's substring
        is the first one the pair agrees on (the pair's canonical bucket is this one)."""
        keep = np.ones(len(x), bool)
        for depth, s in enumerate(path):
            masks = self.layout(path[:depth])
            keep &= (x & np.uint64(masks[s])) == 0
            for mask in masks[:s]:
                keep &= (x & np.uint64(mask)) != 0
        return keep


def plan_buckets(sample: np.ndarray, total: int, radius: int, max_bucket: int | None,
                 use_bit_stats: bool = True, max_depth: int = 4) -> BucketPlan:
    """A plan for `total` codes from a uniform `sample` of them: substrings from the sample's bit statistics,
    and every bucket whose expected size (its sample count x total / len(sample)) passes max_bucket marked for
    cutting, level by level down to max_depth, when cutting it halves it at least (a bucket of near-duplicates
    stays whole: its pairs are the output). The plan decides memory, never results: any plan gives the same
    pairs."""
    sample = np.asarray(sample, np.uint64).ravel()
    info = None
    if use_bit_stats and len(sample):
        p = bit_probabilities(sample)
        info = tuple(float(-np.log2(max(1e-12, q * q + (1 - q) * (1 - q)))) for q in p)
    plan = BucketPlan(radius, info, frozenset(), max_bucket or 0)
    if not max_bucket or not len(sample):
        return plan
    scale = total / len(sample)
    heavy: set[int] = set()

    def largest_child(path, parent_key, codes) -> int:
        most = 0
        for s, mask in enumerate(plan.layout(path)):
            _, counts = np.unique(bucket_key(parent_key, s, codes & np.uint64(mask)), return_counts=True)
            most = max(most, int(counts.max()))
        return most

    def grow(path, parent, codes):
        for s, mask in enumerate(plan.layout(path)):
            if len(path) + 1 > max_depth or not plan.splittable(path + (s,)):
                continue
            k = bucket_key(parent, s, codes & np.uint64(mask))
            keys, counts = np.unique(k, return_counts=True)
            for key, count in zip(keys[counts * scale > max_bucket], counts[counts * scale > max_bucket]):
                sel = k == key
                # Near-duplicates agree on every substring: cutting their bucket copies it r + 1 times over
                # without making it smaller, so a bucket is cut only if its largest child is at most half.
                if largest_child(path + (s,), key, codes[sel]) * 2 > count:
                    continue
                heavy.add(int(key))
                grow(path + (s,), k[sel], codes[sel])
    grow((), np.zeros(len(sample), np.uint64), sample)
    return BucketPlan(radius, info, frozenset(heavy), max_bucket)
