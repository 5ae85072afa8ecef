"""Groups from the pair test's decisions: stars around a keeper, the duplicate tier first, then look-alikes.

The decisions stay arrays (detect.PairDecisions) and the grouping runs in numba kernels over a CSR
adjacency, so millions of pairs cost arrays, not Python objects (issue 12, "grouping at scale"); a Match
is made only for a file that ends in a group. Only the keep-best ranker runs in Python: once per component,
and once per duplicate star that is not its whole component (_better_keepers).
"""
from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass, field

import numba
import numpy as np

from imgsim_fast.jobs.dedup.detect import KEEPER, Match, PairDecisions, PairJudge

__all__ = ["Group", "group_pairs", "group_decisions"]


@dataclass
class Group:
    """One group, best first: members[0] is the keeper, and every other member matched it directly.

    tier 'duplicate': each member is the same picture as the keeper (Match.duplicate); only this tier is
    ever acted on. tier 'similar': look-alikes of the keeper (bursts, variants, pages of one template),
    reported for review.
    """

    members: list[int]
    matches: list[Match] = field(default_factory=list)  # matches[k]: members[k] against the keeper
    tier: str = "duplicate"


def group_pairs(n: int, pairs: tuple[np.ndarray, np.ndarray], judge: PairJudge, ranker) -> list[Group]:
    """Duplicate groups, then look-alike groups, from candidate pairs; each a star around its keeper.

    ranker(members) -> {member: sort key}: keep-best among files found together (keep.keep_ranks).
    Duplicate tier: components of the pairs the hashes and embeddings accept (their pixel checks pending,
    run for the pairs a star rests on; see group_decisions); in each, the best-ranked file that has a duplicate left
    becomes a keeper and takes every remaining file that is a duplicate of it directly; the rest go round
    again. So no member is ever grouped through a third file: a chain A~B~C of gradual edits, or a run of
    look-alikes each close to the next, never makes A and C one group unless both match the keeper.
    Similar tier: the same over the files no duplicate group absorbed (keepers and loners), with pairs of
    either tier, so a burst of shots shows up once, by its best frame.
    """
    ii, jj = pairs
    return group_decisions(n, judge.decide(ii, jj, lazy=True), judge, ranker)


def group_decisions(n: int, d: PairDecisions, judge: PairJudge, ranker) -> list[Group]:
    """group_pairs over decisions already made (judge.decide).

    With nothing pending and a ranker whose order does not depend on the files ranked together, the result
    is the one the former per-pair dict grouping gave (tests/test_grouping.py keeps it as the oracle):
    components and their members in the order files first occur in the pairs (the ranker sees the same
    lists, and breaks ties by that order), and where a pair occurs twice its last decision counts. With
    checks pending (decide(lazy=True)), d is settled in place where stars need it; the groups equal those of
    checking every pair first when the ranker's order does not depend on the rest of the component.
    keep-best's does (its group votes on shape and orientation), and a component can hold files its stars do
    not take: once every star rests on checked pairs, a star whose own best file is not its keeper has that
    file promoted (drawn first from then on) and the stars are drawn again (_better_keepers).
    """
    if n >= 2**31 or len(d) >= 2**31:
        raise ValueError("grouping holds file and pair numbers as int32: at most 2^31 - 1 of each")
    self_pairs = d.i == d.j
    if self_pairs.any():  # a file paired with itself says nothing about duplicates
        d = d.take(~self_pairs)
    ranker = _RankMemo(ranker, keep=d.pending is not None and bool(d.pending.any()))
    with _no_cycle_collection():
        # Duplicate stars over the pairs the hashes and embeddings accept, their pixel checks left pending
        # (decide(lazy=True)): only the pairs the stars rest on (keeper, member) are checked. One that fails
        # leaves the duplicate tier and the stars are drawn again, until every pair they rest on has passed:
        # each member still matches its keeper by the whole test, at a fraction of the checks (held-out
        # folder, --method phash: 711 where checking every candidate takes 3,930). Then a keeper that is not
        # its own star's best gives way to it (each file promoted once, so this ends too).
        while True:
            stars = _stars(n, d, np.flatnonzero(d.duplicate), None, ranker, judge)
            _, _, via, idx, _ = stars
            used = idx[via[via >= 0]]  # d's rows of the (keeper, member) pairs
            if d.pending is not None and d.pending[used].any():
                judge.settle(d, used)
            elif not ranker.promote(_better_keepers(stars, ranker)):
                break
            ranker.next_drawing()
        groups, absorbed = _groups(stars, d, judge, "duplicate")
        free = np.ones(n, bool)
        free[absorbed] = False
        # Between files no duplicate star took, every pair was checked (a keeper takes every free neighbour):
        # settle is a guard that finds nothing pending.
        both = np.flatnonzero(free[d.i] & free[d.j])
        judge.settle(d, both)
        ranker.for_similar_tier()
        more, _ = _groups(_stars(n, d, np.flatnonzero(d.rule > 0), free, ranker, judge), d, judge, "similar")
    groups += more
    groups.sort(key=lambda g: (g.tier != "duplicate", -len(g.members), g.members[0]))
    return groups


