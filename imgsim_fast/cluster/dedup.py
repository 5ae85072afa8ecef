"""`imgsim cluster dedup`: a feature set's candidate pairs from the distributed join, then the same pair test
and guarded grouping as `imgsim dedup` (jobs/dedup.group_features with pairs=...).

The join covers what detect.candidate_pairs finds from hashes and digests, at the same radii (pHash within
max(phash, similar_phash), a flip or rotation within dihedral, byte-identical files), so on the same files
the groups are those of `imgsim dedup`. Embedding candidates (methods auto and embedding) come from the
partitioned search of cluster.embed_join (exact up to 50,000 files, k-means cells with multi-assignment
above). Only the files that occur in a pair are read back onto the driver: pairs are far fewer than images.
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
        a, b = _embedding_candidates(folder, shards, meta, method, thresholds, fixed, ray, spec.partitions)
        ii, jj = _union(np.concatenate([ii, a]), np.concatenate([jj, b]))
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


def load_embeddings(arg):
    """Embedding-join input of one shard, read on the worker, in the space the pair test compares in: the
    learned head's projection when group_features will use it (jobs/dedup._learned_space)."""
    path, learned = arg
    rows, emb, centre = fs.read_embeddings(path)
    if learned:
        from imgsim_fast.features.embedding.siamese import load_head

        head = load_head()
        emb, centre = head.project(emb), head.project(centre)
    return rows, emb, centre


# Rows of the sample the k-means centroids are trained on, and files per cell: up to 50,000 files there is
# one cell, and the partitioned search is exactly detect.embedding_pairs; above, each vector probes its
# PROBES nearest cells (recall measured in tests/test_cluster.py).
CENTROID_SAMPLE = 20_000
FILES_PER_CELL = 50_000
PROBES = 4


def _embedding_candidates(folder, shards, meta, method, thresholds, fixed, ray, partitions):
    """Embedding pairs of a feature set as detect.candidate_pairs finds them (cluster.embed_join)."""
    from imgsim_fast.cluster.embed_join import embedding_join
    from imgsim_fast.jobs.dedup import _learned_space

    sample, _ = fs.read_features(folder, np.arange(min(meta["rows"], CENTROID_SAMPLE)))
    if not len(sample):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    f, t = _learned_space(sample, thresholds, fixed)  # the space and thresholds group_features will use
    learned = f.model != sample.model
    min_cos = min(t.similar_cos, t.confirm_cos if method == "auto" else t.embed_cos)
    vectors = np.concatenate([f.embeddings, f.centre_embeddings])
    return embedding_join([(load_embeddings, (os.path.abspath(p), learned)) for p in shards], vectors, min_cos, t.knn,
                          cells=max(1, meta["rows"] // FILES_PER_CELL), probes=PROBES, partitions=partitions, ray=ray)


def _union(i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not len(i):
        return i.astype(np.int64), j.astype(np.int64)
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
