"""The persistent catalog of a collection: one SQLite database (WAL mode) plus append-only array files.

SQLite holds one row per file (stat, digests, dimensions, errors, metadata, tags) and, per array, the
count of committed rows. Hash codes and embeddings live in `<catalog>.arrays/<name>.bin` as raw rows;
rows are written and fsynced before the transaction recording their count commits, so a reader, which
maps only the committed prefix, never sees a half-written row (issue 5).

Damage is detected, never trusted (issue 11): the transaction that commits rows also records a CRC-32
of every block of BLOCK_BYTES the rows touch, and an array is checked against its length and its block
checksums once per open, before its first row is read; the database itself gets SQLite's integrity check
on open. A damaged catalog raises CatalogDamaged, whose message names `imgsim index --repair`.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import re
import sqlite3
import time
import zlib
from dataclasses import dataclass, field, fields

import numpy as np

from imgsim_fast.io.atomic_write import fsync_dir

__all__ = [
    "SCHEMA_VERSION",
    "Catalog",
    "CatalogDamaged",
    "CatalogError",
    "CatalogLocked",
    "Damage",
    "FileRecord",
    "default_catalog_path",
    "holds_name",
    "name_as_stored",
    "hash_array_name",
    "embedding_array_name",
    "embedding_array_names",
    "legacy_embedding_array_name",
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
    # 2: block checksums of the array files (issue 11). Existing arrays are sealed as found by
    # Catalog._seal_unsealed_arrays in the same transaction (there is nothing older to check them against).
    """
    CREATE TABLE array_blocks (
        array TEXT NOT NULL REFERENCES arrays(name) ON DELETE CASCADE,
        block INTEGER NOT NULL,             -- rows [block * block_rows, (block + 1) * block_rows)
        crc INTEGER NOT NULL,               -- zlib CRC-32 of the block's committed bytes
        PRIMARY KEY (array, block)
    ) WITHOUT ROWID;
    ALTER TABLE arrays ADD COLUMN block_rows INTEGER NOT NULL DEFAULT 0;   -- 0: not sealed yet
    ALTER TABLE arrays ADD COLUMN max_tx_rows INTEGER NOT NULL DEFAULT 0;  -- most rows one transaction may append
    """,
    # 3: photographers' XMP (issue 15): rating and colour label. Files indexed before keep NULL until their
    # metadata is read again, which the next `imgsim index` does for all of them (meta_sig no longer matches).
    """
    ALTER TABLE files ADD COLUMN rating INTEGER;  -- xmp:Rating, -1 (rejected) to 5
    ALTER TABLE files ADD COLUMN label TEXT;      -- xmp:Label, the colour label as written
    CREATE INDEX files_rating ON files(rating);
    UPDATE files SET meta_sig = 'before-schema-3';
    """,
    # 4: dedup's looks at pixels in tables of their own, added to row by row (catalog/dedup_features.py). They
    # were JSON objects in meta, rewritten whole on every save: about 95 bytes a checked pair, so 1 GB at 10^7.
    # Keep-best's verdicts move over (Catalog._move_dedup_looks); the stored pixel checks were made by the
    # check's first version (one fraction), which no run reads any more: they are dropped.
    """
    CREATE TABLE pixel_checks (
        key TEXT PRIMARY KEY,               -- check version, thumbnail side, limits, the two digests, flip
        changed REAL NOT NULL,              -- fraction of the thumbnail that differs
        strong REAL NOT NULL                -- ... and that differs strongly (jobs/dedup/verify.py)
    ) WITHOUT ROWID;
    CREATE TABLE keep_verdicts (
        key TEXT PRIMARY KEY,               -- verdict version and the two digests (jobs/dedup/keep.py)
        derived INTEGER NOT NULL            -- 1: the second is a copy derived from the first
    ) WITHOUT ROWID;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

# Checksum granularity. 64 KiB blocks: a flipped byte costs re-decoding 8,192 files of 64-bit codes or 12
# of 1,280-d embeddings, and a 10^5-file catalog with EfficientNet embeddings has ~8,000 block rows.
BLOCK_BYTES = 1 << 16


