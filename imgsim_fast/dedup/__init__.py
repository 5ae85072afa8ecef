"""Deduplication: find duplicate and near-duplicate images, pick the file to keep, act safely, report.

Layout by responsibility: `features` (digest, header facts, border-trimmed dihedral pHash, embeddings),
`detect` (candidate pairs through the MIH self-join and embedding kNN, the pair test, guarded groups),
`keep` (keep-best order, reference folders), `actions` (manifest-first move / link / delete, undo),
`report` (JSON, CSV, HTML).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .detect import DEFAULTS, METHODS, Group, Match, PairJudge, Thresholds, candidate_pairs, group_pairs
from .features import Features, FileFacts, compute_features, file_digest
from .keep import DEFAULT_ORDER, is_under, parse_order, rank_key

__all__ = ["DEFAULTS", "DEFAULT_ORDER", "DEFAULT_THRESHOLD", "METHODS", "DedupResult", "Features", "FileFacts",
           "Group", "Match", "Thresholds", "compute_features", "file_digest", "find_duplicates", "group_features"]

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

    def kept(self, g: Group) -> list[int]:
        """Members that stay: the keeper and every reference file."""
        return [m for k, m in enumerate(g.members) if k == 0 or self.reference[m]]

    def removable(self, g: Group) -> list[int]:
        """Members an action may touch: not the keeper, not under a reference folder."""
        return [m for k, m in enumerate(g.members) if k > 0 and not self.reference[m]]

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
                    "keep": facts[g.members[0]].path,
                    "exact": len({facts[m].digest for m in g.members}) == 1,
                    "files": [facts[m].path for m in g.members],
                    "members": [
                        {
                            "path": facts[m].path,
                            "keep": m in self.kept(g),
                            "reference": self.reference[m],
                            "rule": mt.rule,
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
                for g in self.groups
            ],
            "errors": [{"path": f.path, "kind": f.kind, "reason": f.reason} for f in self.features.failures],
        }


def group_features(features: Features, method: str = "auto", thresholds: Thresholds = DEFAULTS,
                   flips: bool = True, reference: list[str] = (), keep_order=DEFAULT_ORDER) -> DedupResult:
    """Group already computed features (see find_duplicates)."""
    keep_order = parse_order(",".join(keep_order)) if not isinstance(keep_order, str) else parse_order(keep_order)
    ref = [bool(reference) and is_under(f.path, list(reference)) for f in features.facts]
    judge = PairJudge(features, method, thresholds, flips=flips)
    rank = [rank_key(f, keep_order, r) for f, r in zip(features.facts, ref)]
    groups = group_pairs(len(features), candidate_pairs(judge), judge, rank)
    return DedupResult(features, groups, method, thresholds, ref, keep_order)


def find_duplicates(paths_or_roots, method: str = "auto", thresholds: Thresholds = DEFAULTS, *,
                    flips: bool = True, reference: list[str] = (), keep_order=DEFAULT_ORDER,
                    workers: int | None = None, progress: bool | None = None, embed: bool | str | None = None,
                    device=None) -> DedupResult:
    """Find duplicate groups among image files and folders (walked recursively). Touches no file.

    method: 'auto' (hashes + embeddings, the default), 'phash', 'embedding' or 'exact'.
    reference: folders whose files are always kept (scan them too: pass them in paths_or_roots as well,
        or they are added). keep_order: criteria of keep.CRITERIA, best first.
    embed: None computes embeddings for 'auto' and 'embedding'; False never; a model name to choose one.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    roots = [paths_or_roots] if isinstance(paths_or_roots, str) else list(paths_or_roots)
    roots += [r for r in reference if r not in roots]
    if embed is None:
        embed = method in ("auto", "embedding")
    if method == "embedding" and not embed:
        raise ValueError("method 'embedding' needs embeddings")
    feats = compute_features(roots, embed=embed, workers=workers, progress=progress, device=device)
    return group_features(feats, method, thresholds, flips, reference, keep_order)
