"""Dedup results as one table: a row per group member, groups numbered from 1, the keeper first in its group.
The rows of `imgsim dedup --csv` / `--out FILE.csv|.parquet` and of DedupResult.to_arrow() / to_pandas()."""
from __future__ import annotations

from imgsim_fast.io.names import path_text

__all__ = ["ROW_COLUMNS", "rows_of"]

ROW_COLUMNS = ("group", "keep", "reference", "path", "rule", "phash_distance", "flip_distance", "flip",
               "cosine", "width", "height", "format", "bytes", "digest", "tier", "why", "removable")


def rows_of(doc: dict) -> list[dict]:
    """The rows of a dedup document (DedupResult.to_dict(), or any result shaped like it); paths as
    names.path_text, flags as 0/1 (as the CSV always had them)."""
    rows = []
    for gi, g in enumerate(doc["groups"], 1):
        for m in g["members"]:
            row = {c: m.get(c) for c in ROW_COLUMNS[3:-3]}
            rows.append(dict(row, group=gi, keep=int(m["keep"]), reference=int(m["reference"]),
                             path=path_text(m["path"]), tier=g["tier"], why=m["why"], removable=int(m["removable"])))
    return rows