def _block_rows(row_bytes: int) -> int:
    return max(1, BLOCK_BYTES // row_bytes)


class CatalogError(Exception):
    """The catalog file is missing, newer than this code, or damaged."""


class CatalogLocked(CatalogError):
    """Another process holds the catalog for writing."""


class CatalogDamaged(CatalogError):
    """The database or an array file does not match what the catalog recorded; `imgsim index --repair`
    recomputes what is damaged. `damage` lists the damaged arrays (empty when the database itself is)."""

    def __init__(self, message: str, damage: list | None = None):
        super().__init__(message)
        self.damage = damage or []


@dataclass
class Damage:
    """What verification found wrong with one array file."""

    array: str
    reason: str                                    # short, for messages: "missing", "2 blocks differ", ...
    blocks: list[int] = field(default_factory=list)  # blocks whose rows cannot be trusted (sorted)
    missing: bool = False                          # the file is gone: the whole array is rebuilt
    tail_bytes: int = 0                            # bytes past the committed length beyond a transaction's worth


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
    rating: int | None
    label: str | None


FILE_COLUMNS = tuple(f.name for f in fields(FileRecord))
_SELECT_FILES = "SELECT " + ", ".join(FILE_COLUMNS) + " FROM files"


def default_catalog_path(first_dir: str) -> str:
    """The catalog of the collection rooted at `first_dir` when none is named: outside the folder, in
    the XDG data directory (io/data_dirs.py: `~/.local/share/imgsim/catalogs/<name>/catalog.sqlite`), so
    a photo folder holds only photos (issue 15). A catalog that an older version made inside the folder,
    `<first DIR>/.imgsim/catalog.sqlite`, is still the one used while it exists."""
    from imgsim_fast.io.data_dirs import collection_dir

    legacy = os.path.join(os.path.abspath(first_dir), CATALOG_DIRNAME, CATALOG_FILENAME)
    if os.path.exists(legacy):
        return legacy
    return os.path.join(collection_dir(first_dir), CATALOG_FILENAME)


def holds_name(path: str) -> bool:
    """Whether the catalog can hold a file of this path: its paths are UTF-8 text, and a name whose bytes are
    not UTF-8 (lone surrogates from os.fsdecode, PEP 383) can be neither stored nor looked up."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def name_as_stored(path: str) -> str:
    """A path as text the catalog can store where it must name a file it cannot hold (a walk error): the
    bytes that are not UTF-8 become U+FFFD."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def hash_array_name(kind: str, hash_size: int = 8, mode: str = "fast") -> str:
    """Array of one hash configuration; several configurations coexist in one catalog."""
    return f"{kind}-{hash_size}-{mode}"


def embedding_array_name(model: str, *, fetch: bool = True) -> str:
    """Array of one embedding model, named for what the model is (built-in or hub name, or resolved folder,
    plus a digest of its weights: features/embedding/identity.py), so every spelling of its path meets the
    same array (issue 15). ValueError when the model's files cannot be found; fetch=False never downloads."""
    from imgsim_fast.features.embedding.identity import model_identity

    return "embed-" + model_identity(model, fetch=fetch).array_suffix()


def legacy_embedding_array_name(model: str) -> str:
    """The name catalogs written before issue 15 used: the literal `--embed` string."""
    return "embed-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", model)


def embedding_array_names(model: str) -> list[str]:
    """Names a reader tries, in order: the model's own, then the literal-string name of older catalogs that
    no writer has migrated yet (a read-only open never renames; `_adopt_legacy_embedding_arrays` does)."""
    names = []
    with contextlib.suppress(ValueError, OSError):
        names.append(embedding_array_name(model, fetch=False))
    return names + [legacy_embedding_array_name(model)]


_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


