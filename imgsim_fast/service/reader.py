"""Many readers: one read-only SQLite connection per request thread (WAL: readers never wait for the writer),
for records, pages of the collection and the metadata filter. Ranking reads the in-memory view (live.py)."""
from __future__ import annotations

import sqlite3
import threading

from imgsim_fast.catalog import query
from imgsim_fast.catalog.store import FILE_COLUMNS, FileRecord

__all__ = ["Reader"]

_SELECT = "SELECT " + ", ".join(FILE_COLUMNS) + " FROM files"


class Reader:
    def __init__(self, catalog: str):
        self.catalog = catalog
        self._local = threading.local()

    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(f"file:{self.catalog}?mode=ro", uri=True, timeout=30, check_same_thread=False)
            # What query._prepare registers: 'contains' filters call it, so they mean what Text does.
            c.create_function("py_casefold", 1, lambda s: None if s is None else str(s).casefold(),
                              deterministic=True)
            self._local.conn = c
        return c

    def get(self, fid: int) -> FileRecord | None:
        r = self.conn().execute(_SELECT + " WHERE id = ?", (fid,)).fetchone()
        return FileRecord(*r) if r else None

    def get_many(self, fids) -> dict[int, FileRecord]:
        fids = [int(f) for f in fids]
        out = {}
        for s in range(0, len(fids), 500):
            part = fids[s:s + 500]
            for r in self.conn().execute(_SELECT + f" WHERE id IN ({','.join('?' * len(part))})", part):
                out[r[0]] = FileRecord(*r)
        return out

    def tags(self, fid: int) -> list[str]:
        return [r[0] for r in self.conn().execute("SELECT tag FROM tags WHERE file_id = ? ORDER BY norm", (fid,))]

    def page(self, after: int, limit: int, where=None) -> list[FileRecord]:
        sql, params = query.compile_expr(where)
        rows = self.conn().execute(_SELECT + f" WHERE id > ? AND {sql} ORDER BY id LIMIT ?",
                                   (after, *params, limit)).fetchall()
        return [FileRecord(*r) for r in rows]

    def allowed(self, where) -> list[int] | None:
        """File ids passing `where` (None: no filter, every file)."""
        if where is None:
            return None
        sql, params = query.compile_expr(where)
        return [r[0] for r in self.conn().execute(f"SELECT id FROM files WHERE {sql}", params)]

    def count(self) -> int:
        return self.conn().execute("SELECT count(*) FROM files").fetchone()[0]
