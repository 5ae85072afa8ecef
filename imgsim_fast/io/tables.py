"""Tabular results out: one list of rows written as JSON, CSV or Parquet by the file's extension, or handed
to pyarrow / pandas. The one writer behind `--out` of hash, dedup, search and explore (issue 15).

    write_table("hits.parquet", rows, columns)      # .json, .csv or .parquet, written atomically
    to_arrow(rows, columns); to_pandas(rows, columns)

Rows are dicts of scalars (str, int, float, bool or None); `columns` fixes the order, and the types of an
empty table. pyarrow and pandas are the optional extra `imgsim_fast[arrow]`, imported only when asked for.
"""
from __future__ import annotations

import csv
import io
import json
import os

from imgsim_fast.io.atomic_write import check_target, replacing, write_text

__all__ = ["FORMATS", "MissingExtraError", "table_format", "check_table_target", "write_table", "to_arrow",
           "to_pandas"]

FORMATS = {".json": "json", ".csv": "csv", ".parquet": "parquet"}


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is not installed; the message names the extra. A ValueError too, so the CLI
    reports it as the one-line usage error it is."""


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise MissingExtraError(f"{top} is not installed: pip install 'imgsim_fast[arrow]'") from None


def table_format(path) -> str:
    """"json", "csv" or "parquet" from the extension of `path` (case-insensitive); ValueError otherwise."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"{os.fspath(path)}: --out writes .json, .csv or .parquet, not "
                         f"{ext or 'a name without an extension'}")
    return FORMATS[ext]


def check_table_target(path, fmt: str | None = None) -> str:
    """Before slow work: the format is known (`fmt`, else the extension's), the target writable, and pyarrow
    there when Parquet is asked for. Returns the format."""
    fmt = fmt or table_format(path)
    check_target(path)
    if fmt == "parquet":
        _require("pyarrow.parquet")
    return fmt


def to_arrow(rows: list[dict], columns) -> "pyarrow.Table":  # noqa: F821
    """A pyarrow Table of `rows`, columns in the given order; types inferred, null where a value is None."""
    pa = _require("pyarrow")
    columns = list(columns)
    if not rows:  # no values to infer from: strings, so an empty table still has its columns
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    return pa.table({c: pa.array([r.get(c) for r in rows]) for c in columns})


def to_pandas(rows: list[dict], columns) -> "pandas.DataFrame":  # noqa: F821
    pd = _require("pandas")
    return pd.DataFrame.from_records(list(rows), columns=list(columns))


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, bool):  # 1/0, as the dedup CSV always wrote flags
        return int(v)
    return v


def write_table(path, rows: list[dict], columns, *, json_doc=None, fmt: str | None = None) -> str:
    """Write `rows` to `path` in the format its extension names (or `fmt`), whole or not at all (atomic_write).
    json_doc: what a .json file holds instead of the list of rows, where a command's JSON has always been
    a richer document (search: queries with their errors)."""
    fmt = fmt or table_format(path)
    if fmt not in FORMATS.values():
        raise ValueError(f"unknown table format {fmt!r}; expected one of {', '.join(FORMATS.values())}")
    columns = list(columns)
    if fmt == "json":
        doc = json_doc if json_doc is not None else [{c: r.get(c) for c in columns} for r in rows]
        write_text(path, json.dumps(doc, indent=1) + "\n")
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(columns)
        for r in rows:
            w.writerow([_csv_value(r.get(c)) for c in columns])
        write_text(path, buf.getvalue(), newline="")  # the csv module wrote its own \r\n
    else:
        pq = _require("pyarrow.parquet")
        table = to_arrow(rows, columns)
        with replacing(path, "wb") as f:
            pq.write_table(table, f)
    return os.fspath(path)
