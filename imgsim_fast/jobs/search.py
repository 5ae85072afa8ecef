"""Search a catalog (issues 7 and 15): one function for every way of asking. By example image (any file, in
the catalog or not; several make a batch) or a stored code or vector, by text (CLIP), ranked by hashes
(Hamming distance) or embeddings (cosine); or, with neither, the files the metadata filter passes.

    from imgsim_fast.jobs.search import search
    search(cat, "query.jpg", method="cnn", k=20, where=Tag("beach"))
    search(cat, text="a red car", model="/models/clip-vit-b32")
    search(cat, ["a.jpg", "b.jpg"])                      # a batch: SearchResults, one per example
    search(cat, where=Field("rating", ">=", 4))          # no example, no text: the files that pass

Filter first, then rank: the filter (catalog/query.py) picks the candidates, so a selective filter still
returns k results. Byte-identical files (one content digest in the catalog) are one hit carrying the others'
paths in `copies` (collapse=False lists each). Scores are higher-is-closer: cosine similarity, or 1 - d / bits
for hashes (the distance beside it); `closeness` puts them in the words of the dedup thresholds
(jobs/dedup/detect.py DEFAULTS), where those were measured for the method.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from imgsim_fast.catalog.store import Catalog, embedding_array_names, hash_array_name, holds_name
from imgsim_fast.io.names import display_path, path_text

__all__ = ["Hit", "SearchResult", "SearchResults", "search", "write_results", "resolve_space", "closeness",
           "HASH_METHODS", "EMBED_METHODS", "ROW_COLUMNS", "query_files"]

HASH_METHODS = ("phash", "ahash", "dhash", "whash", "colorhash")
EMBED_METHODS = ("cnn", "clip")
# One row per file of a result: the hit, then each of its identical copies (copy_of = the hit's path).
ROW_COLUMNS = ("query", "method", "rank", "path", "score", "distance", "bits", "closeness", "copies", "copy_of",
               "file_id")


@dataclass
class Hit:
    path: str
    score: float | None          # higher is closer: cosine similarity, or 1 - hamming / bits; None when listing
    rank: int                    # 1-based
    file_id: int
    distance: int | None = None  # Hamming distance (hash methods only)
    bits: int | None = None      # code length the distance is out of
    closeness: str | None = None  # "duplicate-close", "similar", "different"; None where no threshold applies
    copies: list[str] = field(default_factory=list)  # other files with the same bytes (collapsed into this hit)

    def describe(self) -> str:
        """The distance in words: "2/64 bits, duplicate-close", "cos 0.931, similar", "" when listing."""
        if self.distance is not None:
            text = f"{self.distance}/{self.bits} bits"
        elif self.score is not None:
            text = f"cos {self.score:.3f}"
        else:
            return ""
        return f"{text}, {self.closeness}" if self.closeness else text


class _Rows:
    """to_rows / to_arrow / to_pandas over `to_rows()`: results as tables (pyarrow, pandas: the [arrow] extra)."""

    def to_arrow(self):
        from imgsim_fast.io.tables import to_arrow

        return to_arrow(self.to_rows(), ROW_COLUMNS)

    def to_pandas(self):
        from imgsim_fast.io.tables import to_pandas

        return to_pandas(self.to_rows(), ROW_COLUMNS)


@dataclass
class SearchResult(_Rows):
    query: str | None            # the example image path, the text, or None (filter only)
    method: str                  # the hash kind, "embed:<model>", or "filter"
    hits: list[Hit] = field(default_factory=list)
    error: str | None = None     # the example could not be loaded or embedded

    def to_dict(self) -> dict:
        """For JSON: paths (and errors, which may quote one) as names.path_text."""
        return {"query": None if self.query is None else path_text(self.query), "method": self.method,
                "error": None if self.error is None else path_text(self.error),
                "hits": [dict(h.__dict__, path=path_text(h.path), copies=[path_text(c) for c in h.copies])
                         for h in self.hits]}

    def to_rows(self) -> list[dict]:
        """One row per hit and one per identical copy of it (copy_of names the hit), in rank order."""
        q = None if self.query is None else path_text(self.query)
        rows = []
        for h in self.hits:
            base = {"query": q, "method": self.method, "rank": h.rank, "score": h.score, "distance": h.distance,
                    "bits": h.bits, "closeness": h.closeness, "file_id": h.file_id}
            rows.append(dict(base, path=path_text(h.path), copies=len(h.copies), copy_of=None))
            rows += [dict(base, path=path_text(c), copies=0, copy_of=path_text(h.path), file_id=None)
                     for c in h.copies]
        return rows


class SearchResults(list, _Rows):
    """The results of a batch, one SearchResult per example (or text), in input order."""

    def to_rows(self) -> list[dict]:
        return [row for r in self for row in r.to_rows()]


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


def closeness(space: _Space, distance: int | None, score: float | None, text: bool = False) -> str | None:
    """A hit's distance in the words of dedup's thresholds (detect.DEFAULTS, the one source of them):
    "duplicate-close" within what dedup calls a duplicate, "similar" within its look-alike tier, else
    "different". Only where those thresholds were measured: 64-bit pHash, and cosines of the default
    embedding model (DEFAULTS are for its backbone vectors, which the catalog stores). Other hashes, CLIP
    and text-to-image cosines get no word (their scales differ)."""
    from imgsim_fast.jobs.dedup.detect import DEFAULTS

    if space.kind == "hash":
        if distance is None or space.hash_kind != "phash" or space.bits != 64:
            return None
        return ("duplicate-close" if distance <= DEFAULTS.phash else
                "similar" if distance <= DEFAULTS.similar_phash else "different")
    from imgsim_fast.features.embedding.models import DEFAULT_MODEL

    if text or score is None or space.model != DEFAULT_MODEL:
        return None
    return ("duplicate-close" if score >= DEFAULTS.embed_cos else
            "similar" if score >= DEFAULTS.similar_cos else "different")


# ---------------------------------------------------------------------------------------------------
# Candidates: the filter first


def _filter_sql(cat: Catalog, where) -> tuple[str, list]:
    from imgsim_fast.catalog.query import filter_sql

    return filter_sql(cat, where)


def _candidate_rows(cat: Catalog, space: _Space, where):
    """(file ids, paths, rows, digests) of the files passing `where` that have `space`'s array, by path."""
    sql, params = _filter_sql(cat, where)
    rows = cat.conn.execute(
        f"SELECT f.id, f.path, v.row, f.digest FROM (SELECT id, path, digest FROM files WHERE {sql}) f "
        "JOIN vectors v ON v.file_id = f.id WHERE v.array = ? ORDER BY f.path", (*params, space.array)).fetchall()
    fids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    vrows = np.fromiter((r[2] for r in rows), np.int64, len(rows))
    return fids, [r[1] for r in rows], vrows, [r[3] for r in rows]


