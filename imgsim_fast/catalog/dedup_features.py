"""Dedup's features kept in the catalog, so a second `imgsim dedup --catalog C DIR` decodes nothing.

What features/extract.py computes for dedup (the border-trimmed dihedral pHash, the 128 px thumbnail of
the pixel check, keep-best's facts and the two embedded views) is written by the indexer, from the same
read and decode as everything else (`index(dedup=True)`), as catalog arrays under names of their own
(`dedup-*`: they are prepared differently from the catalog's plain hashes and embeddings). Dedup then
reads them back here: a file unchanged since it was indexed is not opened at all.
"""
from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass

import numpy as np

from imgsim_fast.catalog.store import Catalog, CatalogError, holds_name
from imgsim_fast.features.extract import PREP_TAG, THUMB_SIDE, Features, FileFacts
from imgsim_fast.features.hashing import phash_dihedral
from imgsim_fast.io.digest import is_digest
from imgsim_fast.io.loading import LoadFailure, iter_image_files

__all__ = ["FACT_COLUMNS", "FACTS", "PHASH8", "THUMBS", "dedup_features", "ensure_arrays", "fact_row", "feature_rows",
           "added", "drop_stale_arrays", "drop_stale_looks", "load_checks", "load_looks", "load_verdicts",
           "model_arrays", "read_features", "save_checks", "save_looks", "StaleLooks", "store_checks",
           "store_verdicts", "stored_checks", "stored_facts", "stored_verdicts"]

# Named by the preparation's version (extract.PREP_TAG; the arrays of version 1 had no suffix), and the
# thumbnails by their side too: a catalog written by another preparation or with another thumbnail size lacks
# these arrays, so its files are extracted again rather than misread (and the old arrays are dropped:
# drop_stale_arrays).
_PREP = f"-{PREP_TAG}"
PHASH8 = f"dedup-phash8{_PREP}"
THUMBS = f"dedup-thumb{THUMB_SIDE}{_PREP}"
FACTS = f"dedup-facts{_PREP}"
# FileFacts fields kept as one float64 row (format goes to the files row; path, size, mtime and digest are
# the row's own): all are properties of the bytes, so a byte-identical copy shares them.
FACT_COLUMNS = ("width", "height", "content_pixels", "trim_left", "trim_top", "trim_right", "trim_bottom",
                "jpeg_quality", "blocky", "noise", "colour", "camera")


def model_arrays(model: str) -> tuple[str, str]:
    """The arrays of dedup's two embedded views (whole trimmed picture, centre) by `model`."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", model)[-80:]
    return f"dedup-emb{_PREP}-{name}", f"dedup-centre{_PREP}-{name}"


def _current(name: str) -> bool:
    """Whether a dedup-* array name is one this version makes (for some model)."""
    return name in (PHASH8, THUMBS, FACTS) or name.startswith((f"dedup-emb{_PREP}-", f"dedup-centre{_PREP}-"))


def drop_stale_arrays(cat: Catalog) -> list[str]:
    """Drop dedup's arrays of another preparation or thumbnail side (no run of this version reads them, and
    a catalog would otherwise keep every version's copy of every file's features), with any dedup-* array
    file no row names (a drop cut short); the names dropped. A catalog open for writing, outside a
    transaction."""
    named = set(cat.arrays())
    stale = sorted(n for n in named if n.startswith("dedup-") and not _current(n))
    if os.path.isdir(cat.arrays_dir):
        stale += [f[:-4] for f in os.listdir(cat.arrays_dir)
                  if f.startswith("dedup-") and f.endswith(".bin") and f[:-4] not in named and not _current(f[:-4])]
    cat.drop_arrays(stale)
    return stale


def fact_row(f: FileFacts) -> list[float]:
    return [f.width, f.height, f.content_pixels, *f.trim, -1 if f.jpeg_quality is None else f.jpeg_quality,
            float(f.blocky), f.noise, float(f.colour), float(f.camera)]


def _facts_of(row: np.ndarray, path: str, size: int, mtime: float, fmt: str, digest: str) -> FileFacts:
    w, h, content, left, top, right, bottom, q, blocky, noise, colour, camera = (float(v) for v in row)
    return FileFacts(path, size, mtime, int(w), int(h), fmt, int(content), digest,
                     (left, top, right, bottom), None if q < 0 else int(q), bool(blocky), noise, bool(colour),
                     bool(camera))


def ensure_arrays(cat: Catalog, model: str | None = None, dim: int | None = None) -> list[str]:
    """Create dedup's arrays (and those of the views embedded by `model`, `dim` wide) if new; their names."""
    cat.ensure_array(PHASH8, np.uint64, 8)
    cat.ensure_array(THUMBS, np.uint8, THUMB_SIDE * THUMB_SIDE)
    cat.ensure_array(FACTS, np.float64, len(FACT_COLUMNS), {"columns": list(FACT_COLUMNS)})
    names = [PHASH8, THUMBS, FACTS]
    if model is not None:
        for name in model_arrays(model):
            cat.ensure_array(name, np.float32, dim, {"model": model})
            names.append(name)
    return names