class _RankMemo:
    """Each component's files in keep-best order (the ranker's keys, sorted), asked once per distinct
    component while the stars are drawn again (most components come back unchanged). Only the order is
    kept, not the keys, and only for the last two drawings; with no check pending and no keeper promoted
    there is no second drawing and nothing is kept.

    Promoted files (promote) go first in their component, in the order they were promoted: the first
    promotion in a component stays its first file whatever later stars vote (stars' own votes can disagree
    with each other: a squashed copy and an edit of the same shape outvote the original in one star and not
    in the next), and each file is promoted once, so the drawings end."""

    def __init__(self, ranker, keep: bool):
        self.ranker, self.keep, self.last, self.now = ranker, keep, {}, {}
        self.first: dict[int, int] = {}  # promoted file -> when
        self.best: dict[tuple, int] = {}  # a star's files -> its best by keep-best among them

    def order(self, members: list[int]) -> list[int]:
        if not self.keep:
            got = sorted(members, key=self.ranker(members).__getitem__)
        else:
            key = tuple(members)
            got = self.now.get(key)
            if got is None:
                got = self.last.get(key)
                if got is None:
                    got = sorted(members, key=self.ranker(members).__getitem__)
                self.now[key] = got
        if self.first and not self.first.keys().isdisjoint(members):
            got = sorted((x for x in got if x in self.first), key=self.first.__getitem__) + \
                [x for x in got if x not in self.first]
        return got

    def best_of(self, star: list[int]) -> int:
        """The star's best file, ranked among its own files (ties stay with the keeper, listed first)."""
        key = tuple(star)
        got = self.best.get(key)
        if got is None:
            got = self.best[key] = min(star, key=self.ranker(star).__getitem__)
        return got

    def promote(self, files: list[int]) -> bool:
        """Put `files` first from the next drawing on; False when none is new (each file is promoted once).
        From here on the orders are kept: the next drawing is mostly the same components again."""
        new = [x for x in files if x not in self.first]
        for x in new:
            self.first[x] = len(self.first)
        self.keep = self.keep or bool(new)
        return bool(new)

    def for_similar_tier(self) -> None:
        """Promotions are about keepers of duplicates: look-alike groups are led by keep-best's own choice."""
        self.first = {}

    def next_drawing(self) -> None:
        self.last, self.now = self.now, {}


def _better_keepers(stars: tuple, ranker: _RankMemo) -> list[int]:
    """Each duplicate star's best file by keep-best among the star's own files, where that is not its keeper.

    A component can hold files its stars do not take: look-alikes joined through pairs no star rested on
    (their checks never ran), or the far end of a chain of edits. keep-best's group votes (the shape most
    files share, their orientation) count them, and can elect a squashed or turned copy over the original
    (held-out keep bench: GreenMeadow kept its squashed copy). Ranked among the files that matched the
    keeper, the original wins the votes again; drawn first, it takes the members that match it directly."""
    g_offs, mem, _, _, component = stars
    better = []
    # A star that is its whole component was ranked as it stands.
    partial = np.flatnonzero(np.diff(g_offs) < component[mem[g_offs[:-1]]])
    for s, e in zip(g_offs[partial].tolist(), g_offs[partial + 1].tolist()):
        star = mem[s:e].tolist()
        best = ranker.best_of(star)
        if best != star[0]:
            better.append(best)
    return better