class _ArrayFile:
    """One append-only array file, opened by the writer. Keeps the CRC-32 of the last, partly filled
    block, so appending extends it (`zlib.crc32(new, old)`) without reading the file back."""

    def __init__(self, path: str, dtype: np.dtype, width: int, committed: int, block_rows: int,
                 tail_crc: int):
        self.path = path
        self.dtype = np.dtype(dtype)
        self.width = width
        self.row_bytes = self.dtype.itemsize * width
        self.committed = committed
        self.pending = 0
        self.block_rows = block_rows
        self.tail_crc = tail_crc              # committed CRC of block committed // block_rows (0 if empty)
        self.pending_crcs: dict[int, int] = {}
        created = not os.path.exists(path)
        if created and committed:
            raise CatalogDamaged(f"array file {path} is missing")
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if created:
            fsync_dir(os.path.dirname(path))
        size = os.fstat(self.fd).st_size
        if size < committed * self.row_bytes:
            # Never zero-fill committed rows: that turned damage into silent wrong answers (issue 11).
            os.close(self.fd)
            raise CatalogDamaged(f"array file {path} is shorter than its {committed} committed rows")
        # A crash between writing rows and committing their count leaves bytes past the committed
        # length; they were never visible, so cut them off before appending.
        if size != committed * self.row_bytes:
            os.ftruncate(self.fd, committed * self.row_bytes)
            os.fsync(self.fd)

    def _crc_of_block(self, b: int) -> int:
        if b in self.pending_crcs:
            return self.pending_crcs[b]
        return self.tail_crc if b == self.committed // self.block_rows else 0

    def append(self, rows: np.ndarray) -> int:
        rows = np.ascontiguousarray(rows, dtype=self.dtype).reshape(-1, self.width)
        if rows.dtype.kind == "f" and not np.isfinite(rows).all():
            raise ValueError(f"{os.path.basename(self.path)}: refusing to store NaN or infinite values")
        start = self.committed + self.pending
        data = rows.tobytes()
        off = start * self.row_bytes
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, off)
            view, off = view[n:], off + n
        view, row = memoryview(data), start
        while view:
            b = row // self.block_rows
            take = min(self.block_rows - row % self.block_rows, len(view) // self.row_bytes)
            self.pending_crcs[b] = zlib.crc32(view[:take * self.row_bytes], self._crc_of_block(b))
            view, row = view[take * self.row_bytes:], row + take
        self.pending += len(rows)
        return start

    def committed_now(self) -> None:
        """The transaction holding the pending rows committed."""
        self.committed += self.pending
        self.pending = 0
        last = self.committed // self.block_rows
        self.tail_crc = self.pending_crcs.get(last, self.tail_crc) if self.committed % self.block_rows else 0
        self.pending_crcs.clear()

    def rollback(self) -> None:
        self.pending = 0
        self.pending_crcs.clear()
        os.ftruncate(self.fd, self.committed * self.row_bytes)

    def close(self) -> None:
        os.close(self.fd)


def _file_block_crcs(path: str, row_bytes: int, block_rows: int, length: int, first_block: int = 0):
    """{block: CRC-32} of the blocks from `first_block` that hold the first `length` rows, as far as
    the file has bytes (a block cut short by the file's end gets the CRC of what is there). Read through
    mmap: twice as fast as read() into a buffer, since nothing is copied."""
    block_bytes = row_bytes * block_rows
    out = {}
    with open(path, "rb") as f:
        end = min(length * row_bytes, os.fstat(f.fileno()).st_size)
        if end <= first_block * block_bytes:
            return out
        with mmap.mmap(f.fileno(), end, access=mmap.ACCESS_READ) as m:
            view = memoryview(m)
            try:
                for b, s in enumerate(range(first_block * block_bytes, end, block_bytes), first_block):
                    out[b] = zlib.crc32(view[s:s + block_bytes])
            finally:
                view.release()
    return out


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


class Catalog:
    """A collection's catalog. Open with write=True in the one process that indexes (an exclusive
    lock on `<catalog>.lock` enforces it); any number of readers may open it meanwhile.

    The lock file stays when the writer closes, on purpose (issue 11 asked why it is left over): flock locks
    an inode, so a writer that unlinked it on close could let the next writer lock the old, unlinked file
    while a third creates and locks a new one, two writers at once. It is empty and sits with the
    catalog's other files (`.imgsim/` by default); readers look at it to tell whether a writer is appending.

    Reads that must agree with each other (rows, vectors, array lengths) go inside `snapshot()`,
    one SQLite read transaction; the helpers below that return several things do so themselves.
    """

    def __init__(self, path: str, *, write: bool = False, busy_timeout_s: float = 30.0, repair: bool = False):
        """repair (write only): a database that fails SQLite's integrity check is moved aside (with its
        arrays) to `<path>.damaged-<time>` and a new, empty catalog started; `moved_aside` names it."""
        self.path = os.path.abspath(path)
        self.arrays_dir = self.path + ".arrays"
        self.write_mode = write
        self.moved_aside: str | None = None
        self._lock_fd = None
        self._arrays: dict[str, _ArrayFile] = {}
        self._verified: dict[str, int] = {}  # array -> rows checked against their block CRCs
        self._batch_rows = 0
        self._in_tx = False
        self.conn = None
        if os.path.isdir(self.path) or (os.path.exists(self.path) and
                                         not os.access(self.path, os.R_OK | (os.W_OK if write else 0))):
            raise CatalogError(f"cannot {'write' if write else 'read'} the catalog {self.path}: "
                               f"{'a folder' if os.path.isdir(self.path) else 'permission denied'}")
        if write:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock_fd)
                self._lock_fd = None
                raise CatalogLocked(f"{self.path} is being written by another `imgsim index`; run this "
                                    "again when it has finished") from None
        elif not os.path.exists(self.path):
            raise CatalogError(f"no catalog at {self.path} (run `imgsim index DIR` first)")
        try:
            self._connect(busy_timeout_s)
            try:
                self._check_database()
                if write:
                    self._start_writing()
            except (CatalogDamaged, sqlite3.DatabaseError) as e:
                # A header SQLite reads but will not write (a flipped version byte) passes the
                # integrity check and fails at the first write: damage too.
                if not (write and repair) or getattr(e, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED"):
                    raise
                self._move_aside()
                self._connect(busy_timeout_s)
                self._start_writing()
            if write:
                os.makedirs(self.arrays_dir, exist_ok=True)
                self._adopt_legacy_embedding_arrays()
            else:
                v = self.schema_version()
                if v == 0:
                    raise CatalogError(f"{self.path} holds no catalog yet (an `imgsim index` may be creating "
                                       f"it; if not, run `{self.repair_command()}`)")
                if v > SCHEMA_VERSION:
                    raise CatalogError(f"{self.path} has schema version {v}; this imgsim_fast reads "
                                       f"up to {SCHEMA_VERSION}: use a newer imgsim_fast")
                if v < SCHEMA_VERSION:  # readers never write: the next `imgsim index` migrates it
                    raise CatalogError(f"{self.path} has schema version {v}; run `imgsim index` to "
                                       f"upgrade it to {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            self.close()
            raise CatalogDamaged(f"the catalog {self.path} is damaged (sqlite: {e}); run "
                                 f"`{self.repair_command()}`") from None
        except BaseException:
            self.close()
            raise

    def _connect(self, busy_timeout_s: float) -> None:
        self.conn = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None,
                                    check_same_thread=False)
        self.conn.execute("PRAGMA foreign_keys = ON")

    def _start_writing(self) -> None:
        self.conn.execute("PRAGMA journal_mode = WAL")
        # FULL: each commit is on disk before it returns, so the "fsync rows, then commit their count"
        # order holds through a power loss, not only a process kill.
        self.conn.execute("PRAGMA synchronous = FULL")
        self._migrate()

    def _check_database(self) -> None:
        """SQLite's integrity check, once per open: page structure, and every index against its table,
        so a flipped byte in a path, a digest, a date, a tag or a vector's row number is caught. It
        costs 0.25-0.45 s per 10^5 files (measured on a synthetic catalog on 2 busy cores; quick_check,
        structure only, costs a third of that but misses such flips); columns that no index covers
        (descriptions, error texts) are not checked."""
        try:
            rows = self.conn.execute("PRAGMA integrity_check(3)").fetchall()
        except sqlite3.DatabaseError as e:
            rows = [(f"sqlite: {e}",)]
        with open(self.path, "rb") as f:
            header = f.read(100)
        # File format write/read versions (sqlite.org/fileformat.html, offsets 18-19): 1 legacy, 2 WAL.
        # A larger write version leaves the file readable and passes the check above, but read-only.
        if rows == [("ok",)] and len(header) == 100 and not (header[18] in (1, 2) and header[19] in (1, 2)):
            rows = [(f"file format versions {header[18]}/{header[19]} in the header",)]
        if rows != [("ok",)]:
            raise CatalogDamaged(f"the catalog {self.path} is damaged ({'; '.join(str(r[0]) for r in rows)}); "
                                 f"run `{self.repair_command()}`")

    def _move_aside(self) -> None:
        """Keep a damaged database (and its arrays) for inspection, out of the way of a new one."""
        self.conn.close()
        self.conn = None
        dest = f"{self.path}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
        for suffix in ("", "-wal", "-shm", ".arrays"):
            if os.path.exists(self.path + suffix):
                os.replace(self.path + suffix, dest + suffix)
        fsync_dir(os.path.dirname(self.path))
        self.moved_aside = dest

    def repair_command(self) -> str:
        """The command that repairs this catalog, for error messages: its folders from the last index
        run when readable, and --catalog unless the catalog sits where `imgsim index DIR` puts it."""
        roots = None
        try:
            if self.conn is not None:
                roots = (self.get_meta("last_index") or {}).get("roots")
        except (sqlite3.Error, ValueError, AttributeError):
            roots = None
        if not roots:
            parent = os.path.dirname(self.path)
            roots = [os.path.dirname(parent)] if (os.path.basename(parent) == CATALOG_DIRNAME and
                                                  os.path.basename(self.path) == CATALOG_FILENAME) else ["DIR"]
        cmd = "imgsim index --repair " + " ".join(roots)
        if roots == ["DIR"] or default_catalog_path(roots[0]) != self.path:
            cmd += f" --catalog {self.path}"
        return cmd

    # ------------------------------------------------------------------------------------------
    # Lifetime and schema

    def close(self) -> None:
        for a in getattr(self, "_arrays", {}).values():
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
        try:
            return int(row[0]) if row else 0
        except ValueError:
            raise CatalogDamaged(f"the catalog {self.path} is damaged (schema version {row[0]!r}); run "
                                 f"`{self.repair_command()}`") from None

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
            if v < 2:
                self._seal_unsealed_arrays()
            if v < 4:
                self._move_dedup_looks()
            if v != SCHEMA_VERSION:
                self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                                  (str(SCHEMA_VERSION),))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def _move_dedup_looks(self) -> None:
        """Schema 4: keep-best's verdicts from their JSON object in meta to their table; a value that is not
        a verdict is left behind (looked at again, never trusted)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'dedup_keep_verdicts'").fetchone()
        try:
            old = json.loads(row[0]) if row else {}
        except ValueError:
            old = {}
        if isinstance(old, dict):
            self.conn.executemany("INSERT OR REPLACE INTO keep_verdicts(key, derived) VALUES (?, ?)",
                                  [(k, int(x)) for k, x in old.items() if isinstance(x, int) and x in (0, 1)])
        self.conn.execute("DELETE FROM meta WHERE key IN ('dedup_keep_verdicts', 'dedup_pixel_checks')")

    def _seal_unsealed_arrays(self) -> None:
        """Record block checksums of arrays written before version 2, as their files are now."""
        for name, dt, width, length in self.conn.execute(
                "SELECT name, dtype, width, length FROM arrays WHERE block_rows = 0").fetchall():
            row_bytes = np.dtype(dt).itemsize * width
            br = _block_rows(row_bytes)
            path = self._array_path(name)
            crcs = {}
            if os.path.exists(path):
                if os.path.getsize(path) > length * row_bytes:  # a killed run's uncommitted rows
                    os.truncate(path, length * row_bytes)
                crcs = _file_block_crcs(path, row_bytes, br, length)
            self.conn.execute("UPDATE arrays SET block_rows = ? WHERE name = ?", (br, name))
            self.conn.executemany("INSERT OR REPLACE INTO array_blocks(array, block, crc) VALUES (?, ?, ?)",
                                  [(name, b, c) for b, c in crcs.items()])

    def _adopt_legacy_embedding_arrays(self) -> None:
        """Rename embedding arrays named by a literal `--embed` string (before issue 15) to their model's
        identity, when that string still names a model found without a download: a built-in, a cached hub
        name, or an absolute folder. A relative path is left alone: it meant the folder under whatever
        directory the old run was started in, which is not known; readers still find it under the old name.
        The file gets its new name by a hard link before the commit and loses the old one after, so readers
        never miss it; a crash in between leaves the old row and a stale link, redone on the next open."""
        rows = self.conn.execute("SELECT name, params FROM arrays WHERE name LIKE 'embed-%'").fetchall()
        for old, text in rows:
            try:
                model = json.loads(text).get("model")
            except (ValueError, AttributeError):
                continue
            if not isinstance(model, str) or old != legacy_embedding_array_name(model):
                continue
            if not os.path.isabs(model) and os.path.exists(model):
                continue
            try:
                new = embedding_array_name(model, fetch=False)
            except (ValueError, OSError):
                continue
            if new == old or self.conn.execute("SELECT 1 FROM arrays WHERE name = ?", (new,)).fetchone():
                continue
            old_file, new_file = self._array_path(old), self._array_path(new)
            moved = False
            if os.path.exists(old_file):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(new_file)
                try:
                    os.link(old_file, new_file)
                except OSError:  # no hard links (FAT, exFAT): a rename, undone below if the commit fails
                    os.replace(old_file, new_file)
                    moved = True
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                self.conn.execute("INSERT INTO arrays(name, dtype, width, length, params, block_rows, max_tx_rows) "
                                  "SELECT ?, dtype, width, length, params, block_rows, max_tx_rows FROM arrays "
                                  "WHERE name = ?", (new, old))
                self.conn.execute("UPDATE vectors SET array = ? WHERE array = ?", (new, old))
                self.conn.execute("UPDATE array_blocks SET array = ? WHERE array = ?", (new, old))
                self.conn.execute("DELETE FROM arrays WHERE name = ?", (old,))
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                if moved:
                    os.replace(new_file, old_file)
                raise
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old_file)

    # ------------------------------------------------------------------------------------------
    # Writing (the indexer's side)

    def declare_batch_rows(self, n: int) -> None:
        """The most rows one transaction of this writer will append to an array. Recorded (committed)
        before they are written, so a reader can tell the tail a killed transaction leaves (at most
        this) from an array file that grew by other means (damage)."""
        self._batch_rows = max(self._batch_rows, int(n))
        own_tx = not self._in_tx
        if own_tx:
            self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("UPDATE arrays SET max_tx_rows = max(max_tx_rows, ?)", (self._batch_rows,))
        if own_tx:
            self.conn.execute("COMMIT")

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
                self.conn.execute("UPDATE arrays SET length = ?, max_tx_rows = max(max_tx_rows, ?) WHERE name = ?",
                                  (a.committed + a.pending, a.pending, name))
                self.conn.executemany("INSERT OR REPLACE INTO array_blocks(array, block, crc) VALUES (?, ?, ?)",
                                      [(name, b, c) for b, c in a.pending_crcs.items()])
            self.conn.execute("COMMIT")
            for _, a in touched:
                a.committed_now()
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
        row = self.conn.execute("SELECT dtype, width, length, block_rows FROM arrays WHERE name = ?",
                                (name,)).fetchone()
        if row is None:
            own_tx = not self._in_tx
            if own_tx:
                self.conn.execute("BEGIN IMMEDIATE")
            block_rows = _block_rows(dtype.itemsize * int(width))
            self.conn.execute("INSERT INTO arrays(name, dtype, width, length, params, block_rows, max_tx_rows) "
                              "VALUES (?, ?, ?, 0, ?, ?, ?)",
                              (name, dtype.str, int(width), json.dumps(params or {}, sort_keys=True), block_rows,
                               self._batch_rows))
            if own_tx:
                self.conn.execute("COMMIT")
            committed, tail_crc = 0, 0
        else:
            if np.dtype(row[0]) != dtype or row[1] != width:
                raise CatalogError(f"array {name!r} holds {np.dtype(row[0])} x {row[1]}, not {dtype} x {width}")
            committed, block_rows = row[2], row[3]
            tail_crc = 0
            if committed % block_rows:
                r = self.conn.execute("SELECT crc FROM array_blocks WHERE array = ? AND block = ?",
                                      (name, committed // block_rows)).fetchone()
                tail_crc = r[0] if r else 0
        if name not in self._arrays:
            self._arrays[name] = _ArrayFile(self._array_path(name), dtype, int(width), committed, block_rows,
                                            tail_crc)

    def drop_arrays(self, names: list[str]) -> None:
        """Delete arrays whole: their rows, vectors and checksums in one transaction of its own, then their
        files, named or not by a row (a crash in between leaves a file no row names, which nothing reads:
        a later drop of the name removes it). Not inside `transaction()`: the files go only once the rows are
        gone for good. A reader whose snapshot still names a dropped array finds its file missing and calls
        the catalog damaged: drop only what no reader of this version reads."""
        if not self.write_mode:
            raise CatalogError("catalog opened read-only")
        if self._in_tx:
            raise CatalogError("drop_arrays inside a transaction")
        names = [n for n in names if _NAME_RE.match(n)]
        if not names:
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for name in names:
                self.conn.execute("DELETE FROM vectors WHERE array = ?", (name,))
                self.conn.execute("DELETE FROM array_blocks WHERE array = ?", (name,))
                self.conn.execute("DELETE FROM arrays WHERE name = ?", (name,))
            self.conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            raise
        for name in names:
            self._verified.pop(name, None)
            a = self._arrays.pop(name, None)
            if a is not None:
                a.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._array_path(name))

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

    def array_file(self, name: str) -> str:
        """The file of array `name` (row r at byte r * width * itemsize), for a reader that maps rows committed
        after it opened (the service's live index), where `array` maps the length committed at the call."""
        return self._array_path(name)

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
        try:
            return {n: {"dtype": np.dtype(d), "width": w, "length": ln, "params": json.loads(p)}
                    for n, d, w, ln, p in self.conn.execute("SELECT name, dtype, width, length, params FROM arrays")}
        except (TypeError, ValueError) as e:  # a flipped byte in a column no index covers
            raise CatalogDamaged(f"the catalog {self.path} is damaged (array table: {e}); run "
                                 f"`{self.repair_command()}`") from None

    def array(self, name: str) -> np.ndarray:
        """The committed rows of array `name`, memory-mapped read-only, (length, width). Checked against
        the recorded length and block CRCs before the first use in this open (CatalogDamaged if not)."""
        with self.snapshot():
            row = self.conn.execute("SELECT dtype, width, length FROM arrays WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise KeyError(f"no array {name!r} in {self.path}")
            if self._verified.get(name, -1) != row[2]:
                d = self._verify_array(name, self._verified.get(name, 0))
                if d is not None:
                    raise CatalogDamaged(f"the catalog {self.path} is damaged: array file {name}.bin {d.reason}; "
                                         f"run `{self.repair_command()}`", [d])
        return self._map(name, np.dtype(row[0]), row[1], row[2])

    def verify(self) -> list[Damage]:
        """Check every array file against its recorded length and block CRCs (reads them all)."""
        with self.snapshot():
            names = [r[0] for r in self.conn.execute("SELECT name FROM arrays ORDER BY name")]
            return [d for d in (self._verify_array(n) for n in names) if d is not None]

    def _verify_array(self, name: str, from_row: int = 0) -> Damage | None:
        """Damage of array `name`, or None (then its rows count as verified for this open). Rows before
        `from_row` were verified earlier in this open; their blocks are not read again."""
        dt, width, length, block_rows, max_tx, params = self.conn.execute(
            "SELECT dtype, width, length, block_rows, max_tx_rows, params FROM arrays WHERE name = ?",
            (name,)).fetchone()
        try:
            row_bytes = np.dtype(dt).itemsize * int(width)
            json.loads(params)
        except (TypeError, ValueError):
            return Damage(name, "has an unreadable dtype or parameters recorded", missing=True)
        if row_bytes <= 0 or length < 0 or block_rows <= 0:
            return Damage(name, "has an impossible shape recorded", missing=True)
        top = self.conn.execute("SELECT max(row) FROM vectors WHERE array = ?", (name,)).fetchone()[0]
        if top is not None and top >= length:
            return Damage(name, f"is referenced at row {top} but records only {length} rows", missing=True)
        path = self._array_path(name)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            if length == 0:
                self._verified[name] = 0
                return None
            return Damage(name, "is missing", missing=True)
        n_blocks = -(-length // block_rows)
        first = min(from_row, length) // block_rows
        stored = dict(self.conn.execute("SELECT block, crc FROM array_blocks WHERE array = ? AND block >= ?",
                                        (name, first)))
        have = _file_block_crcs(path, row_bytes, block_rows, length, first)
        bad = [b for b in range(first, n_blocks) if b not in stored or have.get(b) != stored[b]]
        need = length * row_bytes
        tail = max(0, size - need - max_tx * row_bytes) if size > need else 0
        if tail and not self.write_mode:
            tail = self._reader_tail(name, size, row_bytes, max_tx)
        if bad or size < need or tail:
            if size < need:
                reason = f"is {size} bytes, shorter than its {length} rows ({need} bytes)"
            elif bad:
                reason = f"does not match its checksums in {len(bad)} of {n_blocks} blocks"
            else:
                reason = f"has {size - need} bytes past its {length} committed rows, more than a transaction writes"
            return Damage(name, reason, bad, tail_bytes=tail)
        self._verified[name] = length
        return None

    def _reader_tail(self, name: str, size: int, row_bytes: int, max_tx: int) -> int:
        """Bytes of array `name` past the latest committed length and one transaction's worth. A reader's
        snapshot may be older than the file (a writer committed since), so this asks a new connection;
        while a writer holds the lock the file may grow any time, and nothing is counted."""
        try:
            fd = os.open(self.path + ".lock", os.O_RDONLY)
        except OSError:
            fd = None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # a writer is appending
            finally:
                os.close(fd)  # releases the shared lock at once
        latest = sqlite3.connect(self.path)
        try:
            (length,) = latest.execute("SELECT length FROM arrays WHERE name = ?", (name,)).fetchone() or (0,)
        finally:
            latest.close()
        return max(0, size - (length + max_tx) * row_bytes)

    def repair_arrays(self, damage: list[Damage]) -> dict[str, int]:
        """Forget what damaged array blocks held (writer only): the files whose rows lay there lose that
        array's entry, so the next index run recomputes them like any file lacking an array; a missing
        or unusable array is dropped whole and rebuilt. The damaged rows are overwritten with filler
        (zeros; a unit vector for float arrays, so every row stays a valid embedding) and resealed.
        Returns {array: files that lost their entry}."""
        if not self.write_mode:
            raise CatalogError("catalog opened read-only")
        lost: dict[str, int] = {}
        with self.transaction():
            for d in damage:
                a = self._arrays.pop(d.array, None)
                if a is not None:
                    a.close()
                self._verified.pop(d.array, None)
                for cache in (".hnsw", ".hnsw.json"):  # an HNSW cache of the array (search.py) may hold them too
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(self._array_path(d.array)[:-4] + cache)
                if d.missing:
                    lost[d.array] = self.conn.execute("DELETE FROM vectors WHERE array = ?", (d.array,)).rowcount
                    self.conn.execute("DELETE FROM arrays WHERE name = ?", (d.array,))
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(self._array_path(d.array))
                    continue
                dt, width, length, block_rows = self.conn.execute(
                    "SELECT dtype, width, length, block_rows FROM arrays WHERE name = ?", (d.array,)).fetchone()
                dtype = np.dtype(dt)
                row_bytes = dtype.itemsize * width
                filler = np.zeros(width, dtype)
                if dtype.kind == "f":
                    filler[:] = 1.0 / np.sqrt(width)
                n = 0
                fd = os.open(self._array_path(d.array), os.O_RDWR)
                try:
                    os.ftruncate(fd, length * row_bytes)  # cuts a tail; a short file is refilled below
                    for b in d.blocks:
                        lo, hi = b * block_rows, min(length, (b + 1) * block_rows)
                        n += self.conn.execute("DELETE FROM vectors WHERE array = ? AND row >= ? AND row < ?",
                                               (d.array, lo, hi)).rowcount
                        os.pwrite(fd, np.tile(filler, hi - lo).tobytes(), lo * row_bytes)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                crcs = {}
                for b in d.blocks:
                    crcs.update(_file_block_crcs(self._array_path(d.array), row_bytes, block_rows,
                                                 min(length, (b + 1) * block_rows), b))
                self.conn.executemany("INSERT OR REPLACE INTO array_blocks(array, block, crc) VALUES (?, ?, ?)",
                                      [(d.array, b, c) for b, c in crcs.items()])
                lost[d.array] = n
        return lost

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