def feature_rows(extracted: list[tuple]) -> dict[str, np.ndarray]:
    """The rows of dedup's own arrays (not the embedded views) for extract_file results' `dedup` tuples:
    what the indexer and the service's writer append, one definition of them."""
    phash8 = phash_dihedral(np.stack([x[1][0] for x in extracted]))
    return {PHASH8: np.ascontiguousarray(phash8[:, :, 0]),
            THUMBS: np.stack([x[1][1].reshape(-1) for x in extracted]),
            FACTS: np.array([fact_row(x[0]) for x in extracted], np.float64)}


def dedup_features(catalog: str, roots, *, embed: bool | str = False, workers: int | None = None,
                   progress: bool | None = None, device=None, extensions=None) -> tuple[Features, int]:
    """(Features of the image files under `roots`, exactly as compute_features gives them, and how many
    files were decoded this run), through the catalog at `catalog`: the indexer brings dedup's arrays up
    to date (one read per new or changed file), then they are read back in walk order."""
    from imgsim_fast.catalog.indexer import index

    model = None
    if embed:
        from imgsim_fast.features.embedding.lazy import BUILTIN_NAME, dedup_model

        # Only its name is needed unless a file is new or changed: the built-in model loads then (lazy.py).
        model = dedup_model(BUILTIN_NAME if embed is True else embed, device)
    walk = {} if extensions is None else {"extensions": extensions}
    stats = index(roots if not isinstance(roots, str) else [roots], catalog, kinds=(), dedup=True,
                  dedup_model=model.name if model is not None else None, workers=workers, progress=progress,
                  pixel_digests=False, **walk)
    # The walk again (no file opened): the paths as given (relative when the roots are), in walk order,
    # with its failures and passed-over files, as compute_features reports them.
    failures: list[LoadFailure] = []
    passed_over: list[str] = []
    own = os.path.abspath(catalog)  # the catalog's own files (-wal, .arrays/...) are not passed-over pictures
    paths = list(iter_image_files(roots, on_error=failures.append, **walk,
                                  on_skip=lambda p: None if os.path.abspath(p).startswith(own) else passed_over.append(p)))
    with Catalog(catalog) as cat:
        feats, missing = read_features(cat, paths, model.name if model is not None else None)
    feats.failures = failures + feats.failures + [  # changed again between the index run and this read
        LoadFailure(p, "changed while it was being read; run again", "io_error") for p in missing]
    feats.passed_over = passed_over
    return feats, stats.decoded


def read_features(cat: Catalog, paths: list[str], model: str | None = None) -> tuple[Features, list[str]]:
    """(dedup's Features of `paths`, the paths lacking them) from the catalog's dedup-* arrays, in the order
    given; rows are found by absolute path. A path without a row, or whose row records an error, is a
    failure; one whose row lacks dedup's arrays (indexed without them) is left out and listed as missing."""
    with cat.snapshot():
        wanted = [PHASH8, THUMBS, FACTS] + (list(model_arrays(model)) if model is not None else [])
        if not set(wanted) <= set(cat.arrays()):
            return Features([], np.zeros((0, 8, 1), np.uint64), thumbs=np.zeros((0, THUMB_SIDE, THUMB_SIDE),
                                                                                 np.uint8)), list(paths)
        rows = {}
        for fid, path, digest, fmt, err, kind in cat.conn.execute(
                "SELECT id, path, digest, format, error, error_kind FROM files"):
            rows[path] = [fid, digest, fmt, err, kind, {}]
        by_id = {r[0]: r for r in rows.values()}
        q = ",".join("?" * len(wanted))
        for fid, array, row in cat.conn.execute(f"SELECT file_id, array, row FROM vectors WHERE array IN ({q})",
                                                wanted):
            if fid in by_id:
                by_id[fid][5][array] = row
        good, failures, missing = [], [], []
        for p in paths:
            r = rows.get(os.path.abspath(p))
            if r is None and not holds_name(p):
                failures.append(LoadFailure(p, "file name is not valid UTF-8, which the catalog cannot hold; "
                                               "run without --catalog to include it", "bad_name"))
            elif r is None:
                failures.append(LoadFailure(p, "vanished or unreadable while indexing", "io_error"))
            elif r[3] is not None:
                failures.append(LoadFailure(p, r[3], r[4]))
            elif not set(wanted) <= set(r[5]):
                missing.append(p)
            else:
                try:
                    good.append((p, os.stat(p), r))
                except OSError as e:
                    failures.append(LoadFailure(p, f"cannot stat: {e.strerror}", "io_error"))
        arrays = {a: np.asarray(cat.array(a)[np.array([r[5][a] for _, _, r in good], np.int64)]) for a in wanted}
    n = len(good)
    facts = [_facts_of(arrays[FACTS][j], p, st.st_size, st.st_mtime, r[2], r[1]) for j, (p, st, r) in enumerate(good)]
    emb = centre = None
    if model is not None:
        e, c = model_arrays(model)
        emb, centre = arrays[e], arrays[c]
    feats = Features(facts, arrays[PHASH8].reshape(n, 8, 1), emb, failures, model, centre,
                     arrays[THUMBS].reshape(n, THUMB_SIDE, THUMB_SIDE))
    return feats, missing