@contextlib.contextmanager
def _no_cycle_collection():
    """Pause the cyclic garbage collector while groups and matches are made: millions of new objects (none
    in a cycle) set it off again and again over a growing heap, which doubled grouping's time at 10^7
    synthetic pairs (22 s -> 11 s, keep-best aside)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _stars(n: int, d: PairDecisions, rows: np.ndarray | None, free: np.ndarray | None, ranker: _RankMemo,
           judge: PairJudge) -> tuple:
    """Star groups over the pairs d[rows] (None: all) between files in `free` (None: all), as arrays:
    (group offsets into mem, mem: keeper then members, via: the edge into idx each member was taken by, idx:
    d's row of each edge, each file's component size). Byte-identical files are candidates only as a star on
    the first of them (candidate_pairs), so a keeper also takes every remaining byte-identical copy of itself
    or of a member: the same bytes match the keeper exactly as the member does."""
    a, b = (d.i, d.j) if rows is None else (d.i[rows], d.j[rows])
    order = _first_seen(a, b, n)  # files in the order they first occur, as the former dict keys were
    idx = np.arange(len(a)) if rows is None else rows
    if free is not None:
        order = order[free[order]]
        both = free[a] & free[b]
        a, b, idx = a[both], b[both], idx[both]
    last = _last_of_each_pair(a, b, n)
    if last is not None:
        a, b, idx = a[last], b[last], idx[last]
    indptr, nbr, eid = _csr(n, a.astype(np.int32), b.astype(np.int32))
    members, offs = _components(order.astype(np.int32), indptr, nbr)
    # Keep-best order within each component: the ranker is Python (it may look at pixels), once a component.
    sizes = np.diff(offs)
    big = np.flatnonzero(sizes >= 2)
    members_l, offs_l = members.tolist(), offs.tolist()
    ranked: list[int] = []
    for c in big.tolist():
        comp = members_l[offs_l[c]:offs_l[c + 1]]
        ranked += ranker.order(comp)
    seq = np.array(ranked, np.int32)
    seq_offs = np.zeros(len(big) + 1, np.int64)
    seq_offs[1:] = np.cumsum(sizes[big])
    dig = judge.digest_ids
    g_offs, mem, via = _select(seq, seq_offs, indptr, nbr, eid, dig, int(dig.max()) + 1 if len(dig) else 0)
    component = np.zeros(n, np.int64)  # each file's component size
    component[members] = np.repeat(sizes, sizes)
    return g_offs, mem, via, idx, component


def _groups(stars: tuple, d: PairDecisions, judge: PairJudge, tier: str) -> tuple[list[Group], np.ndarray]:
    """The Group of each star (_stars), and the files they absorbed (every member but the keeper)."""
    g_offs, mem, via, idx, _ = stars
    # via: the pair (keeper, member) among the decisions, -1 for a byte-identical copy taken with a member
    # (the pair test decides it now), -2 for the keeper.
    direct = via >= 0
    found = d.matches(idx[via[direct]])
    before = np.concatenate([[0], np.cumsum(direct)]).tolist()  # direct matches before each position
    mem_l, via_l = mem.tolist(), via.tolist()
    groups = []
    for s, e in zip(g_offs[:-1].tolist(), g_offs[1:].tolist()):
        a, b = before[s + 1], before[e]
        if b - a == e - s - 1:  # every member matched the keeper in a pair: their matches in a row
            matches = [KEEPER] + found[a:b]
        else:
            keeper, it = mem_l[s], iter(found[a:b])
            matches = [KEEPER] + [next(it) if v >= 0 else judge.match(keeper, x)
                                  for x, v in zip(mem_l[s + 1:e], via_l[s + 1:e])]
        groups.append(Group(mem_l[s:e], matches, tier))
    keepers = np.zeros(len(mem), bool)
    keepers[g_offs[:-1]] = True
    return groups, mem[~keepers]


def _last_of_each_pair(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray | None:
    """Positions of the last occurrence of each unordered pair, or None when no pair occurs twice (the
    candidate_pairs order, sorted and unique, is checked in one pass)."""
    key = np.minimum(a, b).astype(np.int64) * n + np.maximum(a, b)
    if len(key) < 2 or bool((key[1:] > key[:-1]).all()):
        return None
    _, first_in_reversed = np.unique(key[::-1], return_index=True)
    return np.sort(len(key) - 1 - first_in_reversed)


@numba.njit(cache=True, nogil=True)
def _first_seen(a, b, n):  # pragma: no cover - compiled; tested through group_pairs
    """Files in the order they first occur in a[0], b[0], a[1], b[1], ..."""
    seen = np.zeros(n, np.bool_)
    out = np.empty(min(n, 2 * len(a)), np.int64)
    k = 0
    for x in range(len(a)):
        for u in (a[x], b[x]):
            if not seen[u]:
                seen[u] = True
                out[k] = u
                k += 1
    return out[:k]


@numba.njit(cache=True, nogil=True)
def _csr(n, a, b):  # pragma: no cover - compiled; tested through group_pairs
    """Undirected adjacency: row x holds x's neighbours (nbr) and the pair each edge came from (eid)."""
    indptr = np.zeros(n + 1, np.int64)
    for e in range(len(a)):
        indptr[a[e] + 1] += 1
        indptr[b[e] + 1] += 1
    for x in range(n):
        indptr[x + 1] += indptr[x]
    at = indptr[:-1].copy()
    nbr = np.empty(2 * len(a), np.int32)
    eid = np.empty(2 * len(a), np.int32)
    for e in range(len(a)):
        u, v = a[e], b[e]
        nbr[at[u]] = v
        eid[at[u]] = e
        at[u] += 1
        nbr[at[v]] = u
        eid[at[v]] = e
        at[v] += 1
    return indptr, nbr, eid


