"""Deduplication: find duplicate and near-duplicate images, pick the file to keep, act safely, report.

Layout by responsibility: `features` (digest, header facts, border-trimmed dihedral pHash, embeddings),
`detect` (candidate pairs through the MIH self-join and embedding kNN, the pair test), `grouping` (guarded groups),
`keep` (keep-best order, reference folders), `actions` (manifest-first move / link / delete, undo),
`report` (JSON, CSV, HTML).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import os

import numpy as np

from imgsim_fast.jobs.dedup.detect import (DEFAULTS, METHODS, Match, PairJudge, Thresholds, candidate_pairs,
                                         check_key_prefix)
from imgsim_fast.jobs.dedup.grouping import Group, group_pairs
from imgsim_fast.features.extract import Features, FileFacts, compute_features, file_digest
from imgsim_fast.runtime.progress import phase
from imgsim_fast.jobs.dedup.keep import (DEFAULT_ORDER, FactTable, all_under, keep_ranks, parse_order,
                                       verdict_key_prefix)

__all__ = ["DEFAULTS", "DEFAULT_ORDER", "DEFAULT_THRESHOLD", "LEARNED", "METHODS", "DedupResult", "Features",
           "FileFacts", "Group", "Match", "Thresholds", "compute_features", "file_digest", "find_duplicates",
           "group_features", "learned_space"]

# The pHash radius of the first, hash-only dedup (kept for callers of the old API; DEFAULTS.phash now).
DEFAULT_THRESHOLD = DEFAULTS.phash


@dataclass
class DedupResult:
    """Groups over `features.facts`; `reference[i]` marks files under a reference folder (never touched)."""

    features: Features
    groups: list[Group]
    method: str
    thresholds: Thresholds
    reference: list[bool] = field(default_factory=list)
    keep_order: tuple[str, ...] = DEFAULT_ORDER

    @property
    def paths(self) -> list[str]:
        return self.features.paths

    def removable(self, g: Group) -> list[int]:
        """Members an action may touch: duplicate tier only, not the keeper, not under a reference folder."""
        if g.tier != "duplicate":
            return []
        return [m for k, m in enumerate(g.members) if k > 0 and not self.reference[m]]

    def to_rows(self) -> list[dict]:
        """One row per group member (jobs/dedup/rows.py): what --csv and --out FILE.parquet hold."""
        from imgsim_fast.jobs.dedup.rows import rows_of

        return rows_of(self.to_dict())

    def to_arrow(self):
        """The rows as a pyarrow Table (the [arrow] extra)."""
        from imgsim_fast.io.tables import to_arrow
        from imgsim_fast.jobs.dedup.rows import ROW_COLUMNS

        return to_arrow(self.to_rows(), ROW_COLUMNS)

    def to_pandas(self):
        """The rows as a pandas DataFrame (the [arrow] extra)."""
        from imgsim_fast.io.tables import to_pandas
        from imgsim_fast.jobs.dedup.rows import ROW_COLUMNS

        return to_pandas(self.to_rows(), ROW_COLUMNS)

    def to_dict(self) -> dict:
        facts = self.features.facts
        return {
            "method": self.method,
            "thresholds": self.thresholds.__dict__,
            "keep_order": list(self.keep_order),
            "model": self.features.model,
            "files_scanned": len(facts),
            "groups": [
                {
                    "tier": g.tier,
                    "keep": facts[g.members[0]].path,
                    "exact": len({facts[m].digest for m in g.members}) == 1,
                    "files": [facts[m].path for m in g.members],
                    "members": [
                        {
                            "path": facts[m].path,
                            "keep": m not in removable,
                            "removable": m in removable,
                            "reference": self.reference[m],
                            "rule": mt.rule,
                            "why": mt.describe(),
                            "phash_distance": mt.phash,
                            "flip_distance": mt.dihedral,
                            "flip": mt.transform,
                            "cosine": None if mt.cos is None else round(mt.cos, 4),
                            "width": facts[m].width,
                            "height": facts[m].height,
                            "format": facts[m].format,
                            "bytes": facts[m].size,
                            "mtime": facts[m].mtime,
                            "digest": facts[m].digest,
                        }
                        for m, mt in zip(g.members, g.matches)
                    ],
                }
                for g, removable in ((g, set(self.removable(g))) for g in self.groups)
            ],
            "errors": [{"path": f.path, "kind": f.kind, "reason": f.reason} for f in self.features.failures],
        }


def group_features(features: Features, method: str = "auto", thresholds: Thresholds = DEFAULTS,
                   flips: bool = True, reference: list[str] = (), keep_order=DEFAULT_ORDER,
                   roots: list[str] | None = None, learned: bool = True, fixed=(), pairs=None,
                   verdicts: dict | None = None, checks: dict | None = None,
                   progress: bool | None = False) -> DedupResult:
    """Group already computed features (see find_duplicates).

    roots: the folders scanned; a file whose real path lies outside them (reached through a symbolic link)
    takes no part, and neither does a symbolic link itself: a link is a pointer, not a copy, so it is never
    kept in place of a real file nor removed as a duplicate of one.
    learned: compare embeddings by the learned similarity (embedding/siamese.py, the shipped head trained
    with a triplet loss) with the thresholds tuned for it, wherever the embeddings are the head's backbone;
    a threshold named in `fixed`, or given here with a value other than DEFAULTS', is kept. False: the raw
    cosine (the hand rule).
    pairs: candidate pairs (i, j) found elsewhere (the distributed join of imgsim_fast.cluster); None: found
    here by candidate_pairs. Either way every pair goes through the same pair test and grouping.
    verdicts, checks: keep-best's and the pair test's looks at pixels, remembered by contents (a dict the
    caller keeps and may store: find_duplicates keeps them in its catalog); None: for this call only.
    progress: the pair search and the grouping show their elapsed time on stderr (None: on a terminal).
    """
    features, thresholds = _learned_space(features, thresholds, fixed) if learned else (features, thresholds)
    order = parse_order(keep_order)
    facts = features.facts
    paths = [f.path for f in facts]
    ref = all_under(paths, list(reference)) if reference else [False] * len(facts)
    pointer = np.array([os.path.islink(p) for p in paths], bool)
    if roots is not None:
        pointer |= ~np.array(all_under(paths, list(roots)), bool)
    judge = PairJudge(features, method, thresholds, flips=flips, checks=checks)
    # Remembered for this call at least: grouping ranks a component again when a failed check splits it.
    verdicts = {} if verdicts is None else verdicts
    if pairs is None:
        with phase("finding pairs", progress):
            ii, jj = candidate_pairs(judge)
    else:
        ii, jj = np.asarray(pairs[0], np.int64), np.asarray(pairs[1], np.int64)
    if pointer.any():
        keep = ~(pointer[ii] | pointer[jj])
        ii, jj = ii[keep], jj[keep]
    table = FactTable(facts)
    with phase(f"grouping {len(ii):,} candidate pairs", progress):
        groups = group_pairs(len(features), (ii, jj), judge,
                             lambda members: keep_ranks(table, members, order, ref, inspect=True, verdicts=verdicts))
    return DedupResult(features, groups, method, thresholds, ref, order)


# Thresholds of the learned space that the head's training does not tune (it models the pair test only).
# phash_cos: a pHash match must not be one the learned score calls different pictures (slides of one
# template, frames of a burst sit within 10 bits of each other); 0.55 is the lowest value that leaves no
# look-alike false pair on the tune half (slides 95 -> 0, bursts 95 -> 0 per 1,000 files, recall 0.775 ->
# 0.776). The pixel check keeps the values tuned on the raw cosine (detect.DEFAULTS): the tune half is
# the head's own training data, where it hides nothing, and a looser check (0.03 whole, 0.2 crop) let
# through what the head never saw (held-out: charts 3.5 -> 98 false pairs per 1,000 files), so it was
# not kept.
# overlay_cos: the learned score opens the overlay route (detect.Thresholds.overlay_*), which the raw cosine
# cannot guard: tune half, captioned and watermarked copies 0.77 and up, a burst frame against the empty scene
# 0.69 at most.
LEARNED = {"phash_cos": 0.55, "overlay_cos": 0.75}


def learned_space(model: str | None, thresholds: Thresholds = DEFAULTS, fixed=()) -> tuple[object | None, Thresholds]:
    """(the learned head, the thresholds tuned for it) when the head applies to `model`'s embeddings, else
    (None, thresholds): the one place that decides which similarity the pair test uses (group_features,
    the cluster, the service's live index).

    On the held-out half of the accuracy corpus the learned score beat the raw cosine with the same pair
    rule (python -m imgsim_fast.train --eval, README "Accuracy"), which is why it is the default.
    """
    from imgsim_fast.features.embedding.siamese import load_head

    head = load_head()
    if model is None or model != head.meta.get("model"):
        return None, thresholds  # another backbone, none, or already projected
    return head, head_thresholds(head, thresholds, fixed)


def head_thresholds(head, thresholds: Thresholds = DEFAULTS, fixed=()) -> Thresholds:
    """The thresholds the pair test uses with a learned head: the head's own (its weights file), then LEARNED's,
    over `thresholds` where those are still the defaults and not `fixed` (learned_space; train --eval scores a
    candidate head with them, as dedup would ship it)."""
    import dataclasses

    tuned = dict(head.meta.get("thresholds", {}))
    # The learned score pushes look-alikes apart (the tune half's look-alike pairs score 0.15 at the median),
    # so no cosine band marks them: a pair the learned score calls the same picture and the pixel check
    # does not is the look-alike, and pHash within similar_phash still reports near variants.
    tuned.setdefault("similar_cos", tuned.get("embed_cos", DEFAULTS.similar_cos))
    # The weights file is data (a retrain may store fields this version does not have): unknown ones are
    # ignored. LEARNED is ours: a name that is not a Thresholds field is a bug, and replace() says so.
    tuned = {k: v for k, v in tuned.items() if hasattr(thresholds, k)}
    tuned.update({k: v for k, v in LEARNED.items() if k not in tuned})
    kept = {k: v for k, v in tuned.items() if k not in fixed and getattr(thresholds, k) == getattr(DEFAULTS, k)}
    return dataclasses.replace(thresholds, **kept)


def _learned_space(features: Features, thresholds: Thresholds, fixed=()) -> tuple[Features, Thresholds]:
    """(features projected by the learned head, its thresholds) when the head applies, else unchanged."""
    from imgsim_fast.features.embedding.siamese import learned_features

    if features.embeddings is None:
        return features, thresholds
    head, tuned = learned_space(features.model, thresholds, fixed)
    if head is None:
        return features, thresholds
    return learned_features(features, head), tuned


def find_duplicates(paths_or_roots, method: str = "auto", thresholds: Thresholds = DEFAULTS, *,
                    flips: bool = True, reference: list[str] = (), keep_order=DEFAULT_ORDER,
                    workers: int | None = None, progress: bool | None = None, embed: bool | str | None = None,
                    device=None, extensions=None, fixed=(), catalog: str | None = None) -> DedupResult:
    """Find duplicate groups among image files and folders (walked recursively). Touches no file.

    method: 'auto' (hashes + embeddings, the default), 'phash', 'embedding' or 'exact'.
    reference: folders whose files are always kept (scan them too: pass them in paths_or_roots as well,
        or they are added). keep_order: criteria of keep.CRITERIA, best first.
    embed: None computes embeddings for 'auto' and 'embedding'; False never; a model name to choose one.
    fixed: names of `thresholds` fields the caller set on purpose (group_features keeps them as they are).
    catalog: a catalog file to keep the features in (catalog/dedup_features.py): files unchanged since a
        run that stored theirs are not read again. None: the features live in memory for this call.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    roots = [paths_or_roots] if isinstance(paths_or_roots, str) else list(paths_or_roots)
    roots += [r for r in reference if r not in roots]
    if embed is None:
        embed = method in ("auto", "embedding")
    if method == "embedding" and not embed:
        raise ValueError("method 'embedding' needs embeddings")
    if catalog is None:
        feats = compute_features(roots, embed=embed, workers=workers, progress=progress, device=device,
                                 extensions=extensions)
        return group_features(feats, method, thresholds, flips, reference, keep_order, roots=roots, fixed=fixed,
                              progress=progress)
    from imgsim_fast.catalog.dedup_features import added, dedup_features, load_looks, save_looks

    feats, _ = dedup_features(catalog, roots, embed=embed, workers=workers, progress=progress, device=device,
                              extensions=extensions)
    # Keep-best's looks at full-size pixels and the pair test's pixel checks are remembered in the catalog
    # too, by contents: a second run over an unchanged collection reads no picture and checks no pair.
    # Only this version's looks are read; what it adds is stored, and an earlier version's are dropped, as are
    # the looks of contents no file of the catalog holds any more (removed or rewritten files).
    prefixes = {"check_prefix": check_key_prefix(), "verdict_prefix": verdict_key_prefix()}
    checks, verdicts, stale = load_looks(catalog, **prefixes)
    verdicts_before, checks_before = len(verdicts), len(checks)
    res = group_features(feats, method, thresholds, flips, reference, keep_order, roots=roots, fixed=fixed,
                         verdicts=verdicts, checks=checks, progress=progress)
    save_looks(catalog, checks=added(checks, checks_before), verdicts=added(verdicts, verdicts_before),
               stale=stale, **prefixes)
    return res
