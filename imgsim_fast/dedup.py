"""Near-duplicate groups from perceptual hash codes: pairs within a Hamming radius, grouped by union-find.

This is the first, report-only form of deduplication: it never touches the user's files.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from .hamming import hamming_matrix, hamming_radius

# imagededup's default for 64-bit pHash is 10; on our edited-copy tests (resize, recompression, small
# brightness changes) true pairs stay within 6 and unrelated photos sit above 20, so 10 keeps a margin
# on both sides.
DEFAULT_THRESHOLD = 10


@dataclass
class DuplicateGroup:
    """Indices of files judged duplicates of one another, and each member's distance to the first."""

    members: list[int]
    distances: list[int]
    exact: bool = False  # all members have identical bytes
    max_pair_distance: int = 0


@dataclass
class DedupResult:
    paths: list[str]
    groups: list[DuplicateGroup] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "groups": [
                {
                    "files": [self.paths[i] for i in g.members],
                    "distances": g.distances,
                    "exact": g.exact,
                    "max_pair_distance": g.max_pair_distance,
                }
                for g in self.groups
            ]
        }


def file_digest(path: str, chunk: int = 1 << 20) -> str:
    """BLAKE2b-128 of a file's bytes: equal digests mean byte-identical files."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        p = self.parent
        root = i
        while p[root] != root:
            root = p[root]
        while p[i] != root:  # path compression
            p[i], i = root, p[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # The smaller index becomes the root, so groups come out ordered by their first member.
            self.parent[max(ra, rb)] = min(ra, rb)


def near_duplicate_pairs(codes: np.ndarray, threshold: int, threads: int | None = None):
    """Every pair (i < j) of codes within `threshold` bits, as arrays (i, j, distance)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint64)
    if codes.ndim == 1:
        codes = codes[:, None]
    lims, ids, dists = hamming_radius(codes, codes, threshold, threads=threads)
    rows = np.repeat(np.arange(len(codes)), np.diff(lims))
    keep = ids > rows
    return rows[keep], ids[keep], dists[keep]


def group_duplicates(paths: list[str], codes: np.ndarray, threshold: int = DEFAULT_THRESHOLD,
                     digests: list[str] | None = None, threads: int | None = None) -> DedupResult:
    """Group files whose codes lie within `threshold` bits (transitively), largest groups first."""
    if len(paths) != len(codes):
        raise ValueError(f"{len(paths)} paths but {len(codes)} codes")
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    n = len(paths)
    uf = _UnionFind(n)
    ii, jj, _ = near_duplicate_pairs(codes, threshold, threads) if n else ([], [], [])
    for i, j in zip(ii, jj):
        uf.union(int(i), int(j))
    if digests is not None:
        first: dict[str, int] = {}
        for i, d in enumerate(digests):
            if d in first:
                uf.union(first[d], i)
            else:
                first[d] = i
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(uf.find(i), []).append(i)
    codes2 = np.ascontiguousarray(codes, dtype=np.uint64).reshape(n, -1) if n else None
    groups = []
    for ms in members.values():
        if len(ms) < 2:
            continue
        sub = codes2[ms]
        dm = hamming_matrix(sub, sub)
        groups.append(DuplicateGroup(
            members=ms,
            distances=[int(x) for x in dm[0]],
            exact=digests is not None and len({digests[i] for i in ms}) == 1,
            max_pair_distance=int(dm.max()),
        ))
    groups.sort(key=lambda g: (-len(g.members), g.members[0]))
    return DedupResult(paths=list(paths), groups=groups)
