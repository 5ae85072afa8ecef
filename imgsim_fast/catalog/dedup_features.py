"""Dedup's features kept in the catalog, so a second `imgsim dedup --catalog C DIR` decodes nothing.

What features/extract.py computes for a file (its border-trimmed dihedral pHash, the 64 px thumbnail of the
pixel check, keep-best's facts and the two embedded views) is stored as catalog arrays beside the file's
row, under names of their own (`dedup-*`: they are not the catalog's plain hashes or embeddings, which are
prepared differently). A file is reused when its row's (size, mtime_ns, dev, inode) match the walk's stat,
as in the indexer; anything else is extracted again (one read of the file) and its row rewritten.
Failures are remembered the same way: an unchanged file that could not be decoded is not tried again.
"""
from __future__ import annotations

import os
import re

import numpy as np

from imgsim_fast.catalog.store import Catalog
from imgsim_fast.features.extract import THUMB_SIDE, Features, FileFacts, compute_features
from imgsim_fast.io.loading import LoadFailure, iter_image_files

__all__ = ["FACT_COLUMNS", "dedup_features"]

PHASH8 = "dedup-phash8"
THUMBS = "dedup-thumb64"
FACTS = "dedup-facts"
# FileFacts fields kept as one float64 row (format goes to the files row; path, size, mtime and digest are
# the row's own): all are properties of the bytes, so a byte-identical copy could share them.
FACT_COLUMNS = ("width", "height", "content_pixels", "trim_left", "trim_top", "trim_right", "trim_bottom",
                "jpeg_quality", "blocky", "noise", "colour", "camera")
# Rows written per transaction: each commit fsyncs the arrays, so a kill loses at most this many files' work.
_BATCH = 512


def _model_arrays(model: str) -> tuple[str, str]:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", model)[-80:]
    return f"dedup-emb-{name}", f"dedup-centre-{name}"


def _fact_row(f: FileFacts) -> list[float]:
    return [f.width, f.height, f.content_pixels, *f.trim, -1 if f.jpeg_quality is None else f.jpeg_quality,
            float(f.blocky), f.noise, float(f.colour), float(f.camera)]


def _facts_of(row: np.ndarray, path: str, st: os.stat_result, fmt: str, digest: str) -> FileFacts:
    w, h, content, l, t, r, b, q, blocky, noise, colour, camera = (float(v) for v in row)
    return FileFacts(path, st.st_size, st.st_mtime, int(w), int(h), fmt, int(content), digest, (l, t, r, b),
                     None if q < 0 else int(q), bool(blocky), noise, bool(colour), bool(camera))


def dedup_features(catalog: str, roots, *, embed: bool | str = False, workers: int | None = None,
                   progress: bool | None = None, device=None, extensions=None) -> tuple[Features, int]:
    """(Features of the image files under `roots`, as compute_features gives them, and how many files were
    extracted this run) — reading from and adding to the catalog at `catalog`."""
    failures: list[LoadFailure] = []
    passed_over: list[str] = []
    walk = {} if extensions is None else {"extensions": extensions}
    # Paths stay as the walk gives them (relative when the roots are), so the result reads as
    # compute_features' does; the catalog's rows are keyed by the absolute path, as the indexer's are.
    own = os.path.abspath(catalog)  # the catalog's own files (-wal, .arrays/...) are not passed-over pictures
    paths = list(iter_image_files(roots, on_error=failures.append, **walk,
                                  on_skip=lambda p: None if os.path.abspath(p).startswith(own) else passed_over.append(p)))
    stats = {}
    for p in paths:
        try:
            stats[p] = os.stat(p)
        except OSError as e:
            failures.append(LoadFailure(p, f"cannot stat: {e.strerror}", "io_error"))
    paths = [p for p in paths if p in stats]
    model = None
    if embed:
        from imgsim_fast.features.embedding import get_model

        model = get_model("efficientnet-lite0" if embed is True else embed, device).name
    wanted = [PHASH8, THUMBS, FACTS] + (list(_model_arrays(model)) if model else [])

    with Catalog(catalog, write=True) as cat:
        _ensure_arrays(cat, model, embed, device)
        rows = _rows(cat, wanted)
        stale = [p for p in paths if not _fresh(rows.get(os.path.abspath(p)), stats[p])]
        fresh = compute_features(stale, embed=embed, workers=workers, progress=progress, device=device) \
            if stale else None
        if fresh is not None:
            _store(cat, fresh, stats, rows, model)
            rows = _rows(cat, wanted)
        return _assemble(cat, paths, stats, rows, wanted, model, failures, passed_over), len(stale)


def _ensure_arrays(cat: Catalog, model: str | None, embed, device) -> None:
    cat.declare_batch_rows(_BATCH)
    cat.ensure_array(PHASH8, np.uint64, 8)
    cat.ensure_array(THUMBS, np.uint8, THUMB_SIDE * THUMB_SIDE)
    cat.ensure_array(FACTS, np.float64, len(FACT_COLUMNS), {"columns": list(FACT_COLUMNS)})
    if model:
        from imgsim_fast.features.embedding import get_model

        dim = get_model("efficientnet-lite0" if embed is True else embed, device).dim
        for name in _model_arrays(model):
            cat.ensure_array(name, np.float32, dim, {"model": model})


