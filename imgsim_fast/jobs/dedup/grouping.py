"""Groups from the pair test's decisions: stars around a keeper, duplicate tier first, then look-alikes.

Moved out of detect.py (issue 12, "grouping at scale"): detect decides pairs, this module groups them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from imgsim_fast.jobs.dedup.detect import KEEPER, Match, PairJudge

__all__ = ["Group", "group_pairs"]


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
    Duplicate tier: components of duplicate pairs (union-find); in each, the best-ranked file that has a
    duplicate left becomes a keeper and takes every remaining file that is a duplicate of it directly; the
    rest go round again. So no member is ever grouped through a third file: a chain A~B~C of gradual edits,
    or a run of look-alikes each close to the next, never makes A and C one group unless both match the
    keeper. Similar tier: the same over the files no duplicate group absorbed (keepers and loners), with
    pairs of either tier, so a burst of shots shows up once, by its best frame.
    """
    ii, jj = pairs
    dup: dict[int, dict[int, Match]] = {}
    near: dict[int, dict[int, Match]] = {}
    for a, b, m in judge.match_pairs(ii, jj):  # the pair test over all candidates at once
        for x, y in ((a, b), (b, a)):
            near.setdefault(x, {})[y] = m
            if m.duplicate:
                dup.setdefault(x, {})[y] = m
    groups = _stars(n, dup, ranker, "duplicate", judge)
    absorbed = {m for g in groups for m in g.members[1:]}
    free = {x: {y: m for y, m in adj.items() if y not in absorbed} for x, adj in near.items() if x not in absorbed}
    groups += _stars(n, free, ranker, "similar", judge)
    groups.sort(key=lambda g: (g.tier != "duplicate", -len(g.members), g.members[0]))
    return groups


def _stars(n: int, adj: dict[int, dict[int, Match]], ranker, tier: str, judge: PairJudge) -> list[Group]:
    """Star groups over `adj` (see group_pairs). Byte-identical files are candidates only as a star on the
    first of them (candidate_pairs), so a keeper also takes every remaining byte-identical copy of itself
    or of a member: the same bytes match the keeper exactly as the member does."""
    comps: dict[int, list[int]] = {}
    if adj:
        # Components in native code (scipy's connected_components over the pair graph); members in the
        # order the adjacency lists them, as before.
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        a = np.fromiter((x for x, nbrs in adj.items() for _ in nbrs), np.int64)
        b = np.fromiter((y for nbrs in adj.values() for y in nbrs), np.int64)
        _, label = connected_components(coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n)),
                                        directed=False)
        for x in adj:
            comps.setdefault(int(label[x]), []).append(x)
    digests = judge.digests
    groups = []
    for comp in comps.values():
        if len(comp) < 2:
            continue
        rank = ranker(comp)
        remaining = sorted(comp, key=rank.__getitem__)
        while len(remaining) >= 2:
            left = set(remaining)
            keeper = next((x for x in remaining if left.intersection(adj.get(x, ()))), None)
            if keeper is None:
                break
            near = adj[keeper]
            chosen = {keeper} | {x for x in remaining if x in near}
            same = {digests[x] for x in chosen}
            matches = {x: near[x] for x in chosen if x != keeper}
            for x in remaining:
                if x not in chosen and digests[x] in same:
                    matches[x] = judge.match(keeper, x)
            members = [keeper] + [x for x in remaining if x in matches]
            remaining = [x for x in remaining if x != keeper and x not in matches]
            groups.append(Group(members, [KEEPER] + [matches[x] for x in members[1:]], tier))
    return groups
