"""Similar-image search over a catalog: by example image (any file, in the catalog or not) or by text
(CLIP), with metadata filters, one query or a batch of them (issue 7).

    from imgsim_fast.jobs.search import search, search_batch
    search(cat, "query.jpg", method="cnn", k=20, where=Tag("beach"))
    search(cat, text="a red car", model="/models/clip-vit-b32")

Methods: a hash kind ("phash", "dhash", ...) ranks by Hamming distance of the catalog's codes; "cnn"
(EfficientNet-Lite0 unless `model` says otherwise) and "clip" rank by cosine similarity of the catalog's
embeddings. Filter first, then rank: the metadata filter picks the candidate files, so a selective filter
still returns k results. Scores are higher-is-closer: cosine similarity for embeddings, 1 - d / bits for
hashes (the raw distance is kept beside it).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from imgsim_fast.io.atomic_write import replacing
from imgsim_fast.catalog.store import Catalog, embedding_array_names, hash_array_name
from imgsim_fast.io.names import display_path, path_text

__all__ = ["Hit", "SearchResult", "search", "search_batch", "write_results", "resolve_space",
           "HASH_METHODS", "EMBED_METHODS", "query_files"]

HASH_METHODS = ("phash", "ahash", "dhash", "whash", "colorhash")
EMBED_METHODS = ("cnn", "clip")


@dataclass
class Hit:
    path: str
    score: float                 # higher is closer: cosine similarity, or 1 - hamming / bits
    rank: int                    # 1-based
    file_id: int
    distance: int | None = None  # Hamming distance (hash methods only)


@dataclass
class SearchResult:
    query: str                   # the query image path, or the text
    method: str                  # the hash kind, or "embed:<model>"
    hits: list[Hit] = field(default_factory=list)
    error: str | None = None     # the query could not be loaded or embedded

    def to_dict(self) -> dict:
        """For JSON: paths (and errors, which may quote one) as names.path_text."""
        return {"query": path_text(self.query), "method": self.method,
                "error": None if self.error is None else path_text(self.error),
                "hits": [dict(asdict(h), path=path_text(h.path)) for h in self.hits]}


# ---------------------------------------------------------------------------------------------------
# Which array a method searches


@dataclass
class _Space:
    kind: str          # "hash" or "embed"
    array: str         # catalog array name
    method: str        # reported name
    model: str | None = None
    hash_kind: str | None = None
    hash_size: int = 8
    mode: str = "fast"
    bits: int = 64


def resolve_space(cat: Catalog, method: str = "phash", model: str | None = None, *,
                  hash_size: int | None = None, mode: str | None = None) -> _Space:
    """The catalog array `method` searches, with a clear error when the catalog lacks it.

    cnn: the `model` embedding, default EfficientNet-Lite0. clip: the `model` embedding; with no model,
    the catalog's only non-EfficientNet embedding. Hashes: the configuration the last `imgsim index`
    used (hash size, mode) unless given.
    """
    arrays = cat.arrays()
    if method in EMBED_METHODS:
        from imgsim_fast.features.embedding.models import DEFAULT_MODEL

        if model is None and method == "cnn":
            model = DEFAULT_MODEL
        if model is None:  # clip without --model: the catalog's one CLIP embedding, if unambiguous
            clips = sorted(a["params"].get("model") for n, a in arrays.items()
                           if n.startswith("embed-") and a["params"].get("model") not in (None, DEFAULT_MODEL))
            if len(clips) != 1:
                have = ", ".join(clips) or "none"
                raise ValueError(f"--method clip needs --model (the CLIP folder or hub name the catalog was "
                                 f"indexed with); CLIP embeddings in this catalog: {have}")
            model = clips[0]
        # The model's own name, or the literal-string name of a catalog no writer has migrated yet.
        name = next((n for n in embedding_array_names(model) if n in arrays), None)
        if name is None:
            have = [a["params"].get("model", n) for n, a in arrays.items() if n.startswith("embed-")]
            raise ValueError(f"the catalog has no {model!r} embeddings (it has: {', '.join(have) or 'none'}); "
                             f"run `imgsim index DIR --embed {model}` first")
        return _Space("embed", name, f"embed:{model}", model=model)
    if method in HASH_METHODS:
        from imgsim_fast.features.hashing import code_bits

        last = cat.get_meta("last_index", {}) or {}
        hs = hash_size or last.get("hash_size", 8)
        md = mode or last.get("mode", "fast")
        name = hash_array_name(method, hs, md)
        if name not in arrays:
            have = [n for n in arrays if not n.startswith("embed-")]
            raise ValueError(f"the catalog has no {method} codes ({name}; it has: {', '.join(have) or 'none'}); "
                             f"run `imgsim index DIR --kinds {method}` first")
        return _Space("hash", name, method, hash_kind=method, hash_size=hs, mode=md, bits=code_bits(method, hs))
    raise ValueError(f"unknown method {method!r}; expected one of {HASH_METHODS + EMBED_METHODS}")


# ---------------------------------------------------------------------------------------------------
# Candidates: the filter first


def _candidates(cat: Catalog, space: _Space, where) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(file ids, paths, rows) of the files passing `where` that have `space`'s array, ordered by path:
    rank ties then fall to the path, as in query.search."""
    from imgsim_fast.catalog import query

    query._prepare(cat)  # registers py_casefold, which compiled 'contains' filters call
    sql, params = query.compile_expr(where)
    rows = cat.conn.execute(
        f"SELECT f.id, f.path, v.row FROM (SELECT id, path FROM files WHERE {sql}) f "
        "JOIN vectors v ON v.file_id = f.id WHERE v.array = ? ORDER BY f.path", (*params, space.array)).fetchall()
    fids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    vrows = np.fromiter((r[2] for r in rows), np.int64, len(rows))
    return fids, [r[1] for r in rows], vrows


