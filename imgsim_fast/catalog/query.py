"""Catalog filters: a small expression tree compiled to parameterised SQL over the files table, and
`select`, the files an expression passes. Ranking by similarity is jobs/search.py's (`search`), which
takes these expressions as its `where`.

    from imgsim_fast.catalog.query import Tag, AnyTag, Text, Range, select
    select(cat, Tag("beach") & Range("taken", lo="2020-01-01"))
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from imgsim_fast.catalog.store import Catalog, FileRecord
from imgsim_fast.features.metadata import normalise_tag

__all__ = [
    "Expr", "Tag", "AllTags", "AnyTag", "Text", "Field", "Range", "And", "Or", "Not",
    "FIELDS", "compile_expr", "filter_sql", "select",
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
# Fields holding numbers: a value that is no number matches nothing, so it is refused rather than run.
_NUMERIC = frozenset({"size", "mtime_ns", "width", "height", "pixels", "lat", "lon", "rating"})
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


def _value(name: str, value):
    """`value` as compared with field `name`: a number for a field of numbers (a numeric string, as a query
    string or a JSON body may carry it, is read as one), refused when it is none (it would match nothing)."""
    if name not in _NUMERIC or value is None:
        return value
    number = value
    if isinstance(value, str):
        for conv in (int, float):
            try:
                number = conv(value.strip())
                break
            except ValueError:
                pass
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise ValueError(f"{name} holds numbers; {value!r} is not one")
    return number


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
        value = _value(e.name, e.value)
        value = str(value).casefold() if e.name in _CASEFOLDED and value is not None else value
        return f"coalesce(({col}) {e.op} ?, 0)", [value]
    if isinstance(e, Range):
        col = _field_sql(e.name)
        lo, hi = _value(e.name, e.lo), _value(e.name, e.hi)
        parts, params = [], []
        if lo is not None:
            parts.append(f"({col}) >= ?")
            params.append(lo)
        if hi is not None:
            parts.append(f"({col}) <= ?")
            params.append(hi)
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


def filter_sql(cat: Catalog, where: Expr | None) -> tuple[str, list]:
    """compile_expr(where), ready to run on `cat`'s connection (the functions it calls registered)."""
    _prepare(cat)
    return compile_expr(where)


def select(cat: Catalog, where: Expr | None = None, limit: int | None = None) -> list[FileRecord]:
    """Files matching `where`, ordered by path."""
    sql, params = filter_sql(cat, where)
    recs = cat.files(sql, params)
    return recs[:limit] if limit is not None else recs
