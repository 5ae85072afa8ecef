"""`imgsim cluster index`: a Ray Data pipeline that writes dedup's per-file features as Parquet shards.

Each shard is a Ray task that runs the very function single-machine dedup runs on its pool
(features/extract._prepare_chunk, then phash_dihedral over the shard), so the cluster
stores exactly what `imgsim dedup` computes. With embeddings, the decoded views go on to a pool of
embedding actors (one GPU each when the cluster has GPUs, else one CPU), which write the shard. A shard is
written whole or not at all, and a re-run skips the shards it finds; a worker killed mid-run costs only
its own tasks, which Ray runs again (max_retries).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from imgsim_fast.cluster import featureset as fs
from imgsim_fast.features.extract import THUMB_SIDE
from imgsim_fast.cluster.sources import is_url, list_sources, make_shards

__all__ = ["IndexSummary", "index", "extract_shard", "DEFAULT_SHARD_SIZE"]

# Files per shard: a task of a few seconds (so a retry is cheap) and a Parquet file of a few MB (thumbnails
# are 16 KiB a file), few enough files on an object store at 10^9 images (~4 million shards).
DEFAULT_SHARD_SIZE = 256
# A task killed with its worker is run again this many times before the job fails.
TASK_RETRIES = 4


@dataclass
class IndexSummary:
    files: int                 # rows listed
    shards: int
    written: int               # shards written by this run
    skipped: int               # shards already there
    failed: int = 0            # unreadable files among the shards written now
    seconds: float = 0.0
    passed_over: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "passed_over"} | {"passed_over": len(self.passed_over)}


def _fetch(url: str, tmpdir: str) -> tuple[str, int, float]:
    """A local copy of a URL's bytes (same extension: the decoder picks by content, RAW by name), its size
    and modification time (0 when the store keeps none)."""
    import fsspec

    fsys, p = fsspec.core.url_to_fs(url)
    local = os.path.join(tmpdir, "f" + os.path.splitext(p)[1])
    fsys.get_file(p, local)
    info = fsys.info(p)
    mtime = info.get("mtime") or info.get("LastModified") or 0.0
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return local, int(info.get("size") or os.path.getsize(local)), float(mtime)


def _prepare(items: list[tuple[int, str]], embed_size: int | None) -> list:
    """dedup's per-file step (features/extract._prepare_chunk) on local paths; a URL is copied to a
    temporary file first and its row then names the URL."""
    import dataclasses

    from imgsim_fast.features.extract import _prepare_chunk
    from imgsim_fast.io.loading import LoadFailure

    out = []
    for i, p in items:
        if not is_url(p) or p.startswith("file://"):
            local = p[len("file://"):] if p.startswith("file://") else p
            (j, r), = _prepare_chunk([(i, local)], embed_size)
            if p != local:
                r = (dataclasses.replace(r[0], path=p), *r[1:]) if not isinstance(r, LoadFailure) else \
                    LoadFailure(p, r.reason, r.kind)
            out.append(r)
            continue
        tmp = tempfile.mkdtemp(prefix="imgsim-cluster-")
        try:
            local, size, mtime = _fetch(p, tmp)
            (j, r), = _prepare_chunk([(i, local)], embed_size)
            if isinstance(r, LoadFailure):
                r = LoadFailure(p, r.reason, r.kind)
            else:
                r = (dataclasses.replace(r[0], path=p, size=size, mtime=mtime), *r[1:])
        except OSError as exc:
            r = LoadFailure(p, f"{exc.strerror or exc}", "io_error")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        out.append(r)
    return out


def extract_shard(start: int, paths: list[str], embed_size: int | None = None):
    """(rows, FileFacts-or-LoadFailure per row, phash8 (k, 8, 1), thumbs (k, THUMB_SIDE, THUMB_SIDE),
    embedding inputs or None) of one shard, k = readable files: compute_features' per-file work and its batch hash."""
    from imgsim_fast.features.hashing import phash_dihedral
    from imgsim_fast.io.loading import LoadFailure

    res = _prepare(list(enumerate(paths, start)), embed_size)
    ok = [r for r in res if not isinstance(r, LoadFailure)]
    results = [r if isinstance(r, LoadFailure) else r[0] for r in res]
    phash8 = phash_dihedral(np.stack([r[1][0] for r in ok])) if ok else np.zeros((0, 8, 1), np.uint64)
    thumbs = np.stack([r[1][1] for r in ok]) if ok else np.zeros((0, THUMB_SIDE, THUMB_SIDE), np.uint8)
    inputs = np.stack([v for r in ok for v in r[2]]) if ok and embed_size else None
    return list(range(start, start + len(paths))), results, phash8, thumbs, inputs


def _decode_and_write(item: dict, out: str) -> dict:
    """Ray Data map, hash-only feature sets: one shard decoded, hashed and written."""
    rows, results, phash8, thumbs, _ = extract_shard(item["start"], list(item["paths"]))
    fs.write_shard(out, item["name"], fs.shard_table(rows, results, phash8, thumbs))
    return {"name": item["name"], "failed": sum(not hasattr(r, "digest") for r in results)}


def _decode(item: dict, embed_size: int) -> dict:
    """Ray Data map, first stage with embeddings: the shard's features and embedding inputs, pickled."""
    import pickle

    return {"name": item["name"], "blob": pickle.dumps(extract_shard(item["start"], list(item["paths"]), embed_size),
                                                       protocol=5)}