# ---------------------------------------------------------------------------------------------------
# Query vectors


def _stored_vector(cat: Catalog, array: str, path: str):
    """The catalog's vector for `path`, or None. A name that is not UTF-8 cannot be in the catalog (the
    indexer skips such names) nor be passed to SQLite, so it is never looked up: it is hashed or
    embedded like any file outside the catalog."""
    try:
        os.path.abspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return None
    return cat.vector_of(array, path)


def _query_hashes(cat: Catalog, space: _Space, paths: list[str], workers: int | None):
    """Codes (n, words) for query images, and per query an error or None. Indexed files reuse their
    stored codes; the rest are hashed, in parallel processes when there are many."""
    from imgsim_fast.features.codes import words_for_bits

    out = np.zeros((len(paths), words_for_bits(space.bits)), np.uint64)
    errors: list[str | None] = [None] * len(paths)
    todo = []
    for i, p in enumerate(paths):
        v = _stored_vector(cat, space.array, p)
        if v is not None:
            out[i] = v
        else:
            todo.append(i)
    if todo:
        from imgsim_fast.runtime.pool import hash_paths

        res = hash_paths([paths[i] for i in todo], kinds=(space.hash_kind,), mode=space.mode,
                         hash_size=space.hash_size, workers=1 if len(todo) < 64 else workers, progress=False)
        got = {os.path.abspath(p): c for p, c in zip(res.paths, res.codes[space.hash_kind])}
        reasons = {os.path.abspath(f.path): f.reason for f in res.failures}
        for i in todo:
            key = os.path.abspath(paths[i])
            if key in got:
                out[i] = got[key]
            else:
                errors[i] = reasons.get(key, "could not be hashed")
    return out, errors