def stored_facts(cat: Catalog, fids) -> dict[int, FileFacts]:
    """Keep-best's facts of the files `fids` that have them, as the catalog holds them (size and modification
    time as indexed, not stat'ed again): for a reader that ranks files it does not walk (the service)."""
    want = {int(f) for f in fids}
    out = {}
    with cat.snapshot():
        if FACTS not in cat.arrays():
            return out
        data = cat.array(FACTS)
        for fid, path, size, mtime_ns, fmt, digest, row in cat.conn.execute(
                "SELECT f.id, f.path, f.size, f.mtime_ns, f.format, f.digest, v.row FROM files f "
                "JOIN vectors v ON v.file_id = f.id WHERE v.array = ?", (FACTS,)):
            if fid in want:
                out[fid] = _facts_of(data[row], path, size, mtime_ns / 1e9, fmt or "", digest)
    return out


# Dedup's looks at pixels, remembered by contents so that a second run over an unchanged collection looks at
# no picture again: keep-best's verdicts (keep.derived_from: "this file is an upscale / re-save / noisy copy of
# that one", each two full-size decodes) and the pair test's pixel checks (detect.PairJudge.checks: the
# changed and strongly changed fractions of two thumbnails, by contents, flip, limits and check version).
# Tables of the catalog (schema 4), added to row by row: the callers store what a run added
# (`added`), not all they hold. A row that is not a verdict or two fractions is not read (looked at again,
# never trusted).


def added(looks: dict, before: int) -> dict:
    """What was added to `looks` after its first `before` entries: the looks are only ever added to
    (keep.derived_from, PairJudge), and a dict keeps its insertion order."""
    return dict(itertools.islice(looks.items(), before, None))


def load_verdicts(catalog: str, prefix: str = "") -> dict:
    with Catalog(catalog) as cat:
        return stored_verdicts(cat, prefix)


@dataclass(frozen=True)
class StaleLooks:
    """The stored looks save_looks drops, as load_looks found them: whether another version's are stored
    (other_versions: no run of this version reads them), and this version's whose key names a content no file
    of the catalog holds now (checks, verdicts: their keys). A removed or rewritten file left its looks behind
    for good, and each run read them all into memory again. A file the catalog drops for any reason takes its
    looks with it: one left out of a run over its folder (a narrower --extensions, an unmounted subfolder)
    loses its features too, and is read and checked anew when it comes back. True when there is anything to
    drop."""

    other_versions: bool
    checks: tuple[str, ...] = ()
    verdicts: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.other_versions or bool(self.checks) or bool(self.verdicts)


def load_looks(catalog: str, check_prefix: str, verdict_prefix: str) -> tuple[dict, dict, StaleLooks]:
    """(this version's pixel checks, its keep verdicts, the looks save_looks drops), in one open (each open
    checks the whole database). The looks of contents the catalog no longer holds are left out of the first
    two: no file of this run has them."""
    with Catalog(catalog) as cat:
        checks, verdicts = stored_checks(cat, check_prefix), stored_verdicts(cat, verdict_prefix)
        held = {d for (d,) in cat.conn.execute("SELECT DISTINCT digest FROM files WHERE digest IS NOT NULL")}
        gone_checks, gone_verdicts = _naming_others(checks, held), _naming_others(verdicts, held)
        for looks, gone in ((checks, gone_checks), (verdicts, gone_verdicts)):
            for k in gone:
                del looks[k]
        return checks, verdicts, StaleLooks(_has_stale_looks(cat, check_prefix, verdict_prefix), gone_checks,
                                            gone_verdicts)