def _rows(cat: Catalog, wanted: list[str]) -> dict[str, tuple]:
    """path -> (id, size, mtime_ns, dev, inode, digest, format, error, error_kind, {array: row})."""
    out = {}
    for fid, path, size, mtime_ns, dev, ino, digest, fmt, err, kind in cat.conn.execute(
            "SELECT id, path, size, mtime_ns, dev, inode, digest, format, error, error_kind FROM files"):
        out[path] = [fid, size, mtime_ns, dev, ino, digest, fmt, err, kind, {}]
    by_id = {r[0]: r for r in out.values()}
    q = ",".join("?" * len(wanted))
    for fid, array, row in cat.conn.execute(f"SELECT file_id, array, row FROM vectors WHERE array IN ({q})", wanted):
        if fid in by_id:
            by_id[fid][9][array] = row
    return out


def _fresh(row, st: os.stat_result) -> bool:
    if row is None or tuple(row[1:5]) != (st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino):
        return False
    return row[7] is not None or {PHASH8, THUMBS, FACTS} <= set(row[9])


def _store(cat: Catalog, feats: Features, stats: dict, rows: dict, model: str | None) -> None:
    """Write the extracted files' rows and arrays (and the failures' rows), _BATCH files per transaction."""
    items = [(f.path, f, i) for i, f in enumerate(feats.facts)] + [(x.path, x, None) for x in feats.failures]
    emb, centre = _model_arrays(model) if model else (None, None)
    for s in range(0, len(items), _BATCH):
        part = items[s:s + _BATCH]
        ok = [(p, i) for p, _, i in part if i is not None]
        with cat.transaction():
            start = {}
            if ok:
                idx = [i for _, i in ok]
                start[PHASH8] = cat.append(PHASH8, np.ascontiguousarray(feats.phash8[idx, :, 0]))
                start[THUMBS] = cat.append(THUMBS, feats.thumbs[idx].reshape(len(idx), -1))
                start[FACTS] = cat.append(FACTS, np.array([_fact_row(feats.facts[i]) for i in idx], np.float64))
                if model and feats.embeddings is not None:
                    start[emb] = cat.append(emb, np.ascontiguousarray(feats.embeddings[idx], np.float32))
                    start[centre] = cat.append(centre, np.ascontiguousarray(feats.centre_embeddings[idx], np.float32))
            done = {p: j for j, (p, _) in enumerate(ok)}
            for p, what, i in part:
                st = stats[p]
                facts = what if i is not None else None
                err = None if i is not None else (what.reason, what.kind)
                key = os.path.abspath(p)
                old = rows.get(key)
                values = (st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino, facts.digest if facts else None,
                          facts.width if facts else None, facts.height if facts else None,
                          facts.format if facts else None, *(err or (None, None)))
                if old is None:
                    fid = cat.conn.execute(
                        "INSERT INTO files(path, size, mtime_ns, dev, inode, digest, width, height, format, "
                        "error, error_kind, meta_sig) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '')",
                        (key, *values)).lastrowid
                else:
                    fid = old[0]
                    # Changed bytes: every array row of the file is stale (the indexer re-reads what it owns).
                    cat.conn.execute("UPDATE files SET size = ?, mtime_ns = ?, dev = ?, inode = ?, digest = ?, "
                                     "width = ?, height = ?, format = ?, error = ?, error_kind = ?, "
                                     "pixel_digest = NULL, meta_sig = '' WHERE id = ?", (*values, fid))
                    cat.conn.execute("DELETE FROM vectors WHERE file_id = ?", (fid,))
                if facts is not None:
                    cat.conn.executemany("INSERT OR REPLACE INTO vectors(file_id, array, row) VALUES (?, ?, ?)",
                                         [(fid, a, r + done[p]) for a, r in start.items()])


def _assemble(cat: Catalog, paths: list[str], stats: dict, rows: dict, wanted: list[str], model: str | None,
              failures: list[LoadFailure], passed_over: list[str]) -> Features:
    """Features in walk order, as compute_features would return them (failures: walk's, then files')."""
    good, idx, file_failures = [], {a: [] for a in wanted}, []
    for p in paths:
        r = rows[os.path.abspath(p)]
        if r[7] is not None:
            file_failures.append(LoadFailure(p, r[7], r[8]))
            continue
        good.append((p, r))
        for a in wanted:
            idx[a].append(r[9][a])
    arrays = {a: np.asarray(cat.array(a)[np.array(idx[a], np.int64)]) if good else None for a in wanted}
    out = [_facts_of(arrays[FACTS][j], p, stats[p], r[6], r[5]) for j, (p, r) in enumerate(good)]
    n = len(out)
    phash8 = arrays[PHASH8].reshape(n, 8, 1) if n else np.zeros((0, 8, 1), np.uint64)
    thumbs = arrays[THUMBS].reshape(n, THUMB_SIDE, THUMB_SIDE) if n else np.zeros((0, THUMB_SIDE, THUMB_SIDE), np.uint8)
    emb = centre = None
    if model:
        e, c = _model_arrays(model)
        emb, centre = (arrays[e], arrays[c]) if n else (np.zeros((0, 0), np.float32),) * 2
    return Features(out, phash8, emb, failures + file_failures, model, centre, thumbs, passed_over)