def _query_embeddings(cat: Catalog, space: _Space, paths: list[str], workers: int | None):
    out = None
    errors: list[str | None] = [None] * len(paths)
    stored, todo = {}, []
    for i, p in enumerate(paths):
        v = _stored_vector(cat, space.array, p)
        if v is not None:
            stored[i] = v
        else:
            todo.append(i)
    dim = None
    if stored:
        dim = len(next(iter(stored.values())))
    emb = None
    if todo:
        from imgsim_fast.features.embedding import embed_paths

        emb = embed_paths([paths[i] for i in todo], model=space.model, workers=workers, progress=False)
        dim = emb.vectors.shape[1]
    if dim is None:
        return np.zeros((len(paths), 0), np.float32), errors
    out = np.zeros((len(paths), dim), np.float32)
    for i, v in stored.items():
        out[i] = v
    if emb is not None:
        for row, j in enumerate(emb.indices):
            out[todo[int(j)]] = emb.vectors[row]
        reasons = {f.path: f.reason for f in emb.failures}
        done = {todo[int(j)] for j in emb.indices}
        for i in todo:
            if i not in done:
                errors[i] = reasons.get(paths[i], "could not be embedded")
    return out, errors


# ---------------------------------------------------------------------------------------------------
# Ranking


def _rank_hash(codes_db: np.ndarray, q: np.ndarray, k: int, threads: int | None):
    """Top k per query over the candidates' codes: (idx (m, kk), dist (m, kk)), ties by candidate
    order (= path) as hamming_topk breaks ties by index."""
    from imgsim_fast.indexes.hamming import hamming_topk

    return hamming_topk(np.ascontiguousarray(q), np.ascontiguousarray(codes_db), k, threads=threads)


