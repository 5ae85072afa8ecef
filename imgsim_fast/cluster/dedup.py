"""`imgsim cluster dedup`: a feature set's candidate pairs from the distributed join, then the same pair test
and guarded grouping as `imgsim dedup` (jobs/dedup.group_features with pairs=...).

The join covers what detect.candidate_pairs finds from hashes and digests, at the same radii (pHash within
max(phash, similar_phash), a flip or rotation within dihedral, byte-identical files), so on the same files
the groups are those of `imgsim dedup`. Only the files that occur in a pair are read back onto the driver:
pairs are far fewer than images. Embedding candidates (methods auto and embedding) are found on the driver
with detect.embedding_pairs over every embedding: the partitioned search of issue 14 is not built, so those
methods fit one machine's memory only.
"""
from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass

import numpy as np

from imgsim_fast.cluster import featureset as fs
from imgsim_fast.cluster.join import JoinSpec, JoinStats, join
from imgsim_fast.cluster.sources import local_roots
from imgsim_fast.io.loading import LoadFailure
from imgsim_fast.jobs.dedup import DEFAULT_ORDER, DEFAULTS, METHODS, DedupResult, Thresholds, group_features

__all__ = ["ClusterDedupResult", "cluster_dedup", "load_shard", "plan_document", "write_plan"]


def load_shard(path: str):
    """Join input of one feature shard, read on the worker: (rows, phash8 (n, 8), digests)."""
    rows, codes = fs.read_codes(path)
    _, digests = fs.read_digests(path)
    return rows, codes, digests


@dataclass
class ClusterDedupResult(DedupResult):
    """A DedupResult over the files that met a pair; files_scanned counts every file of the feature set."""

    files_scanned: int = 0
    join_stats: JoinStats | None = None

    def to_dict(self) -> dict:
        doc = super().to_dict()
        doc["files_scanned"] = self.files_scanned
        return doc


def join_spec(method: str, thresholds: Thresholds, flips: bool, partitions: int) -> JoinSpec:
    """The radii detect.candidate_pairs uses for `method`."""
    hashes = method in ("phash", "auto")
    return JoinSpec(max(thresholds.phash, thresholds.similar_phash) if hashes else None,
                    thresholds.dihedral if hashes and flips else None, digests=True, partitions=partitions)


def cluster_dedup(folder: str, method: str = "phash", thresholds: Thresholds = DEFAULTS, *, flips: bool = True,
                  reference=(), keep_order=DEFAULT_ORDER, fixed=(), address: str | None = None,
                  num_cpus: int | None = None, partitions: int | None = None) -> ClusterDedupResult:
    """Duplicate groups of a feature set written by cluster.extract.index (see the module docstring)."""
    from imgsim_fast.cluster.session import cluster_cpus, connect

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    meta = fs.read_meta(folder)
    if meta is None:
        raise ValueError(f"{folder} is not an imgsim feature set (run `imgsim cluster index` first)")
    shards = fs.shard_paths(folder)
    n_expected = -(-meta["rows"] // meta["shard_size"]) if meta["rows"] else 0
    if len(shards) < n_expected:
        raise ValueError(f"{folder} is incomplete: {len(shards)} of {n_expected} shards; run the same "
                         "`imgsim cluster index` again to finish it")
    if method in ("auto", "embedding") and not meta.get("model"):
        raise ValueError(f"method {method!r} needs embeddings: index with --embed (or use --method phash)")
    ray = connect(address, num_cpus)
    spec = join_spec(method, thresholds, flips, partitions or max(2, 2 * cluster_cpus(ray)))
    ii, jj, stats = join([(load_shard, os.path.abspath(p)) for p in shards], spec, ray=ray)
    if method in ("auto", "embedding"):
        feats, rows = fs.read_features(folder)  # every embedding: the driver-side kNN below needs them all
        ii, jj = _with_embedding_pairs(feats, rows, ii, jj, method, thresholds, fixed)
    else:
        feats, rows = fs.read_features(folder, np.union1d(ii, jj))
    li, lj = np.searchsorted(rows, ii), np.searchsorted(rows, jj)  # rows are sorted: pair order is kept
    roots = local_roots(meta["sources"])
    res = group_features(feats, method, thresholds, flips, list(reference), keep_order, roots=roots, fixed=fixed,
                         pairs=(li, lj))
    total, failures = fs.count_rows(folder)
    walk = [LoadFailure(e["path"], e["reason"], e["kind"]) for e in meta.get("walk_errors", [])]
    res.features.failures = walk + failures
    return ClusterDedupResult(res.features, res.groups, res.method, res.thresholds, res.reference, res.keep_order,
                              files_scanned=total, join_stats=stats)


def _with_embedding_pairs(feats, rows, ii, jj, method, t, fixed):
    """Hash pairs (rows) plus detect.embedding_pairs, as detect.candidate_pairs combines them."""
    from imgsim_fast.jobs.dedup import _learned_space
    from imgsim_fast.jobs.dedup.detect import embedding_pairs

    f, t = _learned_space(feats, t, fixed)  # the space group_features will compare in, as candidate_pairs sees it
    a, b = embedding_pairs(f.embeddings, min(t.similar_cos, t.confirm_cos if method == "auto" else t.embed_cos),
                           t.knn, f.centre_embeddings)
    i = np.concatenate([ii, rows[a]])
    j = np.concatenate([jj, rows[b]])
    if not len(i):
        return i, j
    key = np.unique((i.astype(np.uint64) << np.uint64(32)) | j.astype(np.uint64))
    return (key >> np.uint64(32)).astype(np.int64), (key & np.uint64(0xFFFFFFFF)).astype(np.int64)


def plan_document(result: DedupResult, roots: list[str], reference=(), report: str = "imgsim cluster dedup") -> dict:
    """The plan `imgsim dedup --apply` carries out (jobs/dedup/plan.py): every duplicate group with something
    removable, the keeper kept, as the review page would export it untouched."""
    facts = result.features.facts
    groups = []
    for g in result.groups:
        rem = result.removable(g)
        if rem:
            keep = facts[g.members[0]]
            groups.append({"keep": {"path": os.path.abspath(keep.path), "digest": keep.digest},
                           "remove": [{"path": os.path.abspath(facts[m].path), "digest": facts[m].digest}
                                      for m in rem]})
    return {"imgsim_plan": 1, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "report": report, "roots": [os.path.abspath(r) for r in roots],
            "reference": [os.path.abspath(r) for r in reference], "groups": groups}


def write_plan(result: DedupResult, path: str, roots: list[str], reference=()) -> None:
    from imgsim_fast.io.atomic_write import write_text

    write_text(path, json.dumps(plan_document(result, roots, reference), indent=1) + "\n")
