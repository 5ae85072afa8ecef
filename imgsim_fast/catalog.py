"""The persistent catalog of a collection: one SQLite database (WAL mode) plus append-only array files.

SQLite holds one row per file (stat, digests, dimensions, errors, metadata, tags) and, per array, the
count of committed rows. Hash codes and embeddings live in `<catalog>.arrays/<name>.bin` as raw rows;
rows are written and fsynced before the transaction recording their count commits, so a reader, which
maps only the committed prefix, never sees a half-written row (issue 5).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
from dataclasses import dataclass, fields

import numpy as np

__all__ = [
    "SCHEMA_VERSION",
    "Catalog",
    "CatalogError",
    "CatalogLocked",
    "FileRecord",
    "default_catalog_path",
    "hash_array_name",
    "embedding_array_name",
]

CATALOG_DIRNAME = ".imgsim"
CATALOG_FILENAME = "catalog.sqlite"

# Each entry brings a database from version i to i + 1; SCHEMA_VERSION == len(MIGRATIONS). A later
# release appends statements here and never edits a shipped one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE files (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        dev INTEGER NOT NULL,
        inode INTEGER NOT NULL,
        digest TEXT,                        -- BLAKE2b-128 of the bytes (dedup.file_digest)
        pixel_digest TEXT,                  -- BLAKE2b-128 of the decoded RGB pixels; see indexer
        width INTEGER, height INTEGER,      -- upright (EXIF orientation applied), from the header
        format TEXT, mode TEXT,             -- Pillow's names, of the file as stored
        error TEXT, error_kind TEXT,        -- why the image could not be hashed (loading.FAILURE_KINDS)
        meta_sig TEXT NOT NULL DEFAULT '',  -- sidecars and mapping entry the metadata was read with
        meta_error TEXT,                    -- malformed EXIF/XMP/IPTC or a corrupt sidecar
        description TEXT,
        text_norm TEXT NOT NULL DEFAULT '', -- casefolded description, what text queries search
        artist TEXT, make TEXT, model TEXT,
        taken TEXT,                         -- ISO 8601 'YYYY-MM-DDTHH:MM:SS', local time as recorded
        lat REAL, lon REAL
    );
    CREATE INDEX files_digest ON files(digest);
    CREATE INDEX files_dims ON files(width, height);
    CREATE INDEX files_taken ON files(taken);
    CREATE TABLE tags (
        file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
        norm TEXT NOT NULL,                 -- casefolded, what tag queries match
        tag TEXT NOT NULL,                  -- as first written
        source TEXT NOT NULL,               -- exif, xmp, iptc, sidecar, map
        PRIMARY KEY (file_id, norm)
    ) WITHOUT ROWID;
    CREATE INDEX tags_norm ON tags(norm, file_id);
    CREATE TABLE arrays (
        name TEXT PRIMARY KEY,
        dtype TEXT NOT NULL,
        width INTEGER NOT NULL,
        length INTEGER NOT NULL DEFAULT 0,  -- committed rows; bytes beyond them are garbage
        params TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE vectors (
        file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
        array TEXT NOT NULL REFERENCES arrays(name),
        row INTEGER NOT NULL,
        PRIMARY KEY (file_id, array)
    ) WITHOUT ROWID;
    CREATE INDEX vectors_array ON vectors(array, row);
    CREATE TABLE walk_errors (path TEXT NOT NULL, kind TEXT NOT NULL, reason TEXT NOT NULL);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class CatalogError(Exception):
    """The catalog file is missing, newer than this code, or damaged."""


class CatalogLocked(CatalogError):
    """Another process holds the catalog for writing."""


@dataclass
class FileRecord:
    id: int
    path: str
    size: int
    mtime_ns: int
    dev: int
    inode: int
    digest: str | None
    pixel_digest: str | None
    width: int | None
    height: int | None
    format: str | None
    mode: str | None
    error: str | None
    error_kind: str | None
    meta_sig: str
    meta_error: str | None
    description: str | None
    text_norm: str
    artist: str | None
    make: str | None
    model: str | None
    taken: str | None
    lat: float | None
    lon: float | None


FILE_COLUMNS = tuple(f.name for f in fields(FileRecord))
_SELECT_FILES = "SELECT " + ", ".join(FILE_COLUMNS) + " FROM files"


def default_catalog_path(first_dir: str) -> str:
    """`<first DIR>/.imgsim/catalog.sqlite`: the catalog travels with the collection it describes."""
    return os.path.join(os.path.abspath(first_dir), CATALOG_DIRNAME, CATALOG_FILENAME)


def hash_array_name(kind: str, hash_size: int = 8, mode: str = "fast") -> str:
    """Array of one hash configuration; several configurations coexist in one catalog."""
    return f"{kind}-{hash_size}-{mode}"


def embedding_array_name(model: str) -> str:
    return "embed-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", model)


_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


class _ArrayFile:
    """One append-only array file, opened by the writer."""

    def __init__(self, path: str, dtype: np.dtype, width: int, committed: int):
        self.path = path
        self.dtype = np.dtype(dtype)
        self.width = width
        self.row_bytes = self.dtype.itemsize * width
        self.committed = committed
        self.pending = 0
        created = not os.path.exists(path)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if created:
            _fsync_dir(os.path.dirname(path))
        # A crash between writing rows and committing their count leaves bytes past the committed
        # length; they were never visible, so cut them off before appending.
        if os.fstat(self.fd).st_size != committed * self.row_bytes:
            os.ftruncate(self.fd, committed * self.row_bytes)
            os.fsync(self.fd)

    def append(self, rows: np.ndarray) -> int:
        rows = np.ascontiguousarray(rows, dtype=self.dtype).reshape(-1, self.width)
        start = self.committed + self.pending
        data = rows.tobytes()
        off = start * self.row_bytes
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, off)
            view, off = view[n:], off + n
        self.pending += len(rows)
        return start

    def rollback(self) -> None:
        self.pending = 0
        os.ftruncate(self.fd, self.committed * self.row_bytes)

    def close(self) -> None:
        os.close(self.fd)


def _statements(script: str) -> list[str]:
    """Split a SQL script into statements (executescript would commit the open transaction)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        raise CatalogError(f"incomplete migration statement: {buf.strip()[:80]!r}")
    return out


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Catalog:
    """A collection's catalog. Open with write=True in the one process that indexes (an exclusive
    lock on `<catalog>.lock` enforces it); any number of readers may open it meanwhile.

    Reads that must agree with each other (rows, vectors, array lengths) go inside `snapshot()`,
    one SQLite read transaction; the helpers below that return several things do so themselves.
    """

    def __init__(self, path: str, *, write: bool = False, busy_timeout_s: float = 30.0):
        self.path = os.path.abspath(path)
        self.arrays_dir = self.path + ".arrays"
        self.write_mode = write
        self._lock_fd = None
        self._arrays: dict[str, _ArrayFile] = {}
        self._in_tx = False
        if write:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock_fd)
                raise CatalogLocked(f"{self.path} is being written by another process") from None
        elif not os.path.exists(self.path):
            raise CatalogError(f"no catalog at {self.path} (run `imgsim index` first)")
        try:
            self.conn = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None,
                                        check_same_thread=False)
            self.conn.execute("PRAGMA foreign_keys = ON")
            if write:
                self.conn.execute("PRAGMA journal_mode = WAL")
                # FULL: each commit is on disk before it returns, so the "fsync rows, then commit
                # their count" order holds through a power loss, not only a process kill.
                self.conn.execute("PRAGMA synchronous = FULL")
                self._migrate()
                os.makedirs(self.arrays_dir, exist_ok=True)
            else:
                v = self.schema_version()
                if v == 0:
                    raise CatalogError(f"{self.path} is not initialised yet (or is not a catalog)")
                if v > SCHEMA_VERSION:
                    raise CatalogError(f"{self.path} has schema version {v}; this imgsim_fast reads "
                                       f"up to {SCHEMA_VERSION}")
                if v < SCHEMA_VERSION:  # readers never write: the next `imgsim index` migrates it
                    raise CatalogError(f"{self.path} has schema version {v}; run `imgsim index` to "
                                       f"upgrade it to {SCHEMA_VERSION}")
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------------------
    # Lifetime and schema

    def close(self) -> None:
        for a in self._arrays.values():
            a.close()
        self._arrays.clear()
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()
            self.conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def schema_version(self) -> int:
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError:  # no meta table: an empty database
            return 0
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            v = self.schema_version()
            if v > SCHEMA_VERSION:
                raise CatalogError(f"{self.path} has schema version {v}; this imgsim_fast writes "
                                   f"up to {SCHEMA_VERSION}")
            for i in range(v, SCHEMA_VERSION):
                for stmt in _statements(MIGRATIONS[i]):
                    self.conn.execute(stmt)
            if v != SCHEMA_VERSION:
                self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                                  (str(SCHEMA_VERSION),))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------------------------------
    # Writing (the indexer's side)

    @contextlib.contextmanager
    def transaction(self):
        """One write transaction: rows appended with `append` inside it become visible, with every
        SQL change made through `self.conn`, when it commits; an exception rolls all of it back."""
        if not self.write_mode:
            raise CatalogError("catalog opened read-only")
        if self._in_tx:
            raise CatalogError("transactions do not nest")
        self.conn.execute("BEGIN IMMEDIATE")
        self._in_tx = True
        try:
            yield self
            touched = [(n, a) for n, a in self._arrays.items() if a.pending]
            for _, a in touched:
                os.fsync(a.fd)  # rows durable before the count that exposes them
            for name, a in touched:
                self.conn.execute("UPDATE arrays SET length = ? WHERE name = ?",
                                  (a.committed + a.pending, name))
            self.conn.execute("COMMIT")
            for _, a in touched:
                a.committed += a.pending
                a.pending = 0
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            for a in self._arrays.values():
                if a.pending:
                    a.rollback()
            raise
        finally:
            self._in_tx = False

    def ensure_array(self, name: str, dtype, width: int, params: dict | None = None) -> None:
        """Create the array `name` if new; its dtype and width must match if it exists."""
        if not _NAME_RE.match(name):
            raise ValueError(f"bad array name {name!r}")
        dtype = np.dtype(dtype)
        row = self.conn.execute("SELECT dtype, width, length FROM arrays WHERE name = ?", (name,)).fetchone()
        if row is None:
            own_tx = not self._in_tx
            if own_tx:
                self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("INSERT INTO arrays(name, dtype, width, length, params) VALUES (?, ?, ?, 0, ?)",
                              (name, dtype.str, int(width), json.dumps(params or {}, sort_keys=True)))
            if own_tx:
                self.conn.execute("COMMIT")
            committed = 0
        else:
            if np.dtype(row[0]) != dtype or row[1] != width:
                raise CatalogError(f"array {name!r} holds {np.dtype(row[0])} x {row[1]}, not {dtype} x {width}")
            committed = row[2]
        if name not in self._arrays:
            self._arrays[name] = _ArrayFile(self._array_path(name), dtype, int(width), committed)

    def append(self, name: str, rows: np.ndarray) -> int:
        """Write rows to array `name` (inside `transaction()`); returns the index of the first one."""
        if not self._in_tx:
            raise CatalogError("append outside a transaction")
        return self._arrays[name].append(rows)

    def set_meta(self, key: str, value) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    # ------------------------------------------------------------------------------------------
    # Reading

    @contextlib.contextmanager
    def snapshot(self):
        """A read transaction: every read inside sees the same committed state."""
        if self._in_tx:
            yield self
            return
        self.conn.execute("BEGIN")
        self._in_tx = True
        try:
            yield self
        finally:
            self._in_tx = False
            self.conn.execute("COMMIT")

    def get_meta(self, key: str, default=None):
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def _array_path(self, name: str) -> str:
        return os.path.join(self.arrays_dir, name + ".bin")

    def count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM files").fetchone()[0]

    def files(self, where: str = "", params=()) -> list[FileRecord]:
        sql = _SELECT_FILES + (f" WHERE {where}" if where else "") + " ORDER BY path"
        return [FileRecord(*r) for r in self.conn.execute(sql, params)]

    def get(self, path: str) -> FileRecord | None:
        r = self.conn.execute(_SELECT_FILES + " WHERE path = ?", (os.path.abspath(path),)).fetchone()
        return FileRecord(*r) if r else None

    def tags(self, file_id: int) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT tag FROM tags WHERE file_id = ? ORDER BY norm", (file_id,))]

    def arrays(self) -> dict[str, dict]:
        return {n: {"dtype": np.dtype(d), "width": w, "length": ln, "params": json.loads(p)}
                for n, d, w, ln, p in self.conn.execute("SELECT name, dtype, width, length, params FROM arrays")}

    def array(self, name: str) -> np.ndarray:
        """The committed rows of array `name`, memory-mapped read-only, (length, width)."""
        row = self.conn.execute("SELECT dtype, width, length FROM arrays WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise KeyError(f"no array {name!r} in {self.path}")
        return self._map(name, np.dtype(row[0]), row[1], row[2])

    def _map(self, name: str, dtype: np.dtype, width: int, length: int) -> np.ndarray:
        if length == 0:
            return np.zeros((0, width), dtype=dtype)
        return np.memmap(self._array_path(name), dtype=dtype, mode="r", shape=(length, width))

    def vectors(self, name: str, file_ids=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(file_ids, rows, data) of the files that have array `name`, ordered by file id, where
        data = array[rows]; all read from one snapshot."""
        with self.snapshot():
            data = self.array(name)
            pairs = np.array(self.conn.execute(
                "SELECT file_id, row FROM vectors WHERE array = ? ORDER BY file_id", (name,)).fetchall(),
                dtype=np.int64).reshape(-1, 2)
        if file_ids is not None:
            pairs = pairs[np.isin(pairs[:, 0], np.asarray(file_ids, dtype=np.int64))]
        return pairs[:, 0], pairs[:, 1], np.asarray(data[pairs[:, 1]])

    def vector_of(self, name: str, path: str) -> np.ndarray | None:
        with self.snapshot():
            r = self.conn.execute("SELECT v.row FROM vectors v JOIN files f ON f.id = v.file_id "
                                  "WHERE v.array = ? AND f.path = ?", (name, os.path.abspath(path))).fetchone()
            return None if r is None else np.array(self.array(name)[r[0]])

    def walk_errors(self) -> list[tuple[str, str, str]]:
        return self.conn.execute("SELECT path, kind, reason FROM walk_errors ORDER BY path").fetchall()

    def duplicate_groups(self, by: str = "content") -> list[list[str]]:
        """Groups (>= 2 paths, sorted) of exact duplicates. by='content': byte-identical files (same
        content digest). by='pixels': files with identical decoded pixels, at least two different
        encodings among them (a PNG and a lossless WebP of one picture)."""
        if by == "content":
            sql = ("SELECT digest, path FROM files WHERE digest IN (SELECT digest FROM files "
                   "WHERE digest IS NOT NULL GROUP BY digest HAVING count(*) > 1) ORDER BY digest, path")
        elif by == "pixels":
            sql = ("SELECT pixel_digest, path FROM files WHERE pixel_digest IN (SELECT pixel_digest FROM files "
                   "WHERE pixel_digest IS NOT NULL GROUP BY pixel_digest HAVING count(DISTINCT digest) > 1) "
                   "ORDER BY pixel_digest, path")
        else:
            raise ValueError(f"by must be 'content' or 'pixels', got {by!r}")
        groups: dict[str, list[str]] = {}
        for key, path in self.conn.execute(sql):
            groups.setdefault(key, []).append(path)
        return sorted(groups.values())

    def dump(self) -> dict:
        """Everything a catalog says about its files, independent of row ids and array row order:
        for comparing two catalogs (tests) or exporting."""
        with self.snapshot():
            recs = self.files()
            tags: dict[int, list] = {}
            for fid, norm, tag, source in self.conn.execute("SELECT file_id, norm, tag, source FROM tags"):
                tags.setdefault(fid, []).append((norm, tag, source))
            arrays = {n: self.array(n) for n in self.arrays()}
            vecs: dict[int, dict] = {}
            for fid, name, row in self.conn.execute("SELECT file_id, array, row FROM vectors"):
                vecs.setdefault(fid, {})[name] = np.asarray(arrays[name][row]).tolist()
            walk = self.walk_errors()
        out = {}
        for r in recs:
            d = {k: getattr(r, k) for k in FILE_COLUMNS if k != "id"}
            d["tags"] = sorted(tags.get(r.id, []))
            d["vectors"] = vecs.get(r.id, {})
            out[r.path] = d
        return {"files": out, "walk_errors": walk}
