"""Grouping over arrays (jobs/dedup/grouping.py) against the former per-pair dict grouping, kept here as the
oracle: the same groups, members, order, keepers, tiers and matches, and the same ranker calls, on random
pair graphs (chains, stars, cliques, byte-identical copies, repeated and reversed pairs) and real codes."""
import numpy as np
import pytest

from imgsim_fast.features.extract import Features, FileFacts
from imgsim_fast.jobs.dedup.detect import (DEFAULTS, KEEPER, TRANSFORMS, Match, PairDecisions, PairJudge,
                                           candidate_pairs)
from imgsim_fast.jobs.dedup.grouping import Group, group_pairs


def _reference_group_pairs(n, pairs, judge, ranker):
    """group_pairs as it was before issue 12 (a Match and dict entries per pair), verbatim."""
    ii, jj = pairs
    dup, near = {}, {}
    for a, b, m in judge.match_pairs(ii, jj):
        for x, y in ((a, b), (b, a)):
            near.setdefault(x, {})[y] = m
            if m.duplicate:
                dup.setdefault(x, {})[y] = m
    groups = _reference_stars(n, dup, ranker, "duplicate", judge)
    absorbed = {m for g in groups for m in g.members[1:]}
    free = {x: {y: m for y, m in adj.items() if y not in absorbed} for x, adj in near.items() if x not in absorbed}
    groups += _reference_stars(n, free, ranker, "similar", judge)
    groups.sort(key=lambda g: (g.tier != "duplicate", -len(g.members), g.members[0]))
    return groups


def _reference_stars(n, adj, ranker, tier, judge):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    comps = {}
    if adj:
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


def _mix(a, b, salt):
    """A deterministic pseudo-random uint64 of (a, b) (splitmix64 finaliser), vectorised."""
    x = (a.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + b.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
         + np.uint64(salt))
    x ^= x >> np.uint64(31)
    x *= np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(29))


class _TableJudge(PairJudge):
    """A pair test read from a table: any rule on any graph, so grouping is tried on shapes hashes rarely
    make. The rule of a pair does not depend on its order; the flip distance and transform do (as a real
    test's may), which checks that a match keeps the orientation its pair was tested in."""

    def __init__(self, digests, rules: dict, p_dup: float, seed: int, cos: bool):
        self.digests = list(digests)
        ids = {}
        self.digest_ids = np.array([ids.setdefault(d, len(ids)) for d in self.digests], np.int64)
        self.rules, self.p_dup, self.seed, self.with_cos = rules, p_dup, seed, cos
        self.page_scores = None  # no embeddings: no file is known to be a picture

    def _matches(self, ii, jj, check=True):
        lo, hi = np.minimum(ii, jj), np.maximum(ii, jj)
        u = _mix(lo, hi, self.seed).astype(np.float64) / 2.0**64
        # rule: 0 none, 2 phash, 3 flip, 5 embedding (duplicates), 6 similar; 1 (exact) iff the same bytes
        rule = np.where(u < self.p_dup, np.where(u < self.p_dup / 3, 2, np.where(u < self.p_dup * 2 / 3, 3, 5)),
                        np.where(u < self.p_dup + (1 - self.p_dup) / 2, 6, 0)).astype(np.int8)
        for x, (a, b) in enumerate(zip(lo.tolist(), hi.tolist())):
            rule[x] = self.rules.get((a, b), rule[x])
        rule[self.digest_ids[ii] == self.digest_ids[jj]] = 1
        asym = _mix(ii, jj, self.seed + 1)
        d0 = (_mix(lo, hi, self.seed + 2) % np.uint64(30)).astype(np.int32)
        dk = (asym % np.uint64(20)).astype(np.int32)
        k = (asym % np.uint64(len(TRANSFORMS))).astype(np.int8)
        cos = (_mix(lo, hi, self.seed + 3) % np.uint64(1000)).astype(np.float64) / 1000 if self.with_cos else None
        changed = np.where(rule == 5, (asym % np.uint64(100)).astype(np.float64) / 100, np.nan)
        return PairDecisions(ii, jj, rule, d0, dk, k, cos, changed if (rule == 5).any() else None)