@numba.njit(cache=True, nogil=True)
def _components(order, indptr, nbr):  # pragma: no cover - compiled; tested through group_pairs
    """Connected components (breadth first), numbered in the order of their first file in `order`; their
    members listed component by component, each in `order`'s order. Returns (members, offsets)."""
    n = len(indptr) - 1
    label = np.full(n, -1, np.int64)
    queue = np.empty(len(order), np.int64)
    c = 0
    for s in order:
        if label[s] >= 0:
            continue
        label[s] = c
        queue[0] = s
        head, tail = 0, 1
        while head < tail:
            x = queue[head]
            head += 1
            for q in range(indptr[x], indptr[x + 1]):
                y = nbr[q]
                if label[y] < 0:
                    label[y] = c
                    queue[tail] = y
                    tail += 1
        c += 1
    offs = np.zeros(c + 1, np.int64)
    for s in order:
        offs[label[s] + 1] += 1
    for k in range(c):
        offs[k + 1] += offs[k]
    at = offs[:-1].copy()
    members = np.empty(len(order), np.int64)
    for s in order:
        members[at[label[s]]] = s
        at[label[s]] += 1
    return members, offs


@numba.njit(cache=True, nogil=True)
def _select(seq, offs, indptr, nbr, eid, dig, ndig):  # pragma: no cover - compiled; tested through group_pairs
    """The star selection of every component (seq[offs[c]:offs[c+1]]: its files, best first).

    One pass down each component: a file that is not yet taken and has a neighbour not yet taken is a
    keeper and takes those neighbours, and every file not yet taken with the digest of one of them. A file
    passed over has no neighbour left and never gets one back, so the former scan from the top after every
    group found the same keepers. Returns (group offsets into mem, mem: keeper then members in seq order,
    via: the edge from the keeper, -1 for a byte-identical copy, -2 for the keeper).
    """
    n = len(indptr) - 1
    taken = np.zeros(n, np.bool_)   # in a group (or this group's keeper)
    chosen = np.zeros(n, np.bool_)  # taken by the group being formed
    via = np.empty(n, np.int64)
    pos = np.empty(n, np.int64)
    dmark = np.full(ndig, -1, np.int64)
    bstart = np.zeros(ndig, np.int64)
    bend = np.zeros(ndig, np.int64)
    bpos = np.empty(len(seq), np.int64)  # positions of each component bucketed by digest, seq order within
    buf = np.empty(len(seq), np.int64)
    mem = np.empty(len(seq), np.int64)
    mvia = np.empty(len(seq), np.int64)
    g_offs = np.zeros(len(seq) // 2 + 1, np.int64)
    nm = 0
    ng = 0
    rnd = 0
    for c in range(len(offs) - 1):
        s, e = offs[c], offs[c + 1]
        dg = np.empty(e - s, np.int64)
        for p in range(s, e):
            pos[seq[p]] = p
            dg[p - s] = dig[seq[p]]
        o = np.argsort(dg, kind="mergesort")
        for t in range(e - s):
            bpos[s + t] = s + o[t]
            dd = dg[o[t]]
            if t == 0 or dd != dg[o[t - 1]]:
                bstart[dd] = s + t
            bend[dd] = s + t + 1
        for p in range(s, e):
            x = seq[p]
            if taken[x]:
                continue
            alone = True
            for q in range(indptr[x], indptr[x + 1]):
                if not taken[nbr[q]]:
                    alone = False
                    break
            if alone:
                continue
            taken[x] = True
            k = 0
            for q in range(indptr[x], indptr[x + 1]):
                y = nbr[q]
                if not taken[y]:
                    chosen[y] = True
                    via[y] = eid[q]
                    buf[k] = pos[y]
                    k += 1
            rnd += 1
            direct = k
            for t in range(-1, direct):
                z = x if t < 0 else seq[buf[t]]
                dd = dig[z]
                if dmark[dd] == rnd:
                    continue
                dmark[dd] = rnd
                for u in range(bstart[dd], bend[dd]):
                    w = seq[bpos[u]]
                    if not taken[w] and not chosen[w]:
                        chosen[w] = True
                        via[w] = -1
                        buf[k] = pos[w]
                        k += 1
            mem[nm] = x
            mvia[nm] = -2
            nm += 1
            for p2 in np.sort(buf[:k]):
                w = seq[p2]
                mem[nm] = w
                mvia[nm] = via[w]
                nm += 1
                taken[w] = True
                chosen[w] = False
            ng += 1
            g_offs[ng] = nm
    return g_offs[:ng + 1], mem[:nm], mvia[:nm]