def _naming_others(looks: dict, held: set[str]) -> tuple[str, ...]:
    """The keys of `looks` that name a content digest (io.digest.is_digest, between colons: no other part of a
    key is 32 characters long) not in `held`."""
    return tuple(k for k in looks if any(len(t) == 32 and t not in held and is_digest(t) for t in k.split(":")))


def save_looks(catalog: str, *, checks: dict, verdicts: dict, check_prefix: str, verdict_prefix: str,
               stale: StaleLooks) -> None:
    """Store what a run added (checks, verdicts) and drop what `stale` names (load_looks': the looks of other
    versions, drop_stale_looks, and those of contents gone from the catalog), in one transaction; the catalog
    is not opened when there is nothing to do."""
    if not verdicts and not checks and not stale:
        return
    with Catalog(catalog, write=True) as cat, cat.transaction():
        # Dropped first: a look this run made again (another process brought its file back) is stored.
        drop_stale_looks(cat, check_prefix, verdict_prefix)
        for table, keys in (("pixel_checks", stale.checks), ("keep_verdicts", stale.verdicts)):
            cat.conn.executemany(f"DELETE FROM {table} WHERE key = ?", [(k,) for k in keys])
        store_checks(cat, checks)
        store_verdicts(cat, verdicts)


def store_verdicts(cat: Catalog, verdicts: dict) -> None:
    """Add keep-best's verdicts to a catalog open for writing, inside the caller's transaction."""
    cat.conn.executemany("INSERT OR REPLACE INTO keep_verdicts(key, derived) VALUES (?, ?)",
                         [(k, int(bool(v))) for k, v in verdicts.items()])


def stored_verdicts(cat: Catalog, prefix: str = "") -> dict:
    """The stored verdicts of an open catalog whose key starts with prefix (keep.verdict_key_prefix: the
    current tests'), by key."""
    return {k: bool(d) for k, d in cat.conn.execute(
        "SELECT key, derived FROM keep_verdicts WHERE key >= ? AND key < ? AND typeof(derived) = 'integer' "
        "AND derived IN (0, 1)", (prefix, _after(prefix)))}


def _after(prefix: str) -> str:
    """The least string above every string that starts with prefix: a key range of the primary key."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else "\U0010ffff"


def drop_stale_looks(cat: Catalog, check_prefix: str, verdict_prefix: str) -> int:
    """Delete the stored looks no run of this version reads (pixel checks whose key lacks check_prefix,
    verdicts whose key lacks verdict_prefix), inside the caller's transaction; how many. A catalog used by
    one version keeps one version's looks."""
    if not cat.write_mode:
        raise CatalogError("catalog opened read-only")
    return sum(cat.conn.execute(f"DELETE FROM {table} {where}", args).rowcount
               for table, where, args in _stale(check_prefix, verdict_prefix))


def _has_stale_looks(cat: Catalog, check_prefix: str, verdict_prefix: str) -> bool:
    """Whether drop_stale_looks would delete anything (index seeks at both ends of each range, no scan)."""
    return any(cat.conn.execute(f"SELECT 1 FROM {table} {where} LIMIT 1", args).fetchone()
               for table, where, args in _stale(check_prefix, verdict_prefix))


def _stale(check_prefix: str, verdict_prefix: str):
    """(table, WHERE clause, its arguments) selecting each table's looks of other versions."""
    for table, prefix in (("pixel_checks", check_prefix), ("keep_verdicts", verdict_prefix)):
        yield table, "WHERE key < ? OR key >= ?", (prefix, _after(prefix))


def load_checks(catalog: str, prefix: str = "") -> dict:
    with Catalog(catalog) as cat:
        return stored_checks(cat, prefix)


def stored_checks(cat: Catalog, prefix: str = "") -> dict:
    """The stored pixel checks of an open catalog whose key starts with prefix (detect.check_key_prefix: the
    current check's), [changed, strong] by key."""
    return {k: [c, s] for k, c, s in cat.conn.execute(
        "SELECT key, changed, strong FROM pixel_checks WHERE key >= ? AND key < ? AND typeof(changed) = 'real' "
        "AND typeof(strong) = 'real' AND changed BETWEEN 0 AND 1 AND strong BETWEEN 0 AND 1",
        (prefix, _after(prefix)))}


def save_checks(catalog: str, checks: dict) -> None:
    with Catalog(catalog, write=True) as cat, cat.transaction():
        store_checks(cat, checks)


def store_checks(cat: Catalog, checks: dict) -> None:
    """Add pixel checks to a catalog open for writing, inside the caller's transaction."""
    cat.conn.executemany("INSERT OR REPLACE INTO pixel_checks(key, changed, strong) VALUES (?, ?, ?)",
                         [(k, float(v[0]), float(v[1])) for k, v in checks.items()])