def _rank_embed(vecs: np.ndarray, q: np.ndarray, k: int):
    """Exact top k by cosine (vectors are unit norm): (idx, scores); ties by candidate order."""
    k = min(k, vecs.shape[0])
    m = q.shape[0]
    out_i = np.empty((m, k), np.int64)
    out_s = np.empty((m, k), np.float32)
    block = max(1, (64 << 20) // (4 * max(1, vecs.shape[0])))  # score blocks of ~64 MiB
    for s in range(0, m, block):
        sims = q[s:s + block] @ vecs.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else \
            np.broadcast_to(np.arange(sims.shape[1]), sims.shape)
        ps = np.take_along_axis(sims, part, axis=1)
        # lexsort: by score descending, then by candidate index (path order) for equal scores
        order = np.lexsort((part, -ps), axis=1) if ps.size else np.zeros_like(part)
        out_i[s:s + block] = np.take_along_axis(part, order, axis=1)
        out_s[s:s + block] = np.take_along_axis(ps, order, axis=1)
    return out_i, out_s


# Above this many candidates, embedding search goes through a persistent HNSW index of the whole array
# (VectorIndex, built once and extended as the catalog grows) instead of a full scan; vector_index.py
# measured brute force on a par with HNSW around 10,000 vectors.
HNSW_MIN_CANDIDATES = 50_000


def _hnsw_for(cat: Catalog, space: _Space):
    """A VectorIndex over every row of the embedding array, cached in `<catalog>.arrays/<array>.hnsw`.

    Arrays are append-only, so a cached index of the first L rows stays right: rows added since are
    added to it. A catalog rebuilt from scratch (fewer rows, or row 0 changed) rebuilds it.
    """
    from imgsim_fast.indexes.vectors import IndexFileError, VectorIndex

    data = cat.array(space.array)
    n = len(data)
    path = os.path.join(cat.arrays_dir, space.array + ".hnsw")
    idx = None
    if os.path.exists(path + ".json"):
        try:
            idx = VectorIndex.load(path)
            ids = idx.ids()
            stale = len(ids) > n or (len(ids) and not np.allclose(idx.get_vectors([0])[0],
                                                                  data[0] / np.linalg.norm(data[0]), atol=1e-5))
            have = len(ids)
            if stale:
                idx = None
        except (IndexFileError, KeyError):
            idx = None
    if idx is None:
        idx = VectorIndex(data.shape[1], exact_threshold=0)
        have = 0
    if have < n:
        for s in range(have, n, 100_000):
            e = min(n, s + 100_000)
            idx.add(np.asarray(data[s:e], np.float32), np.arange(s, e))
        try:
            idx.save(path)
        except OSError:
            pass  # a read-only catalog: the index lives for this call only
    return idx


def _rank_embed_hnsw(cat: Catalog, space: _Space, vrows: np.ndarray, q: np.ndarray, k: int):
    """HNSW over the whole array, over-fetched for the filter and for rows shared by copies: fetch k'
    rows, keep those that are candidates; double k' until k candidates are found or every row is."""
    idx = _hnsw_for(cat, space)
    n_rows = len(cat.array(space.array))
    cand_of_row: dict[int, list[int]] = {}
    for ci, r in enumerate(vrows):
        cand_of_row.setdefault(int(r), []).append(ci)
    m = q.shape[0]
    out_i = np.full((m, k), -1, np.int64)
    out_s = np.full((m, k), -np.inf, np.float32)
    todo = np.arange(m)
    kk = min(n_rows, int(np.ceil(k * n_rows / max(1, len(cand_of_row)))) + k)
    while len(todo):
        ids, scores = idx.knn(q[todo], kk)
        again = []
        for t, qi in enumerate(todo):
            found = [(float(s), ci) for r, s in zip(ids[t], scores[t]) if r >= 0 for ci in cand_of_row.get(int(r), ())]
            if len(found) >= k or kk >= n_rows:
                found.sort(key=lambda x: (-x[0], x[1]))
                found = found[:k]
                out_i[qi, :len(found)] = [c for _, c in found]
                out_s[qi, :len(found)] = [s for s, _ in found]
            else:
                again.append(qi)
        todo = np.asarray(again, np.int64)
        kk = min(n_rows, 2 * kk)
    kept = int((out_i >= 0).all(axis=0).sum()) if m else 0
    return out_i[:, :kept], out_s[:, :kept]


# ---------------------------------------------------------------------------------------------------
# Public API


def search(cat: Catalog, query=None, *, text: str | None = None, method: str = "phash", model: str | None = None,
           k: int = 20, where=None, exclude_self: bool = False, threads: int | None = None,
           workers: int | None = None) -> SearchResult:
    """The k catalog files most similar to `query` (an image path; need not be in the catalog) or to
    `text` (CLIP only), among the files passing `where` (a query.Expr). Raises ValueError when the
    query image cannot be loaded."""
    if (query is None) == (text is None):
        raise ValueError("give either a query image or text, not both")
    if text is not None:
        return search_text(cat, [text], method="clip" if method in HASH_METHODS else method, model=model,
                           k=k, where=where)[0]
    res = search_batch(cat, [query], method=method, model=model, k=k, where=where, exclude_self=exclude_self,
                       threads=threads, workers=workers)[0]
    if res.error:
        raise ValueError(f"{display_path(query)}: {display_path(res.error)}")
    return res


def search_text(cat: Catalog, texts: list[str], *, method: str = "clip", model: str | None = None, k: int = 20,
                where=None) -> list[SearchResult]:
    """Text queries through CLIP's text tower, ranked against the catalog's CLIP image embeddings."""
    if method not in EMBED_METHODS:
        raise ValueError("text queries need an embedding method (clip)")
    space = resolve_space(cat, "clip", model)
    from imgsim_fast.features.embedding import embed_text

    q = embed_text(list(texts), space.model)
    return _rank(cat, space, [str(t) for t in texts], q, [None] * len(texts), k, where, False, None)


def search_batch(cat: Catalog, queries, *, method: str = "phash", model: str | None = None, k: int = 20,
                 where=None, exclude_self: bool = False, threads: int | None = None,
                 workers: int | None = None) -> list[SearchResult]:
    """One SearchResult per query image, in input order. All cores: queries are hashed or embedded by
    the parallel pipelines (`workers` processes), and ranked in one batched call (hamming_topk threads
    or one BLAS matrix product). A query that cannot be loaded gets `error` and no hits."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    paths = [os.fspath(p) for p in queries]
    space = resolve_space(cat, method, model)
    if space.kind == "hash":
        q, errors = _query_hashes(cat, space, paths, workers)
    else:
        q, errors = _query_embeddings(cat, space, paths, workers)
    return _rank(cat, space, paths, q, errors, k, where, exclude_self, threads)


def _rank(cat, space, labels, q, errors, k, where, exclude_self, threads) -> list[SearchResult]:
    with cat.snapshot():
        fids, cpaths, vrows = _candidates(cat, space, where)
        data = cat.array(space.array)
    results = [SearchResult(lbl, space.method, error=e) for lbl, e in zip(labels, errors)]
    ok = [i for i, e in enumerate(errors) if e is None]
    if not ok or not len(fids):
        return results
    kk = min(len(fids), k + (1 if exclude_self else 0))
    qq = q[ok]
    if space.kind == "hash":
        idx, dist = _rank_hash(np.asarray(data[vrows]), qq, kk, threads)
        scores = 1.0 - dist / space.bits
    elif len(fids) >= HNSW_MIN_CANDIDATES:
        idx, scores = _rank_embed_hnsw(cat, space, vrows, np.ascontiguousarray(qq, np.float32), kk)
        dist = None
    else:
        idx, scores = _rank_embed(np.asarray(data[vrows], np.float32), np.ascontiguousarray(qq, np.float32), kk)
        dist = None
    for t, qi in enumerate(ok):
        me = os.path.abspath(labels[qi]) if exclude_self else None
        hits = []
        for j in range(idx.shape[1]):
            c = int(idx[t, j])
            if c < 0 or cpaths[c] == me:
                continue
            hits.append(Hit(cpaths[c], round(float(scores[t, j]), 6), len(hits) + 1, int(fids[c]),
                            None if dist is None else int(dist[t, j])))
            if len(hits) == k:
                break
        results[qi].hits = hits
    return results


def query_files(spec: str) -> list[str]:
    """The query images a batch names: a folder (walked), a text file (one path a line, '#' comments,
    relative paths from the file's folder), or one image."""
    from imgsim_fast.io.loading import iter_image_files

    if os.path.isdir(spec):
        return list(iter_image_files([spec]))
    if spec.lower().endswith((".txt", ".lst", ".list")):
        base = os.path.dirname(os.path.abspath(spec))
        with open(spec, encoding="utf-8") as f:
            lines = [ln.strip() for ln in f]
        return [os.path.join(base, ln) for ln in lines if ln and not ln.startswith("#")]
    return [spec]


def write_results(results: list[SearchResult], path: str) -> str:
    """Write results as JSON (a list of {query, method, error, hits}) or, for a `.parquet` path, as one
    row per hit (query, rank, path, score, distance, file_id). Parquet needs pyarrow, which imgsim_fast
    does not depend on: install it yourself to use it."""
    if path.lower().endswith(".parquet"):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError("writing Parquet needs pyarrow (`pip install pyarrow`); write .json instead") from None
        cols = {"query": [], "method": [], "rank": [], "path": [], "score": [], "distance": [], "file_id": []}
        for r in results:
            for h in r.hits:
                for key, v in (("query", path_text(r.query)), ("method", r.method), ("rank", h.rank),
                               ("path", path_text(h.path)),
                               ("score", h.score), ("distance", h.distance), ("file_id", h.file_id)):
                    cols[key].append(v)
        with replacing(path, "wb") as f:
            pq.write_table(pa.table(cols), f)
        return path
    with replacing(path) as f:
        json.dump([r.to_dict() for r in results], f, indent=1)
        f.write("\n")
    return path
