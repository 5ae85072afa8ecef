"""A feature set on disk: Parquet shards of dedup's per-file features, and reading them back as `Features`.

One row per listed file, in listing order (`row`). A readable file carries everything group_features needs
(features/extract.FileFacts, the 8 dihedral pHash codes, the 128 px thumbnail for the pixel check, and the
two embedded views in fp16 when embedded); an unreadable one carries its path and LoadFailure. The folder
holds `imgsim-features.json` (what was asked for), `listing.parquet` (row, path) and shard-NNNNNN.parquet.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os

import numpy as np

from imgsim_fast.features.extract import PREP_TAG, THUMB_SIDE, Features, FileFacts
from imgsim_fast.io.loading import LoadFailure

__all__ = ["META_NAME", "LISTING_NAME", "shard_table", "write_shard", "read_meta", "write_meta", "shard_paths",
           "read_codes", "read_digests", "read_embeddings", "read_features", "count_rows"]

META_NAME = "imgsim-features.json"
LISTING_NAME = "listing.parquet"
# 2: 128 px thumbnails (1 had 64 px); 3: the preparation the features were made by (extract.PREP_TAG: the trim,
# so the hashes, thumbnails and views) is recorded, and a set of another is refused, as a catalog's arrays of
# another are made again: an index resumed after an upgrade would otherwise add shards of one preparation to
# another's, and dedup would compare the two.
FORMAT_VERSION = 3


def _schema(dim: int | None):
    import pyarrow as pa

    fields = [("row", pa.int64()), ("path", pa.string()), ("error_kind", pa.string()), ("error_reason", pa.string()),
              ("size", pa.int64()), ("mtime", pa.float64()), ("width", pa.int32()), ("height", pa.int32()),
              ("format", pa.string()), ("content_pixels", pa.int64()), ("digest", pa.string()),
              ("trim", pa.list_(pa.float64(), 4)), ("jpeg_quality", pa.int32()), ("blocky", pa.bool_()),
              ("noise", pa.float64()), ("colour", pa.bool_()), ("camera", pa.bool_()),
              ("phash8", pa.list_(pa.uint64(), 8)), ("thumb", pa.binary(THUMB_SIDE * THUMB_SIDE))]
    if dim:
        fields += [("embedding", pa.list_(pa.float16(), dim)), ("centre_embedding", pa.list_(pa.float16(), dim))]
    return pa.schema(fields)


_FACT_FIELDS = [f.name for f in dataclasses.fields(FileFacts)]


def shard_table(rows: list[int], results: list, phash8: np.ndarray, thumbs: np.ndarray,
                emb: np.ndarray | None = None, centre: np.ndarray | None = None):
    """A shard as an Arrow table. results[k]: FileFacts or LoadFailure of row rows[k]; phash8, thumbs, emb and
    centre hold the FileFacts rows only, in order."""
    import pyarrow as pa

    dim = None if emb is None else emb.shape[1]
    schema = _schema(dim)
    cols: dict[str, list] = {name: [] for name in schema.names}
    k = 0
    for row, r in zip(rows, results):
        cols["row"].append(row)
        ok = isinstance(r, FileFacts)
        cols["path"].append(r.path)
        cols["error_kind"].append(None if ok else r.kind)
        cols["error_reason"].append(None if ok else r.reason)
        for name in _FACT_FIELDS:
            if name != "path":
                v = getattr(r, name) if ok else None
                cols[name].append(list(v) if name == "trim" and v is not None else v)
        cols["phash8"].append(phash8[k, :, 0].tolist() if ok else None)
        cols["thumb"].append(thumbs[k].tobytes() if ok else None)
        if dim:
            cols["embedding"].append(emb[k].astype(np.float16) if ok else None)
            cols["centre_embedding"].append(centre[k].astype(np.float16) if ok else None)
        k += ok
    return pa.table({n: pa.array(cols[n], type=schema.field(n).type) for n in schema.names}, schema=schema)


def write_shard(folder: str, name: str, table) -> None:
    """Write a shard whole or not at all (temp + rename), so a re-run can trust any shard it finds."""
    import pyarrow.parquet as pq

    from imgsim_fast.io.atomic_write import replacing

    with replacing(os.path.join(folder, name), "wb") as f:
        pq.write_table(table, f, compression="zstd")


def read_meta(folder: str) -> dict | None:
    path = os.path.join(folder, META_NAME)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    version = meta.get("imgsim_features")
    if isinstance(version, int) and version < FORMAT_VERSION:
        raise ValueError(f"{folder} was written by an older imgsim (feature set format {version}, which does not "
                         f"say how its pictures were prepared): extract again into a new folder")
    if version != FORMAT_VERSION:
        raise ValueError(f"{folder} is not an imgsim feature set (version {FORMAT_VERSION})")
    if meta.get("prep") != PREP_TAG:
        raise ValueError(f"{folder} holds features of another preparation of the pictures ({meta.get('prep')}; "
                         f"this version makes {PREP_TAG}): extract again into a new folder")
    return meta


def write_meta(folder: str, meta: dict) -> None:
    from imgsim_fast.io.atomic_write import write_text

    write_text(os.path.join(folder, META_NAME),
               json.dumps({"imgsim_features": FORMAT_VERSION, "prep": PREP_TAG, **meta}, indent=1))


def shard_paths(folder: str) -> list[str]:
    """The shards written so far, in row order."""
    if read_meta(folder) is None:
        raise ValueError(f"{folder} is not an imgsim feature set: no {META_NAME} (run `imgsim cluster index`)")
    return sorted(glob.glob(os.path.join(folder, "shard-*.parquet")))


def read_codes(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows int64, phash8 (n, 8) uint64) of the readable files of one shard: the join's input."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["row", "phash8", "error_kind"])
    t = t.filter(pc.is_null(t["error_kind"]))
    codes = t["phash8"].combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.uint64)
    return t["row"].to_numpy().astype(np.int64), codes.reshape(-1, 8)


def read_digests(path: str) -> tuple[np.ndarray, list[str]]:
    """(rows, digests) of the readable files of one shard: the exact-copy candidates."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["row", "digest", "error_kind"])
    t = t.filter(pc.is_null(t["error_kind"]))
    return t["row"].to_numpy().astype(np.int64), t["digest"].to_pylist()