def _candidates(cat: Catalog, space: _Space, where) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(file ids, paths, rows) of the files passing `where` that have `space`'s array, ordered by path:
    rank ties then fall to the path."""
    fids, paths, vrows, _ = _candidate_rows(cat, space, where)
    return fids, paths, vrows


def _collapse(digests: list) -> tuple[np.ndarray, dict[int, list[int]]]:
    """Keep the first (by path) of each set of byte-identical files: (kept indices, kept -> the others).
    Files without a digest (not read yet, unreadable) are never merged."""
    first: dict[str, int] = {}
    keep, copies = [], {}
    for i, d in enumerate(digests):
        if d is not None and d in first:
            copies.setdefault(first[d], []).append(i)
        else:
            if d is not None:
                first[d] = i
            keep.append(i)
    return np.asarray(keep, np.int64), copies


# ---------------------------------------------------------------------------------------------------
# Query vectors


def _stored_vector(cat: Catalog, array: str, path: str):
    """The catalog's vector for `path`, or None. A name that is not UTF-8 cannot be in the catalog (the
    indexer skips such names) nor be passed to SQLite, so it is never looked up: it is hashed or
    embedded like any file outside the catalog."""
    if not holds_name(os.path.abspath(path)):
        return None
    return cat.vector_of(array, path)


def _given_vector(space: _Space, example: np.ndarray, width: int) -> np.ndarray:
    """An example passed as a code (uint64 words) or a vector (floats), checked against the array."""
    a = np.asarray(example)
    want = np.uint64 if space.kind == "hash" else np.float32
    if a.ndim != 1 or a.shape[0] != width or (space.kind == "hash" and a.dtype != np.uint64):
        what = f"uint64 code of {width} words" if space.kind == "hash" else f"vector of {width} values"
        raise ValueError(f"an example given as an array must be one {what} for {space.method}, "
                         f"got {a.dtype} {a.shape}")
    return a.astype(want, copy=False)


def _query_hashes(cat: Catalog, space: _Space, paths: list[str], workers: int | None, progress=False):
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
        from imgsim_fast.features.hash_files import hash_paths

        res = hash_paths([paths[i] for i in todo], kinds=(space.hash_kind,), mode=space.mode,
                         hash_size=space.hash_size, workers=1 if len(todo) < 64 else workers, progress=progress)
        got = {os.path.abspath(p): c for p, c in zip(res.paths, res.codes[space.hash_kind])}
        reasons = {os.path.abspath(f.path): f.reason for f in res.failures}
        for i in todo:
            key = os.path.abspath(paths[i])
            if key in got:
                out[i] = got[key]
            else:
                errors[i] = reasons.get(key, "could not be hashed")
    return out, errors


def _query_embeddings(cat: Catalog, space: _Space, paths: list[str], workers: int | None, progress=False):
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

        emb = embed_paths([paths[i] for i in todo], model=space.model, workers=workers, progress=progress)
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

# Above this fraction of the array's rows among the candidates, scanning the whole array with an
# over-fetched top-k beats gathering the candidates' codes first.
_SCAN_FRACTION = 0.5


def _rank_hash(codes: np.ndarray, vrows: np.ndarray, q: np.ndarray, k: int, threads: int | None):
    """Top k per query among the candidates (rows `vrows` of `codes`, in path order) by Hamming distance,
    ties by candidate order: (idx (m, kk), dist (m, kk)), kk = min(k, candidates).

    A selective filter gathers the candidates' codes and ranks only them. A loose one scans the whole
    array with hamming_topk for k' rows, over-fetched by rows / candidates (rows of removed files and rows
    shared by copies count too), doubling k' until k candidates lie strictly nearer than the farthest row
    fetched (so ties at the cut are complete) or the array is exhausted."""
    from imgsim_fast.indexes.hamming import hamming_topk

    kk = min(k, len(vrows))
    q = np.ascontiguousarray(q, np.uint64)
    n_rows = len(codes)
    if len(vrows) < _SCAN_FRACTION * n_rows:  # hamming_topk breaks ties by index = candidate order
        return hamming_topk(q, np.ascontiguousarray(codes[vrows]), kk, threads=threads)
    by_row: dict[int, list[int]] = {}
    for ci, r in enumerate(vrows):
        by_row.setdefault(int(r), []).append(ci)
    out_i = np.empty((len(q), kk), np.int64)
    out_d = np.empty((len(q), kk), np.int64)
    todo = np.arange(len(q))
    fetch = min(n_rows, int(np.ceil(k * n_rows / len(by_row))) + k)
    while len(todo):
        ids, dists = hamming_topk(q[todo], codes, fetch, threads=threads)
        complete = fetch >= n_rows
        again = []
        for t, qi in enumerate(todo):
            cut = None if complete else int(dists[t, -1])  # rows at distance < cut are all fetched
            found = [(int(d), ci) for r, d in zip(ids[t], dists[t]) if cut is None or d < cut
                     for ci in by_row.get(int(r), ())]
            if complete or len(found) >= kk:
                found.sort()
                out_i[qi] = [ci for _, ci in found[:kk]]
                out_d[qi] = [d for d, _ in found[:kk]]
            else:
                again.append(qi)
        todo = np.asarray(again, np.int64)
        fetch = min(n_rows, 2 * fetch)
    return out_i, out_d


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


def search(cat, example=None, *, text=None, method: str | None = None, model: str | None = None, k: int = 20,
           where=None, exclude_self: bool = False, collapse: bool = True, hash_size: int | None = None,
           mode: str | None = None, threads: int | None = None, workers: int | None = None,
           progress: bool | None = False):
    """Search the catalog `cat` (a Catalog, or the path of one, opened read-only for the call).

    example: an image path (need not be in the catalog), or a code / vector as an array (uint64 words for a
      hash method, floats for an embedding); a list or tuple of them is a batch.
    text: words for CLIP's text tower (a list of them is a batch). Not together with `example`.
    Neither: the files passing `where`, by path (the first k).
    method: a hash kind (HASH_METHODS) or "cnn" / "clip"; default phash, or clip for text.
    where: a filter expression (catalog/query.py: Tag, Text, Field, Range, And, ...), applied first.
    collapse: byte-identical files are one hit, the others in `Hit.copies`; k counts distinct contents.
    progress: bars on stderr while example images are hashed or embedded (None: when stderr is a terminal).
    Returns a SearchResult, or SearchResults (a list) for a batch. A single example that cannot be read
    raises ValueError; in a batch it gets `error` and no hits.
    """
    if not isinstance(cat, Catalog):
        with Catalog(os.fspath(cat)) as opened:
            return search(opened, example, text=text, method=method, model=model, k=k, where=where,
                          exclude_self=exclude_self, collapse=collapse, hash_size=hash_size, mode=mode,
                          threads=threads, workers=workers, progress=progress)
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 0:
        raise ValueError(f"k must be an integer >= 0, got {k!r}")
    if example is not None and text is not None:
        raise ValueError("give example images or text, not both")
    if text is not None:
        batch = not isinstance(text, str)
        texts = [str(t) for t in (text if batch else [text])]
        if method in HASH_METHODS:
            raise ValueError(f"text queries rank by CLIP embeddings, not by {method} hashes; use --method clip")
        space = resolve_space(cat, method or "clip", model)
        from imgsim_fast.features.embedding import embed_text

        q = embed_text(texts, space.model) if texts else np.zeros((0, 1), np.float32)
        res = _rank(cat, space, texts, q, [None] * len(texts), k, where, False, collapse, threads, text=True)
        return SearchResults(res) if batch else res[0]
    if example is None:
        return _list(cat, where, k, collapse)
    batch = isinstance(example, (list, tuple))
    examples = list(example) if batch else [example]
    space = resolve_space(cat, method or "phash", model, hash_size=hash_size, mode=mode)
    res = _search_examples(cat, space, examples, k, where, exclude_self, collapse, threads, workers, progress)
    if batch:
        return SearchResults(res)
    if res[0].error:
        raise ValueError(f"{display_path(res[0].query)}: {display_path(res[0].error)}")
    return res[0]


def _search_examples(cat, space, examples, k, where, exclude_self, collapse, threads, workers, progress=False):
    """Examples are paths or arrays: the paths are hashed or embedded together (all cores), the arrays taken
    as they are; all are ranked in one batched call."""
    width = cat.arrays()[space.array]["width"]
    labels, given = [], {}
    for i, e in enumerate(examples):
        if isinstance(e, np.ndarray):
            given[i] = _given_vector(space, e, width)
            labels.append(f"<{space.method} {'code' if space.kind == 'hash' else 'vector'}>")
        else:
            labels.append(os.fspath(e))
    paths = [p for i, p in enumerate(labels) if i not in given]
    if space.kind == "hash":
        qp, errp = _query_hashes(cat, space, paths, workers, progress)
    else:
        qp, errp = _query_embeddings(cat, space, paths, workers, progress)
    dtype = np.uint64 if space.kind == "hash" else np.float32
    q = np.zeros((len(examples), width), dtype)
    errors: list[str | None] = [None] * len(examples)
    it = iter(zip(qp, errp))
    for i in range(len(examples)):
        if i in given:
            q[i] = given[i]
        else:
            v, errors[i] = next(it)
            if errors[i] is None:
                q[i] = v
    own = [None if i in given else os.path.abspath(p) for i, p in enumerate(labels)]
    return _rank(cat, space, labels, q, errors, k, where, exclude_self, collapse, threads, own=own)


def _rank(cat, space, labels, q, errors, k, where, exclude_self, collapse, threads, text=False,
          own=None) -> list[SearchResult]:
    """Rank the candidates for each query vector; own[i]: the absolute path of example i (None for a given
    array or text), which heads its identical copies or, with exclude_self, is left out."""
    with cat.snapshot():
        fids, cpaths, vrows, digests = _candidate_rows(cat, space, where)
        data = cat.array(space.array)
    copies_of: dict[int, list[int]] = {}
    all_paths = cpaths
    if collapse:
        keep, copies = _collapse(digests)
        copies_of = {j: copies[int(c)] for j, c in enumerate(keep) if int(c) in copies}
        fids, vrows, cpaths = fids[keep], vrows[keep], [cpaths[int(c)] for c in keep]
    results = [SearchResult(lbl, space.method, error=e) for lbl, e in zip(labels, errors)]
    ok = [i for i, e in enumerate(errors) if e is None]
    if not ok or not len(fids) or k == 0:
        return results
    kk = min(len(fids), k + (1 if exclude_self else 0))
    qq = q[ok]
    if space.kind == "hash":
        idx, dist = _rank_hash(data, vrows, qq, kk, threads)
        scores = 1.0 - dist / space.bits
    elif len(fids) >= HNSW_MIN_CANDIDATES:
        idx, scores = _rank_embed_hnsw(cat, space, vrows, np.ascontiguousarray(qq, np.float32), kk)
        dist = None
    else:
        idx, scores = _rank_embed(np.asarray(data[vrows], np.float32), np.ascontiguousarray(qq, np.float32), kk)
        dist = None
    for t, qi in enumerate(ok):
        me = own[qi] if own else None
        hits = []
        for j in range(idx.shape[1]):
            c = int(idx[t, j])
            if c < 0:
                continue
            group = [cpaths[c]] + [all_paths[o] for o in copies_of.get(c, ())]
            if me in group:  # the example itself heads its copies, or is left out (an identical copy stays a hit)
                group.remove(me)
                if not exclude_self:
                    group.insert(0, me)
                if not group:
                    continue
            d = None if dist is None else int(dist[t, j])
            s = round(float(scores[t, j]), 6)
            fid = int(fids[c]) if group[0] == cpaths[c] else _file_id(cat, group[0])
            hits.append(Hit(group[0], s, len(hits) + 1, fid, d, space.bits if d is not None else None,
                            closeness(space, d, s, text), group[1:]))
            if len(hits) == k:
                break
        results[qi].hits = _own_first(hits, me)
    return results


def _own_first(hits: list[Hit], me: str | None) -> list[Hit]:
    """The example's own file first among the hits that tie with it (a half-size copy is 0 bits from its
    original too, and ranked before it by path), ranks renumbered."""
    at = next((i for i, h in enumerate(hits) if h.path == me), None) if me is not None else None
    if not at:
        return hits
    first = next(i for i, h in enumerate(hits) if h.score == hits[at].score)
    hits.insert(first, hits.pop(at))
    for i, h in enumerate(hits):
        h.rank = i + 1
    return hits


def _file_id(cat: Catalog, path: str) -> int:
    return cat.conn.execute("SELECT id FROM files WHERE path = ?", (path,)).fetchone()[0]


def _list(cat: Catalog, where, k: int, collapse: bool) -> SearchResult:
    """No example, no text: the first k files passing `where`, by path (byte copies collapsed)."""
    sql, params = _filter_sql(cat, where)
    rows = cat.conn.execute(f"SELECT id, path, digest FROM files WHERE {sql} ORDER BY path", params).fetchall()
    keep, copies = _collapse([r[2] for r in rows]) if collapse else (np.arange(len(rows)), {})
    hits = [Hit(rows[int(c)][1], None, j + 1, rows[int(c)][0], copies=[rows[o][1] for o in copies.get(int(c), ())])
            for j, c in enumerate(keep[:k])]
    return SearchResult(None, "filter", hits)


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


def write_results(results, path: str) -> str:
    """Results to `path` by its extension (io/tables.py): .json, a list of {query, method, error, hits} as
    before; .csv and .parquet, the rows of `to_rows()` (one per hit and per identical copy)."""
    from imgsim_fast.io.tables import write_table

    results = results if isinstance(results, SearchResults) else SearchResults(results)
    return write_table(path, results.to_rows(), ROW_COLUMNS, json_doc=[r.to_dict() for r in results])