class _EmbedWriter:
    """Ray Data actor: embeds decoded shards in batches (on its GPU when it has one) and writes them."""

    def __init__(self, out: str, model: str):
        from imgsim_fast.features.embedding import get_model

        self.out = out
        self.model = get_model(model, "cuda" if _has_cuda() else None)

    def __call__(self, item: dict) -> dict:
        import pickle

        from imgsim_fast.features.extract import embed_inputs

        rows, results, phash8, thumbs, inputs = pickle.loads(item["blob"])
        emb = centre = np.zeros((0, self.model.dim), np.float32)
        if inputs is not None:
            both = embed_inputs(self.model, list(inputs))  # the views interleaved, as compute_features does
            emb, centre = both[0::2], both[1::2]
        fs.write_shard(self.out, item["name"], fs.shard_table(rows, results, phash8, thumbs, emb, centre))
        return {"name": item["name"], "failed": sum(not hasattr(r, "digest") for r in results)}


def _retries() -> dict:
    """Ray Data retries a task whose worker died without end (max_retries=-1); a file that kills its decoder
    every time would then stall the job, so the count is bounded. Ray 2.60 warns that this argument will
    move; it still honours it."""
    import warnings

    warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", module="imgsim_fast.cluster.extract")
    return {"max_retries": TASK_RETRIES}


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _prepare_folder(out: str, sources: list[str], extensions, shard_size: int, model: str | None):
    """(listing, meta) of `out`: made now, or read back when an earlier run with the same request made it
    (the listing is not redone: a re-run completes the same rows, new files need a new feature set)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imgsim_fast.io.atomic_write import replacing

    ask = {"sources": [s if s.startswith("@") or is_url(s) else os.path.abspath(s) for s in sources],
           "extensions": None if extensions is None else sorted(extensions), "shard_size": shard_size,
           "model": model}
    for s in sources:  # before anything is created
        if not (s.startswith("@") or is_url(s)) and not os.path.exists(s):
            raise ValueError(f"{s}: no such file or folder")
        if s.startswith("@") and not os.path.isfile(s[1:]):
            raise ValueError(f"{s[1:]}: no such file list")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{out} exists and is not a folder")
    os.makedirs(out, exist_ok=True)
    meta = fs.read_meta(out)
    if meta is not None:
        old = {k: meta.get(k) for k in ask}
        if old != ask:
            diff = ", ".join(k for k in ask if old[k] != ask[k])
            raise ValueError(f"{out} holds features of another request ({diff} differ); choose another --out")
        listing = pq.read_table(os.path.join(out, fs.LISTING_NAME))["path"].to_pylist()
        return listing, meta, []
    if os.listdir(out):
        raise ValueError(f"{out} is not empty and holds no imgsim feature set; choose another --out")
    passed_over: list[str] = []
    failures = []
    listing = list_sources(sources, extensions, on_error=failures.append, on_skip=passed_over.append)
    with replacing(os.path.join(out, fs.LISTING_NAME), "wb") as f:
        pq.write_table(pa.table({"row": pa.array(range(len(listing)), pa.int64()), "path": listing}), f)
    meta = {**ask, "rows": len(listing),
            "walk_errors": [{"path": x.path, "kind": x.kind, "reason": x.reason} for x in failures]}
    fs.write_meta(out, meta)  # last: a folder with meta has its listing
    return listing, meta, passed_over


def index(sources, out: str, *, embed: bool | str = False, shard_size: int = DEFAULT_SHARD_SIZE,
          extensions=None, address: str | None = None, num_cpus: int | None = None,
          embed_actors: int | None = None) -> IndexSummary:
    """Extract features of `sources` (sources.list_sources) into the feature set folder `out` on Ray.

    embed: False, True (the default model) or a model name. address: a running Ray cluster (None: the
    one this process already joined, else a local one with num_cpus workers).
    """
    from imgsim_fast.cluster.session import cluster_cpus, cluster_gpus, connect

    t0 = time.perf_counter()
    model = None
    if embed:
        from imgsim_fast.features.embedding import get_model

        model = get_model("efficientnet-lite0" if embed is True else embed).name  # an unknown name fails now
    listing, meta, passed_over = _prepare_folder(out, list(sources), extensions, shard_size, model)
    shards = make_shards(listing, shard_size)
    todo = [s for s in shards if not os.path.exists(os.path.join(out, s.name))]
    summary = IndexSummary(len(listing), len(shards), len(todo), len(shards) - len(todo), passed_over=passed_over)
    if todo:
        ray = connect(address, num_cpus)
        import ray.data

        items = [{"name": s.name, "start": s.start, "paths": list(s.paths)} for s in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        retry = _retries()
        if model is None:
            ds = ds.map(_decode_and_write, fn_kwargs={"out": os.path.abspath(out)}, num_cpus=1, **retry)
        else:
            from imgsim_fast.features.embedding import get_model

            size = get_model(model).spec.size
            gpus = cluster_gpus(ray)
            actors = embed_actors or max(1, gpus)
            # A CPU actor holds its CPU for the whole job: on a small cluster it takes part of one, so the
            # decoders feeding it can always be scheduled (with whole CPUs, one CPU would deadlock).
            cpus = cluster_cpus(ray)
            cpu_share = min(1.0, cpus / (2 * actors))
            decode_cpus = 1.0 if gpus else min(1.0, cpus - cpu_share * actors)
            ds = ds.map(_decode, fn_kwargs={"embed_size": size}, num_cpus=decode_cpus, **retry)
            ds = ds.map(_EmbedWriter, fn_constructor_args=(os.path.abspath(out), model), concurrency=actors,
                        **({"num_gpus": 1} if gpus else {"num_cpus": cpu_share}))
        for row in ds.iter_rows():
            summary.failed += int(row["failed"])
    summary.seconds = time.perf_counter() - t0
    return summary
