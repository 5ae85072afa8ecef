"""Catalog queries: a small filter expression tree compiled to parameterised SQL, and similarity search
(filter first, then rank the survivors by Hamming distance of their hash codes).

    from imgsim_fast.catalog.query import Tag, AnyTag, Text, Range, search
    search(cat, Tag("beach") & Range("taken", lo="2020-01-01"), like="photo.jpg", k=20)
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from imgsim_fast.catalog.store import Catalog, FileRecord, hash_array_name
from imgsim_fast.features.metadata import normalise_tag

__all__ = [
    "Expr", "Tag", "AllTags", "AnyTag", "Text", "Field", "Range", "And", "Or", "Not",
    "FIELDS", "compile_expr", "select", "search", "Match",
]

# Queryable fields -> SQL over the files table. `camera` is "make model"; `pixels` is width * height.
FIELDS = {
    "path": "path", "size": "size", "mtime_ns": "mtime_ns", "width": "width", "height": "height",
    "pixels": "width * height", "format": "format", "mode": "mode", "digest": "digest",
    "artist": "artist", "make": "make", "model": "model", "taken": "taken", "lat": "lat", "lon": "lon",
    "camera": "trim(coalesce(make, '') || ' ' || coalesce(model, ''))",
    "error": "error", "description": "description",
    # XMP: stars -1 (rejected) .. 5; the colour label compared casefolded (Lightroom writes "Red").
    "rating": "rating", "label": "py_casefold(label)",
}
# Fields whose SQL is casefolded: a value compared with them is casefolded too (Field, Range).
_CASEFOLDED = frozenset({"label"})
_OPS = ("=", "!=", "<", "<=", ">", ">=", "contains")


class Expr:
    """A filter; combine with & (and), | (or), ~ (not)."""

    def __and__(self, other: Expr) -> Expr:
        return And((self, other))

    def __or__(self, other: Expr) -> Expr:
        return Or((self, other))

    def __invert__(self) -> Expr:
        return Not(self)


@dataclass(frozen=True)
class Tag(Expr):
    """The file has this tag (case-insensitive, whitespace-normalised)."""
    name: str


@dataclass(frozen=True)
class AllTags(Expr):
    names: tuple


@dataclass(frozen=True)
class AnyTag(Expr):
    names: tuple


@dataclass(frozen=True)
class Text(Expr):
    """The description contains `needle` (casefolded substring)."""
    needle: str


@dataclass(frozen=True)
class Field(Expr):
    """`name op value`; op 'contains' is a casefolded substring test. A missing value never matches."""
    name: str
    op: str
    value: object


@dataclass(frozen=True)
class Range(Expr):
    """lo <= name <= hi, either bound optional (dates as ISO strings compare correctly)."""
    name: str
    lo: object = None
    hi: object = None


@dataclass(frozen=True)
class And(Expr):
    children: tuple


@dataclass(frozen=True)
class Or(Expr):
    children: tuple


@dataclass(frozen=True)
class Not(Expr):
    child: Expr


def _field_sql(name: str) -> str:
    try:
        return FIELDS[name]
    except KeyError:
        raise ValueError(f"unknown field {name!r}; known: {', '.join(sorted(FIELDS))}") from None


def compile_expr(e: Expr | None) -> tuple[str, list]:
    """SQL boolean over `files` (no alias) and its parameters. Every leaf is COALESCEd to 0/1, so a
    missing value is plain false and Not means 'does not match' (two-valued logic)."""
    if e is None:
        return "1", []
    if isinstance(e, Tag):
        return "(id IN (SELECT file_id FROM tags WHERE norm = ?))", [normalise_tag(e.name)]
    if isinstance(e, AllTags):
        return compile_expr(And(tuple(Tag(n) for n in e.names))) if e.names else ("1", [])
    if isinstance(e, AnyTag):
        if not e.names:
            return "0", []
        q = ",".join("?" * len(e.names))
        return f"(id IN (SELECT file_id FROM tags WHERE norm IN ({q})))", [normalise_tag(n) for n in e.names]
    if isinstance(e, Text):
        return "(instr(text_norm, ?) > 0)", [e.needle.casefold()]
    if isinstance(e, Field):
        col = _field_sql(e.name)
        if e.op not in _OPS:
            raise ValueError(f"unknown operator {e.op!r}; expected one of {_OPS}")
        if e.op == "contains":
            return f"coalesce(instr(py_casefold({col}), ?) > 0, 0)", [str(e.value).casefold()]
        value = str(e.value).casefold() if e.name in _CASEFOLDED and e.value is not None else e.value
        return f"coalesce(({col}) {e.op} ?, 0)", [value]
    if isinstance(e, Range):
        col = _field_sql(e.name)
        parts, params = [], []
        if e.lo is not None:
            parts.append(f"({col}) >= ?")
            params.append(e.lo)
        if e.hi is not None:
            parts.append(f"({col}) <= ?")
            params.append(e.hi)
        if not parts:
            return f"(({col}) IS NOT NULL)", []
        return f"coalesce({' AND '.join(parts)}, 0)", params
    if isinstance(e, (And, Or)):
        if not e.children:
            return ("1" if isinstance(e, And) else "0"), []
        sqls, params = [], []
        for c in e.children:
            s, p = compile_expr(c)
            sqls.append(s)
            params += p
        return "(" + (" AND " if isinstance(e, And) else " OR ").join(sqls) + ")", params
    if isinstance(e, Not):
        s, p = compile_expr(e.child)
        return f"(NOT {s})", p
    raise TypeError(f"not a filter expression: {e!r}")


def _prepare(cat: Catalog) -> None:
    # Python's casefold, so 'contains' on fields means exactly what `Text` does on text_norm.
    cat.conn.create_function("py_casefold", 1, lambda s: None if s is None else str(s).casefold(),
                             deterministic=True)


def select(cat: Catalog, where: Expr | None = None, limit: int | None = None) -> list[FileRecord]:
    """Files matching `where`, ordered by path."""
    _prepare(cat)
    sql, params = compile_expr(where)
    recs = cat.files(sql, params)
    return recs[:limit] if limit is not None else recs


@dataclass
class Match:
    path: str
    distance: int
    file_id: int


# Above this fraction of the array's rows passing the filter, scanning the whole array with an
# over-fetched top-k beats gathering the candidates' codes first.
_SCAN_FRACTION = 0.5


def search(cat: Catalog, where: Expr | None = None, *, like, k: int = 20, kind: str = "phash",
           hash_size: int = 8, mode: str = "fast", threads: int | None = None) -> list[Match]:
    """The k files matching `where` nearest to `like` (an indexed path, any image path, or a code
    (words,) uint64), by Hamming distance of their `kind` codes; ties by path.

    Filter first: the SQL filter yields the candidate rows. A selective filter gathers their codes and
    ranks only them, so it returns k results whenever k files match. A loose filter scans the whole
    array with hamming_topk for k' rows, over-fetched by rows / candidates (dead rows of removed files
    and rows shared by copies count too), doubling k' until k matches lie strictly nearer than the
    farthest row fetched (so ties at the cut are complete) or the array is exhausted.
    """
    from imgsim_fast.indexes.hamming import hamming_distance, hamming_topk

    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    _prepare(cat)
    name = hash_array_name(kind, hash_size, mode)
    with cat.snapshot():
        q = _query_code(cat, like, name, kind, hash_size, mode)
        sql, params = compile_expr(where)
        cand = cat.conn.execute(
            f"SELECT v.row, f.path, f.id FROM vectors v JOIN (SELECT id, path FROM files WHERE {sql}) f "
            "ON f.id = v.file_id WHERE v.array = ?", (*params, name)).fetchall()
        codes = cat.array(name)
    if not cand or k == 0:
        return []
    q = np.ascontiguousarray(q, dtype=np.uint64).reshape(1, -1)
    n_rows = len(codes)
    if len(cand) < _SCAN_FRACTION * n_rows:
        rows = np.fromiter((c[0] for c in cand), dtype=np.int64, count=len(cand))
        d = hamming_distance(q, np.ascontiguousarray(codes[rows]))
        order = sorted(range(len(cand)), key=lambda i: (int(d[i]), cand[i][1]))[:k]
        return [Match(cand[i][1], int(d[i]), cand[i][2]) for i in order]
    by_row: dict[int, list] = {}
    for row, path, fid in cand:
        by_row.setdefault(row, []).append((path, fid))
    kk = min(n_rows, int(np.ceil(k * n_rows / len(by_row))) + k)
    while True:
        ids, dists = hamming_topk(q, codes, kk, threads=threads)
        ids, dists = ids[0], dists[0]
        complete = kk >= n_rows
        cut = None if complete else int(dists[-1])  # rows at distance < cut are all fetched
        found = [(int(dd), path, fid) for r, dd in zip(ids, dists) if (cut is None or dd < cut)
                 for path, fid in by_row.get(int(r), ())]
        if complete or len(found) >= k:
            found.sort()
            return [Match(p, d, f) for d, p, f in found[:k]]
        kk = min(n_rows, 2 * kk)


def _query_code(cat: Catalog, like, name: str, kind: str, hash_size: int, mode: str) -> np.ndarray:
    if isinstance(like, np.ndarray):
        return like
    path = os.fspath(like)
    v = cat.vector_of(name, path)
    if v is not None:
        return v
    from imgsim_fast.features import hashing
    from imgsim_fast.io.loading import load_image

    im = load_image(path, min_size=hashing.draft_size((kind,), mode, hash_size))
    return hashing.hash_images([im], (kind,), mode, hash_size)[kind][0]