def read_embeddings(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, embeddings, centre views) float32 of the readable files of one shard."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["row", "embedding", "centre_embedding", "error_kind"])
    t = t.filter(pc.is_null(t["error_kind"]))
    n = t.num_rows

    def mat(col):
        return t[col].combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, -1)

    return t["row"].to_numpy().astype(np.int64), mat("embedding"), mat("centre_embedding")


def count_rows(folder: str) -> tuple[int, list[LoadFailure]]:
    """(readable files, failures) over every shard, reading two small columns only."""
    import pyarrow.parquet as pq

    n, failures = 0, []
    for p in shard_paths(folder):
        t = pq.read_table(p, columns=["path", "error_kind", "error_reason"])
        kinds = t["error_kind"].to_pylist()
        n += sum(k is None for k in kinds)
        failures += [LoadFailure(path, reason, kind) for path, kind, reason
                     in zip(t["path"].to_pylist(), kinds, t["error_reason"].to_pylist()) if kind is not None]
    return n, failures


def read_features(folder: str, rows=None) -> tuple[Features, np.ndarray]:
    """(Features of the readable files, their rows), in row order; rows: only these (None: all).

    Embeddings come back as float32 (stored fp16). Failures are not included (count_rows reads them).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    meta = read_meta(folder)
    want = None if rows is None else pa.array(np.asarray(rows, np.int64))
    parts = []
    for p in shard_paths(folder):
        t = pq.read_table(p)
        keep = pc.is_null(t["error_kind"])
        if want is not None:
            keep = pc.and_(keep, pc.is_in(t["row"], value_set=want))
        parts.append(t.filter(keep))
    t = pa.concat_tables(parts) if parts else _schema(None).empty_table()
    t = t.sort_by("row")
    d = t.to_pydict()
    n = t.num_rows
    facts = [FileFacts(**{name: (tuple(d[name][i]) if name == "trim" else d[name][i]) for name in _FACT_FIELDS})
             for i in range(n)]
    phash8 = np.array(d["phash8"], dtype=np.uint64).reshape(n, 8, 1)
    thumbs = np.frombuffer(b"".join(d["thumb"]), np.uint8).reshape(n, THUMB_SIDE, THUMB_SIDE)
    emb = centre = None
    if "embedding" in t.column_names:
        dim = t.schema.field("embedding").type.list_size
        emb = np.array(d["embedding"], dtype=np.float32).reshape(n, dim)
        centre = np.array(d["centre_embedding"], dtype=np.float32).reshape(n, dim)
    f = Features(facts, phash8, emb, [], meta.get("model"), centre, thumbs)
    return f, np.asarray(d["row"], np.int64)