def _graph(rng, n):
    """Random pairs over n files: chains, stars, small cliques and random edges, with forced rules on the
    chains and stars (their hubs and links), shuffled, some repeated or reversed."""
    pairs, rules = [], {}
    perm = rng.permutation(n)
    at = 0
    while at < n - 1:
        size = int(min(rng.integers(2, 12), n - at))
        nodes = perm[at:at + size].tolist()
        at += size
        shape = rng.integers(4)
        if shape == 0:  # a chain: neighbours duplicates, two apart look-alikes
            for x, y in zip(nodes, nodes[1:]):
                pairs.append((x, y))
                rules[(min(x, y), max(x, y))] = 2
            for x, y in zip(nodes, nodes[2:]):
                pairs.append((x, y))
                rules[(min(x, y), max(x, y))] = 6
        elif shape == 1:  # a star: spokes duplicates of the hub, look-alikes of each other
            hub = nodes[0]
            for x in nodes[1:]:
                pairs.append((hub, x))
                rules[(min(hub, x), max(hub, x))] = 3
            for x, y in zip(nodes[1:], nodes[2:]):
                pairs.append((x, y))
                rules[(min(x, y), max(x, y))] = 6
        elif shape == 2:  # a clique, rules at random
            pairs += [(x, y) for k, x in enumerate(nodes) for y in nodes[k + 1:]]
        else:  # sparse random edges
            pairs += [(x, y) for x, y in zip(rng.choice(nodes, size), rng.choice(nodes, size)) if x != y]
    pairs += [(int(x), int(y)) for x, y in rng.integers(0, n, (n // 4, 2)) if x != y]  # links between blocks
    rng.shuffle(pairs)
    pairs = [(y, x) if rng.random() < 0.3 else (x, y) for x, y in pairs]
    pairs += [pairs[k] for k in rng.integers(0, len(pairs), len(pairs) // 10)]  # repeats, last one counts
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), rules
    ii, jj = (np.array(c, np.int64) for c in zip(*pairs))
    return ii, jj, rules


def _digests(rng, n):
    """Mostly distinct digests, some shared by 2-4 files (byte-identical copies)."""
    d = [f"d{x}" for x in range(n)]
    for _ in range(n // 10):
        src = int(rng.integers(n))
        for x in rng.integers(0, n, int(rng.integers(1, 4))).tolist():
            d[x] = d[src]
    return d


def _with_exact_stars(ii, jj, digests):
    """The pairs plus exact copies as candidate_pairs gives them: a star on the first file with each digest."""
    first = {}
    for x, dg in enumerate(digests):
        first.setdefault(dg, x)
    ex = [(first[dg], x) for x, dg in enumerate(digests) if first[dg] != x]
    assert ex or len(set(digests)) == len(digests)
    if ex:
        ii = np.concatenate([ii, [a for a, _ in ex]]).astype(np.int64)
        jj = np.concatenate([jj, [b for _, b in ex]]).astype(np.int64)
    return ii, jj


def _recording_ranker(keys, calls):
    def ranker(members):
        calls.append(list(members))
        lo = min(keys[x] for x in members)  # relative to the component, as keep_ranks is
        return {x: (keys[x] - lo,) for x in members}
    return ranker


def _same(n, pairs, judge, keys):
    want_calls, got_calls = [], []
    want = _reference_group_pairs(n, pairs, judge, _recording_ranker(keys, want_calls))
    got = group_pairs(n, pairs, judge, _recording_ranker(keys, got_calls))
    assert [(g.tier, g.members) for g in got] == [(g.tier, g.members) for g in want]
    assert [g.matches for g in got] == [g.matches for g in want]
    assert [[m.describe() for m in g.matches] for g in got] == [[m.describe() for m in g.matches] for g in want]
    # The same calls, plus (_better_keepers) one per duplicate star that is not its whole component: its
    # members, keeper first, ranked among themselves.
    extra, rest = [], iter(want_calls)
    expected = next(rest, None)
    for c in got_calls:
        if c == expected:
            expected = next(rest, None)
        else:
            extra.append(c)
    assert expected is None
    stars = [g.members for g in got if g.tier == "duplicate"]
    assert all(c in stars for c in extra)
    return got


@pytest.mark.parametrize("seed", range(12))
def test_random_graphs_group_as_the_former_dict_grouping(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.choice([2, 7, 63, 64, 65, 300]))
    digests = _digests(rng, n)
    ii, jj, rules = _graph(rng, n)
    ii, jj = _with_exact_stars(ii, jj, digests)
    keys = rng.integers(0, 4, n).tolist()  # few distinct keys: ties, broken by the order files occur
    judge = _TableJudge(digests, rules, p_dup=float(rng.choice([0.2, 0.5, 0.8])), seed=seed, cos=seed % 2 == 0)
    got = _same(n, (ii, jj), judge, keys)
    if n >= 63:  # a do-nothing or union-find grouping would fail these
        assert any(g.tier == "duplicate" for g in got) and any(g.tier == "similar" for g in got)
    # Sorted unique pairs (the candidate_pairs form, no repeats) too.
    key = np.unique(np.minimum(ii, jj) * n + np.maximum(ii, jj))
    key = key[key // n != key % n]
    _same(n, (key // n, key % n), judge, keys)


def test_a_file_paired_with_itself_changes_nothing():
    # The former grouping made such a file a group of one; a pair (x, x) is no evidence of anything.
    rng = np.random.default_rng(7)
    n = 65
    ii, jj, rules = _graph(rng, n)
    judge = _TableJudge([f"d{x}" for x in range(n)], rules, p_dup=0.5, seed=7, cos=False)
    keys = rng.integers(0, 4, n).tolist()
    want = group_pairs(n, (ii, jj), judge, _recording_ranker(keys, []))
    selfs = np.arange(0, n, 3)
    got = group_pairs(n, (np.concatenate([ii, selfs]), np.concatenate([jj, selfs])), judge,
                      _recording_ranker(keys, []))
    assert [(g.tier, g.members, g.matches) for g in got] == [(g.tier, g.members, g.matches) for g in want]
    assert want and min(len(g.members) for g in got) >= 2


def test_chain_and_star_shapes():
    # A chain 0-1-...-9 of duplicates: stars {0, 1}, {2, 3}, ... never one chain; a star around 10 whose
    # hub ranks last: the first spoke keeps the hub; the spokes, a path of look-alikes, pair up.
    n = 20
    chain = [(x, x + 1) for x in range(9)]
    star = [(10, x) for x in range(11, 16)] + [(x, x + 1) for x in range(11, 15)]
    rules = {p: 2 for p in chain} | {p: 3 for p in star[:5]} | {p: 6 for p in star[5:]}
    ii, jj = (np.array(c, np.int64) for c in zip(*(chain + star)))
    judge = _TableJudge([f"d{x}" for x in range(n)], rules, p_dup=0.0, seed=1, cos=False)
    keys = list(range(n))
    keys[10] = 99
    got = _same(n, (ii, jj), judge, keys)
    dup = [g.members for g in got if g.tier == "duplicate"]
    assert sorted(dup) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [11, 10]]
    assert [g.members for g in got if g.tier == "similar"] == [[11, 12], [13, 14]]


@pytest.mark.parametrize("n", [0, 1, 7, 65, 500])
def test_real_codes_group_as_the_former_dict_grouping(n):
    # Real pHash-like codes with planted near copies and flips, the real pair test and candidates.
    rng = np.random.default_rng(n)
    base = rng.integers(0, 2**63, size=(max(n // 5, 1), 1), dtype=np.uint64)
    src = rng.integers(0, len(base), n)
    codes = np.repeat(base[src][:, None, :], 8, axis=1)
    flips = rng.integers(0, 64, (n, 12))
    for x in range(n):
        for bit in flips[x, :rng.integers(0, 12)]:
            codes[x, 0, 0] ^= np.uint64(1) << np.uint64(bit)
        codes[x, 1:, 0] = rng.integers(0, 2**63, 7, dtype=np.uint64)
        if rng.random() < 0.1:  # a mirrored copy: its identity code is a variant of the source's
            codes[x, 0, 0], codes[x, 4, 0] = codes[x, 4, 0], codes[x, 0, 0]
    facts = [FileFacts(f"/x/f{x}.jpg", 1000, 100.0, 100, 100, "JPEG", 10000,
                       f"d{src[x]}" if x % 7 == 0 else f"d{x}") for x in range(n)]
    judge = PairJudge(Features(facts, codes), "phash", DEFAULTS)
    keys = rng.integers(0, 3, n).tolist()
    got = _same(n, candidate_pairs(judge), judge, keys)
    if n >= 65:
        assert any(g.tier == "duplicate" for g in got) and any(g.tier == "similar" for g in got)


class _CheckedTableJudge(_TableJudge):
    """The table's test with a pixel check: every duplicate rule but byte identity is pending until settled,
    and the check (a table too, symmetric) fails about `p_fail` of them; a failed pair is a look-alike when
    its d0 is within similar_phash. Counts the checks it runs."""

    def __init__(self, *a, p_fail: float, **kw):
        super().__init__(*a, **kw)
        self.t, self.method, self.p_fail, self.checked = DEFAULTS, "phash", p_fail, []

    def _matches(self, ii, jj, check=True):
        d = super()._matches(ii, jj)
        pending = (d.rule >= 2) & (d.rule <= 5)
        d = PairDecisions(d.i, d.j, d.rule, d.phash, d.dihedral, d.transform, d.cos, np.full(len(ii), np.nan),
                          pending, np.full(len(ii), np.nan), np.full((len(ii), 2), np.nan), np.zeros(len(ii), bool))
        if check:
            self.settle(d, np.flatnonzero(pending))
        return d

    def _changed(self, ii, jj, variants, cos=None):
        self.checked += list(zip(np.minimum(ii, jj).tolist(), np.maximum(ii, jj).tolist()))
        a, b = self.digest_ids[ii], self.digest_ids[jj]  # a verdict depends on the contents, as the real one
        u = _mix(np.minimum(a, b), np.maximum(a, b), self.seed + 4).astype(np.float64) / 2.0**64
        changed = np.where(u < self.p_fail, 0.5, 0.001)
        # (changed, strong, detail, overlay), as PairJudge._changed; no detail check ran, no overlay measures
        return changed, np.zeros_like(changed), np.full((len(changed), 2), np.nan), np.full((len(changed), 4), np.nan)


@pytest.mark.parametrize("seed", range(6))
def test_lazy_pixel_checks_group_as_checking_every_pair(seed):
    # grouping checks only the pairs its stars rest on (decide(lazy=True), settle); with a ranking that does
    # not depend on the component (no ties), the groups are those of checking every candidate first, and
    # every member passed the check against its keeper.
    rng = np.random.default_rng(100 + seed)
    n = int(rng.choice([65, 300]))
    ii, jj, rules = _graph(rng, n)
    digests = _digests(rng, n)
    ii, jj = _with_exact_stars(ii, jj, digests)
    keys = rng.permutation(n).tolist()
    kw = dict(p_dup=float(rng.choice([0.5, 0.8])), seed=seed, cos=False, p_fail=float(rng.choice([0.1, 0.4])))
    eager = _CheckedTableJudge(digests, rules, **kw)
    want = _reference_group_pairs(n, (ii, jj), eager, _recording_ranker(keys, []))
    lazy = _CheckedTableJudge(digests, rules, **kw)
    got = group_pairs(n, (ii, jj), lazy, _recording_ranker(keys, []))
    assert [(g.tier, g.members, g.matches) for g in got] == [(g.tier, g.members, g.matches) for g in want]
    dup = [g for g in got if g.tier == "duplicate"]
    # (a byte-identical copy taken with a member shows the table's own rule against the keeper)
    assert dup and all(m.changed is not None and m.changed <= DEFAULTS.changed
                       for g in dup for m in g.matches[1:] if m.duplicate and m.rule != "exact")
    assert any(m.rule == "similar" and m.changed == 0.5 for g in got for m in g.matches)  # a failed check
    assert len(set(lazy.checked)) < len(set(eager.checked))


def test_decide_is_match_pairs_as_arrays():
    rng = np.random.default_rng(5)
    judge = _TableJudge([f"d{x % 40}" for x in range(50)], {}, p_dup=0.4, seed=5, cos=True)
    ii, jj = rng.integers(0, 50, 400), rng.integers(0, 50, 400)
    d = judge.decide(ii, jj, chunk=64)
    ref = judge.match_pairs(ii, jj, chunk=1000)
    assert [(int(a), int(b), d.match(x)) for x, (a, b) in enumerate(zip(d.i, d.j))] == ref
    assert 0 < len(d) < 400 and d.duplicate.sum() == sum(m.duplicate for _, _, m in ref)
    assert all(judge.match(a, b) == m for a, b, m in ref[:50])
    assert isinstance(ref[0][2], Match)


class _LookAlikeJudge(_CheckedTableJudge):
    """Every pair named in rules is a pHash match; the pixel check fails every pair with a file in `fakes`."""

    def __init__(self, n, rules, fakes):
        super().__init__([f"d{x}" for x in range(n)], rules, p_dup=0.0, seed=0, cos=False, p_fail=0.0)
        self.fakes = set(fakes)

    def _changed(self, ii, jj, variants, cos=None):
        self.checked += list(zip(np.minimum(ii, jj).tolist(), np.maximum(ii, jj).tolist()))
        changed = np.array([0.5 if a in self.fakes or b in self.fakes else 0.001
                            for a, b in zip(ii.tolist(), jj.tolist())])
        return changed, np.zeros_like(changed), np.full((len(changed), 2), np.nan), np.full((len(changed), 4), np.nan)


def _voting_ranker(shape):
    """keep-best's group vote in miniature: files of the shape most of the component shares first, then by
    number (the original, 0, is the lowest)."""
    def ranker(members):
        votes = sum(1 if shape[x] == "wide" else -1 for x in members)
        common = "wide" if votes > 0 else "tall"
        return {x: (shape[x] != common, x) for x in members}
    return ranker


def test_a_keeper_elected_by_files_outside_its_star_gives_way_to_the_stars_best():
    # 0 the original (tall), 1 a squashed copy (wide), 2 an edit of 0 (tall); 3-6 wide look-alikes that
    # pHash joins to the edit only: no star rests on those pairs, so their checks never run, but the
    # component's vote counts them and elects the squashed copy. Ranked within its star {1, 0, 2}, the
    # original wins; drawn first, it takes both copies directly.
    rules = {(0, 1): 2, (1, 2): 2, (0, 2): 2} | {(2, x): 2 for x in range(3, 7)}
    ii, jj = (np.array(c, np.int64) for c in zip(*rules))
    shape = ["tall", "wide", "tall"] + ["wide"] * 4
    judge = _LookAlikeJudge(7, rules, fakes=range(3, 7))
    groups = group_pairs(7, (ii, jj), judge, _voting_ranker(shape))
    dup = [g for g in groups if g.tier == "duplicate"]
    assert [g.members for g in dup] == [[0, 1, 2]]
    assert all(m.duplicate and m.changed == 0.001 for m in dup[0].matches[1:])
    assert set(judge.checked) == {(0, 1), (0, 2), (1, 2)}  # the look-alikes' pairs never checked

