"""Incremental indexing of folders into a catalog: decode and hash only what is new or changed.

A file is unchanged when (size, mtime_ns, dev, inode) match its row: nothing is read. Otherwise it is read
once (features/extract.py, on the one pool): its content digest decides: equal digest -> only the stat is
updated; a new path whose digest belongs to a vanished path is a rename, to a live path a copy: both reuse
the stored rows. The workers know the catalog's digests, so such a file is digested but not decoded; the
rest is decoded once, at the size the widest consumer needs (plain hashes, embedding input, dedup's
features), from the bytes already read. Batches are committed in one transaction each, so a kill loses at
most one batch and the next run picks up where this one stopped (issue 5).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from imgsim_fast.features import hashing
from imgsim_fast.catalog.store import (CATALOG_DIRNAME, Catalog, CatalogDamaged, default_catalog_path, embedding_array_name,
                      hash_array_name, holds_name, name_as_stored)
from imgsim_fast.features.codes import words_for_bits
from imgsim_fast.io.loading import DEFAULT_EXTENSIONS, ImageLoadError, LoadFailure, iter_image_files, load_image
from imgsim_fast.features.metadata import Metadata, load_mapping, read_metadata, sidecar_candidates
from imgsim_fast.runtime.progress import progress_bar
from imgsim_fast.catalog import dedup_features as dedup_arrays
from imgsim_fast.features.extract import ExtractSpec, Extracted, embed_inputs, extract_many
from imgsim_fast.runtime.pool import default_workers

__all__ = ["IndexStats", "index", "pixel_digest"]

DEFAULT_BATCH = 256
_SIDECAR_EXTS = (".json", ".xmp", ".JSON", ".XMP")


@dataclass
class IndexStats:
    """What one `index` run did. Counts are exact, so tests can assert the work done."""

    seen: int = 0            # image files the walk found
    unchanged: int = 0       # same size, mtime, dev and inode: not opened
    touched: int = 0         # stat changed, same content digest: stat updated, not decoded
    modified: int = 0        # content changed: decoded again
    added: int = 0           # new path with new content: decoded
    renamed: int = 0         # new path, content of a vanished path: row moved, codes reused
    copied: int = 0          # new path, content of another indexed file: codes reused, not decoded
    removed: int = 0         # rows of files no longer found under the roots
    backfilled: int = 0      # unchanged files missing an array asked for now (a new kind, --embed)
    metadata_read: int = 0   # files whose tags and text were (re)read
    digested: int = 0        # content digests computed (files read in full)
    decoded: int = 0         # files decoded and hashed
    embedded: int = 0        # files embedded
    pixel_digested: int = 0  # files fully decoded for a pixel digest
    failed: int = 0          # files recorded with an error this run
    walk_errors: int = 0     # unreadable folders, symlink loops, undecodable names
    failures: list = field(default_factory=list)  # (path, reason) of each walk error and file failed this run
    passed_over: list = field(default_factory=list)  # files in the folders not named like images (--extensions)
    batches: int = 0         # write transactions of the decode phase
    repaired: int = 0        # --repair: catalog entries whose damaged rows were forgotten, to recompute
    repair_notes: list = field(default_factory=list)  # --repair: one line per damaged thing found
    seconds: dict = field(default_factory=dict)  # phase -> wall seconds

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def pixel_digest(path: str) -> str:
    """BLAKE2b-128 of the upright, fully decoded pixels as RGB, with the size: equal for a PNG and a
    lossless WebP of one picture, whatever their bytes."""
    im = load_image(path, min_size=None)
    if im.mode != "RGB":
        im = im.convert("RGB")
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{im.width}x{im.height}:".encode())
    h.update(im.tobytes())
    return h.hexdigest()


class _Timer:
    def __init__(self, stats: IndexStats):
        self.s = stats.seconds

    def __call__(self, name: str):
        timer = self

        class _T:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.s[name] = timer.s.get(name, 0.0) + time.perf_counter() - self.t0

        return _T()


def _under(path: str, roots: list[str]) -> bool:
    for r in roots:
        if path == r or path.startswith(r if r.endswith(os.sep) else r + os.sep):
            return True
    return False


class _Sidecars:
    """Sidecar files per folder from one listing per folder (not four stats per image)."""

    def __init__(self):
        self.dirs: dict[str, set[str] | None] = {}

    def find(self, path: str) -> list[str]:
        d = os.path.dirname(path)
        names = self.dirs.get(d, False)
        if names is False:
            try:
                listed = [n for n in os.listdir(d) if n.endswith(_SIDECAR_EXTS)]
            except OSError:
                listed = []
            names = set(listed) or None
            self.dirs[d] = names
        if names is None:
            return []
        return [c for c in sidecar_candidates(path) if os.path.basename(c) in names]


def _meta_sig(sidecars: list[str], entry: dict | None) -> str:
    """Identifies the metadata inputs besides the image: '' when there are none."""
    if not sidecars and not entry:
        return ""
    parts = []
    for sc in sidecars:
        try:
            st = os.stat(sc)
            parts.append(f"{os.path.basename(sc)}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            pass
    if entry:
        parts.append(json.dumps(entry, sort_keys=True))
    return hashlib.blake2b("\n".join(parts).encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


@dataclass
class _Work:
    path: str
    st: os.stat_result
    digest: str
    row_id: int | None   # existing row (modified / backfill), None for a new file
    kind: str            # added, modified, backfill
    sidecars: list[str]
    sig: str
    copies: list = field(default_factory=list)  # (path, st, metadata, sig) of in-run copies
    result: object = None  # the file's Extracted (or LoadFailure) from this run's read


def index(
    roots,
    catalog: str | None = None,
    *,
    kinds=("phash",),
    mode: str = "fast",
    hash_size: int = 8,
    embed_model: str | None = None,
    sidecar_map: str | None = None,
    workers: int | None = 1,
    batch_size: int = DEFAULT_BATCH,
    pixel_digests: bool = True,
    progress: bool | None = False,
    follow_symlinks: bool = False,
    repair: bool = False,
    extensions=DEFAULT_EXTENSIONS,
    dedup: bool = False,
    dedup_model: str | None = None,
) -> IndexStats:
    """Bring the catalog (default `<first root>/.imgsim/catalog.sqlite`) up to date with `roots`.

    kinds / mode / hash_size: the hashes to keep (one array per configuration).
    embed_model: also embed new files, and every indexed file still lacking that model's embedding.
    sidecar_map: a CSV/JSON mapping file (see metadata.load_mapping); remembered in the catalog and
        reused by later runs that name none.
    workers: hashing processes per batch (pipeline.hash_paths); 1 hashes in this process.
    pixel_digests: compute pixel digests (full decode) only for files that could be pixel-identical to
        a file with other bytes: same (width, height) and hash codes within PIXEL_CANDIDATE_RADIUS
        bits, so most collections are decoded once, not twice.
    repair: recompute what is damaged instead of refusing (CatalogDamaged) to work on a damaged
        catalog. Damaged array blocks are forgotten and the files whose rows lay there decoded again,
        for every array they had (arrays of other hash settings or models get their own pass); a
        damaged database is moved aside and the roots indexed afresh.
    extensions: the file name extensions the walk takes; rows of indexed files the walk no longer takes
        are removed like those of vanished files (the catalog mirrors what was asked for).
    dedup: also keep dedup's features (catalog/dedup_features.py), from the same read and decode;
        dedup_model: and its two embedded views by this model. kinds may then be empty.

    Each file is read once (features/extract.py): its digest, metadata and, unless the catalog already
    holds its content, one decode feeding every array asked for.
    """
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    roots = [os.path.abspath(os.fspath(r)) for r in roots]
    if not roots:
        raise ValueError("index needs at least one folder or file")
    for r in roots:  # checked before a catalog is created: a typo must not leave one in the parent folder
        if not os.path.exists(r):
            raise ValueError(f"{r}: no such file or folder")
    kinds = hashing._check_kinds(kinds) if kinds or not dedup else ()
    hashing.draft_size(kinds or ("phash",), mode, hash_size)  # validates mode and hash_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for m, lazy in ((embed_model, False), (dedup_model, True)):
        if m:
            _load_model(m, lazy)  # an unknown model fails now, not after the hashing work
    catalog = catalog or default_catalog_path(roots[0] if os.path.isdir(roots[0]) else os.path.dirname(roots[0]))
    common = dict(sidecar_map=sidecar_map, workers=workers, batch_size=batch_size, progress=progress,
                  follow_symlinks=follow_symlinks, extensions=extensions)
    dd = dict(dedup=dedup, dedup_model=dedup_model)
    repaired, notes = 0, []
    if repair:
        repaired, notes, extra = _repair(catalog, kinds, mode, hash_size, embed_model)
        for cfg in extra:  # damaged arrays of other settings, recomputed before the run asked for
            _index_once(roots, catalog, **cfg, **common, pixel_digests=False, dedup=False, dedup_model=None)
    stats = _index_once(roots, catalog, kinds=kinds, mode=mode, hash_size=hash_size, embed_model=embed_model,
                        pixel_digests=pixel_digests, **common, **dd)
    stats.repaired, stats.repair_notes = repaired, notes
    return stats


def _load_model(name: str, lazy: bool = False):
    """The model `name`, or ValueError saying what to install. lazy: dedup's arrays' model, loaded only once a
    file is embedded where it is the built-in one (embedding/lazy.py): a run that finds nothing new in a folder
    does not spend 2 s loading it."""
    from imgsim_fast.features.embedding import get_model
    from imgsim_fast.features.embedding.lazy import ModelNotAvailableError, dedup_model

    try:
        return dedup_model(name) if lazy else get_model(name)
    except ModelNotAvailableError as e:
        raise ValueError(str(e)) from None


def _repair(catalog: str, kinds, mode, hash_size, embed_model) -> tuple[int, list[str], list[dict]]:
    """Verify the catalog and forget what is damaged. Returns (catalog entries to recompute, one note per
    damaged thing, index settings of damaged arrays this run's settings do not cover)."""
    wanted = {hash_array_name(k, hash_size, mode) for k in kinds}
    if embed_model:
        wanted.add(embedding_array_name(embed_model))
    notes, extra = [], []
    with Catalog(catalog, write=True, repair=True) as cat:
        if cat.moved_aside:
            notes.append(f"the catalog database was damaged: moved it to {cat.moved_aside} and indexed afresh "
                         "(index again with --embed or --kinds if it held more than this run asks for)")
        damage = cat.verify()
        params = {}
        for name, text in cat.conn.execute("SELECT name, params FROM arrays"):
            try:
                params[name] = json.loads(text)
            except ValueError:  # damaged too (verify says so): rebuilt only if this run asks for it
                params[name] = {}
        lost = cat.repair_arrays(damage)
    hash_cfgs: dict[tuple, list[str]] = {}
    for d in damage:
        notes.append(f"array {d.array} {d.reason}: {lost[d.array]} entries to recompute")
        p = params.get(d.array, {})
        if d.array in wanted or d.array.startswith("dedup-"):  # dedup's arrays: its next run backfills them
            continue
        if "model" in p:
            extra.append(dict(kinds=kinds, mode=mode, hash_size=hash_size, embed_model=p["model"]))
        elif "kind" in p:
            hash_cfgs.setdefault((p["hash_size"], p["mode"]), []).append(p["kind"])
    extra += [dict(kinds=tuple(ks), mode=m, hash_size=hs, embed_model=None) for (hs, m), ks in hash_cfgs.items()]
    return sum(lost.values()), notes, extra


def _index_once(roots, catalog, *, kinds, mode, hash_size, embed_model, sidecar_map, workers, batch_size,
                pixel_digests, progress, follow_symlinks, extensions, dedup, dedup_model) -> IndexStats:
    stats = IndexStats()
    timer = _Timer(stats)
    t_start = time.perf_counter()
    with Catalog(catalog, write=True) as cat:
        damage = cat.verify()
        if damage:  # never append to, or report "unchanged" over, rows that are not what was written
            raise CatalogDamaged(f"the catalog {cat.path} is damaged: " + "; ".join(
                f"array file {d.array}.bin {d.reason}" for d in damage) + f"; run `{cat.repair_command()}`", damage)
        cat.declare_batch_rows(batch_size)
        hash_arrays = {k: hash_array_name(k, hash_size, mode) for k in kinds}
        for k, name in hash_arrays.items():
            cat.ensure_array(name, np.uint64, words_for_bits(hashing.code_bits(k, hash_size)),
                             {"kind": k, "hash_size": hash_size, "mode": mode})
        embed_array = embedding_array_name(embed_model) if embed_model else None
        wanted = list(hash_arrays.values()) + ([embed_array] if embed_array else [])
        if dedup:
            model = _load_model(dedup_model, lazy=True) if dedup_model else None
            wanted += dedup_arrays.ensure_arrays(cat, model.name if model else None, model.dim if model else None)
            dedup_arrays.drop_stale_arrays(cat)  # an earlier preparation's: no run of this version reads them

        if sidecar_map is None:
            stored = cat.get_meta("sidecar_map")
            sidecar_map = stored if stored and os.path.exists(stored) else None
        mapping = load_mapping(sidecar_map) if sidecar_map else {}

        # 1. Walk and stat.
        with timer("walk"):
            walk_failures: list[LoadFailure] = []
            found = []
            # Not counted as passed over: the catalog's files (database, -wal, .lock, .arrays/), the whole
            # .imgsim folder when the catalog is in one (explore's reports too), and sidecars (.xmp,
            # .json: read as metadata).
            own = [os.path.abspath(catalog)]
            if os.path.basename(os.path.dirname(own[0])) == CATALOG_DIRNAME:
                own.append(os.path.dirname(own[0]) + os.sep)

            def passed_over(p: str) -> None:
                if not os.path.abspath(p).startswith(tuple(own)) and not p.endswith(_SIDECAR_EXTS):
                    stats.passed_over.append(p)

            walk_bar = progress_bar(None, progress, "walking", unit="file")  # no total: the walk finds it
            for p in iter_image_files(roots, follow_symlinks=follow_symlinks, extensions=extensions,
                                      on_error=walk_failures.append, on_skip=passed_over):
                walk_bar.update()
                p = os.path.abspath(p)
                if not holds_name(p):
                    walk_failures.append(LoadFailure(p, "file name is not valid UTF-8", "bad_name"))
                    continue
                try:
                    st = os.stat(p)
                except OSError as e:
                    walk_failures.append(LoadFailure(p, f"cannot stat: {e.strerror}", "io_error"))
                    continue
                found.append((p, st))
            walk_bar.close()
            stats.seen = len(found)
            stats.walk_errors = len(walk_failures)
            stats.failures += [(f.path, f.reason) for f in walk_failures]  # listed by their own names

        # 2. Compare with the catalog.
        with timer("compare"):
            rows = {}
            for r in cat.conn.execute("SELECT id, path, size, mtime_ns, dev, inode, digest, error, meta_sig FROM files"):
                if _under(r[1], roots):
                    rows[r[1]] = r
            complete = {fid for (fid,) in cat.conn.execute(
                f"SELECT file_id FROM vectors WHERE array IN ({','.join('?' * len(wanted))}) "
                "GROUP BY file_id HAVING count(*) = ?", (*wanted, len(wanted)))}
            side = _Sidecars()
            seen_paths = set()
            unchanged_meta, touched, work, new_files = [], [], [], []
            for p, st in found:
                seen_paths.add(p)
                sidecars = side.find(p)
                entry = mapping.get(p)
                sig = _meta_sig(sidecars, entry)
                old = rows.get(p)
                if old is not None and (old[2], old[3], old[4], old[5]) == (st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino):
                    if old[7] is None and old[0] not in complete:
                        work.append(_Work(p, st, old[6], old[0], "backfill", sidecars, sig))
                    elif old[8] != sig:
                        unchanged_meta.append((old[0], p, sidecars, entry, sig))
                        stats.unchanged += 1
                    else:
                        stats.unchanged += 1
                elif old is not None:
                    touched.append((old, p, st, sidecars, entry, sig))
                else:
                    new_files.append((p, st, sidecars, entry, sig))

        # 3. The cheap changes first, in chunks: files whose sidecars or mapping entry changed.
        with timer("write"):
            ops = [("meta", fid, p, sc, e, sig) for fid, p, sc, e, sig in unchanged_meta]
            for i in range(0, max(len(ops), 1), 1000):
                with cat.transaction():
                    if i == 0:
                        cat.conn.execute("DELETE FROM walk_errors")
                        cat.conn.executemany("INSERT INTO walk_errors(path, kind, reason) VALUES (?, ?, ?)",
                                             [(name_as_stored(f.path), f.kind, f.reason) for f in walk_failures])
                        if sidecar_map:
                            cat.set_meta("sidecar_map", os.path.abspath(sidecar_map))
                    for op in ops[i:i + 1000]:
                        _apply_cheap(cat, op, mapping, stats)

        # 4. One read per file of what changed, appeared or lacks an array (features/extract.py): its digest
        # and metadata, and, unless the catalog already holds its content, one decode feeding every array
        # asked for. Renames and copies are then found by digest and reuse the stored rows. Batches, each
        # committed in one transaction with its cheap changes, so a kill loses at most one batch.
        run = _Run(cat, rows, seen_paths, complete, mapping, stats, timer, workers, kinds=kinds, mode=mode,
                   hash_size=hash_size, hash_arrays=hash_arrays, embed_model=embed_model, embed_array=embed_array,
                   dedup=dedup, dedup_model=dedup_model)
        items = [("backfill", w) for w in work] + [("touched", t) for t in touched] + [("new", n) for n in new_files]
        bar = progress_bar(len(items), progress if items else False, "reading and decoding")
        try:
            for i in range(0, len(items), batch_size):
                run.batch(items[i:i + batch_size])
                bar.update(len(items[i:i + batch_size]))
        finally:
            bar.close()
            run.close()
        stats.removed = len(run.vanished)
        with timer("write"):
            gone = [r[0] for r in run.vanished.values()]
            for i in range(0, len(gone), 1000):
                with cat.transaction():
                    cat.conn.executemany("DELETE FROM files WHERE id = ?", [(fid,) for fid in gone[i:i + 1000]])

        # 6. Pixel digests where dimensions collide.
        if pixel_digests and kinds:
            _pixel_digests(cat, hash_arrays[kinds[0]], batch_size, stats, timer)
        if kinds:  # a dedup-only run (no plain hashes) says nothing about the catalog's search settings
            with cat.transaction():
                cat.set_meta("last_index", {"roots": roots, "kinds": list(kinds), "mode": mode,
                                            "hash_size": hash_size, "embed_model": embed_model,
                                            "time": time.time()})
    stats.seconds["total"] = time.perf_counter() - t_start
    return stats


_META_COLS = ("width", "height", "format", "mode", "meta_error", "description", "text_norm",
              "artist", "make", "model", "taken", "lat", "lon", "rating", "label")


def _meta_values(md: Metadata) -> tuple:
    desc = md.description
    return (md.width, md.height, md.format, md.mode, "; ".join(md.errors) or None, desc,
            (desc or "").casefold(), md.artist, md.make, md.model, md.taken, md.lat, md.lon, md.rating, md.label)


def _read_md(path, sidecars, mapping, stats) -> Metadata:
    stats.metadata_read += 1
    return read_metadata(path, sidecars=sidecars, mapping_entry=mapping.get(path))


def _write_meta(cat: Catalog, fid: int, md: Metadata, sig: str) -> None:
    cat.conn.execute(f"UPDATE files SET {', '.join(c + ' = ?' for c in _META_COLS)}, meta_sig = ? WHERE id = ?",
                     (*_meta_values(md), sig, fid))
    cat.conn.execute("DELETE FROM tags WHERE file_id = ?", (fid,))
    cat.conn.executemany("INSERT INTO tags(file_id, norm, tag, source) VALUES (?, ?, ?, ?)",
                         [(fid, n, t, s) for n, t, s in md.unique_tags()])


def _insert_file(cat: Catalog, path: str, st, digest: str, md: Metadata, sig: str,
                 error=None, error_kind=None, pixel=None) -> int:
    cur = cat.conn.execute(
        "INSERT INTO files(path, size, mtime_ns, dev, inode, digest, pixel_digest, error, error_kind, meta_sig) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (path, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino, digest, pixel, error, error_kind, sig))
    fid = cur.lastrowid
    _write_meta(cat, fid, md, sig)
    return fid


def _apply_cheap(cat: Catalog, op: tuple, mapping: dict, stats: IndexStats) -> None:
    """A change that decodes nothing. `md` in an op is the metadata the extraction read from the file's
    bytes (None: nothing to rewrite); a "meta" op (sidecars changed, image unchanged) reads it here."""
    kind = op[0]
    if kind in ("touch", "rename"):
        _, fid, p, st, md, sig = op
        cat.conn.execute("UPDATE files SET path = ?, size = ?, mtime_ns = ?, dev = ?, inode = ? WHERE id = ?",
                         (p, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino, fid))
        if md is not None:  # a renamed file has other sidecars; a touched one may have new ones
            stats.metadata_read += 1
            _write_meta(cat, fid, md, sig)
    elif kind == "copy":
        _, src, p, st, md, sig, d = op
        stats.metadata_read += 1
        _copy_row(cat, src, p, st, d, md, sig)
    elif kind == "meta":
        _, fid, p, sidecars, entry, sig = op
        _write_meta(cat, fid, _read_md(p, sidecars, mapping, stats), sig)


def _copy_row(cat: Catalog, src: int, p: str, st, d: str, md: Metadata, sig: str) -> None:
    err, err_kind, pix = cat.conn.execute("SELECT error, error_kind, pixel_digest FROM files WHERE id = ?",
                                          (src,)).fetchone()
    fid = _insert_file(cat, p, st, d, md, sig, err, err_kind, pix)
    cat.conn.execute("INSERT INTO vectors(file_id, array, row) SELECT ?, array, row FROM vectors WHERE file_id = ?",
                     (fid, src))


class _Run:
    """The read-and-decode phase of one index run: extraction in batches on the one pool, classification of
    each file by its digest (touched, modified, renamed, copied, added), and one transaction per batch."""

    def __init__(self, cat, rows, seen_paths, complete, mapping, stats, timer, workers, *, kinds, mode, hash_size,
                 hash_arrays, embed_model, embed_array, dedup, dedup_model):
        self.cat, self.complete, self.mapping, self.stats, self.timer = cat, complete, mapping, stats, timer
        self.workers = default_workers() if workers is None else workers
        self.hash_arrays, self.embed_array = hash_arrays, embed_array
        self.vanished = {path: r for path, r in rows.items() if path not in seen_paths}
        self.by_digest: dict[str, list] = {}
        for fid, path, d, err in cat.conn.execute("SELECT id, path, digest, error FROM files WHERE digest IS NOT NULL"):
            self.by_digest.setdefault(d, []).append((path, fid, err))
        self.model = _load_model(embed_model) if embed_model else None
        self.dedup = dedup
        self.dedup_model = _load_model(dedup_model, lazy=True) if dedup_model else None
        if self.dedup_model is not None:
            for name in dedup_arrays.model_arrays(self.dedup_model.name):
                cat.ensure_array(name, np.float32, self.dedup_model.dim, {"model": self.dedup_model.name})
        if self.model is not None:
            cat.ensure_array(embed_array, np.float32, self.model.dim, {"model": embed_model})
        # The digests the catalog holds, for the workers: such a file is read (digest, metadata) but not
        # decoded, since it is touched, renamed or copied and its rows are reused.
        self._tmp = tempfile.mkdtemp(prefix="imgsim-index-")
        known = np.array(sorted(self.by_digest), dtype="S32")
        table = os.path.join(self._tmp, "digests.S32")
        known.tofile(table)
        common = dict(kinds=tuple(kinds), mode=mode, hash_size=hash_size, metadata=True,
                      embed=self.model.spec if self.model is not None else None, dedup=dedup,
                      dedup_embed_size=self.dedup_model.spec.size if self.dedup_model is not None else None)
        self.spec_all = ExtractSpec(**common)
        self.spec_skip = ExtractSpec(**common, skip_digests=table if len(known) else None)

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _extract(self, items: list[tuple], spec: ExtractSpec) -> dict[int, object]:
        with self.timer("read_decode"):
            out = dict(extract_many(items, spec, self.workers))
        self.stats.digested += sum(1 for r in out.values() if isinstance(r, Extracted))
        return out

    def batch(self, items: list[tuple[str, tuple]]) -> None:
        stats, complete, vanished = self.stats, self.complete, self.vanished
        skip, full = [], []
        for k, (what, item) in enumerate(items):
            if what == "backfill":
                full.append((k, item.path))
            else:
                p, sidecars, entry = (item[1], item[3], item[4]) if what == "touched" else (item[0], item[2], item[3])
                skip.append((k, p, sidecars, entry))
        results = self._extract(skip, self.spec_skip)
        results.update(self._extract(full, self.spec_all))

        cheap, work, first_new = [], [], {}
        for k, (what, item) in enumerate(items):
            r = results[k]
            if what == "backfill":
                item.result = r
                work.append(item)
                continue
            if not isinstance(r, Extracted):
                continue  # vanished or unreadable since the walk: treated as not seen this run
            d = r.digest
            if what == "touched":
                old, p, st, sidecars, entry, sig = item
                if d == old[6]:
                    stats.touched += 1
                    cheap.append(("touch", old[0], p, st, r.metadata if old[8] != sig else None, sig))
                    if old[7] is None and old[0] not in complete:
                        work.append(_Work(p, st, d, old[0], "backfill", sidecars, sig, result=r))
                else:
                    stats.modified += 1
                    work.append(_Work(p, st, d, old[0], "modified", sidecars, sig, result=r))
                continue
            p, st, sidecars, entry, sig = item
            cands = self.by_digest.get(d, [])
            gone = sorted(c for c in cands if c[0] in vanished)
            live = sorted(c for c in cands if c[0] not in vanished and (c[2] is not None or c[1] in complete))
            if gone:
                src = gone[0]
                del vanished[src[0]]
                cands.remove(src)
                cands.append((p, src[1], src[2]))
                stats.renamed += 1
                cheap.append(("rename", src[1], p, st, r.metadata, sig))
                if src[2] is None and src[1] not in complete:
                    work.append(_Work(p, st, d, src[1], "backfill", sidecars, sig, result=r))
            elif live:
                stats.copied += 1
                cheap.append(("copy", live[0][1], p, st, r.metadata, sig, d))
            elif d in first_new:
                stats.copied += 1
                first_new[d].copies.append((p, st, r.metadata, sig))
            else:
                stats.added += 1
                w = _Work(p, st, d, None, "added", sidecars, sig, result=r)
                first_new[d] = w
                work.append(w)

        # A file the workers did not decode (its content was known) that needs arrays after all: a modified
        # file now holding another file's bytes, a copy of a file still lacking an array. Rare: read again.
        again = [(k, w.path) for k, w in enumerate(work)
                 if not isinstance(w.result, Extracted) or (not w.result.decoded and w.result.failure is None)]
        again = [(k, p) for k, p in again if not isinstance(work[k].result, LoadFailure)]
        for k, r in self._extract(again, self.spec_all).items():
            work[k].result = r
        stats.decoded += sum(1 for w in work if isinstance(w.result, Extracted) and w.result.decoded)
        stats.backfilled += sum(1 for w in work if w.kind == "backfill")
        self._write(cheap, work)

    def _write(self, cheap: list, work: list[_Work]) -> None:
        cat, stats = self.cat, self.stats
        have: dict[int, set[str]] = {}
        backfill_ids = [w.row_id for w in work if w.kind == "backfill"]
        if backfill_ids:
            q = ",".join("?" * len(backfill_ids))
            for fid, name in cat.conn.execute(f"SELECT file_id, array FROM vectors WHERE file_id IN ({q})",
                                              backfill_ids):
                have.setdefault(fid, set()).add(name)
        errors: dict[str, tuple[str, str]] = {}
        ok: list[_Work] = []
        for w in work:
            r = w.result
            failure = r if isinstance(r, LoadFailure) else r.failure
            if failure is not None:
                errors[w.path] = (failure.reason, failure.kind)
            else:
                ok.append(w)
        arrays: dict[str, tuple[np.ndarray, list[str]]] = {}  # array -> (rows, paths)
        if ok and self.hash_arrays:
            for kind, name in self.hash_arrays.items():
                arrays[name] = (np.stack([w.result.codes[kind] for w in ok]), [w.path for w in ok])
        if self.model is not None:
            todo = [w for w in ok if w.kind != "backfill" or self.embed_array not in have.get(w.row_id, set())]
            if todo:
                with self.timer("embed"):
                    vecs = embed_inputs(self.model, [w.result.embed_input for w in todo])
                stats.embedded += len(todo)
                finite = np.isfinite(vecs).all(axis=1)
                for w in (w for w, f in zip(todo, finite) if not f):  # a NaN row would score 1e31 against all
                    errors[w.path] = ("embedding failed: the model returned NaN or infinity", "hash_error")
                arrays[self.embed_array] = (vecs[finite], [w.path for w, f in zip(todo, finite) if f])
        if self.dedup and ok:
            dd = [w for w in ok if w.path not in errors]
            facts = [w.result.dedup for w in dd]
            paths = [w.path for w in dd]
            arrays.update({name: (rows, paths) for name, rows in dedup_arrays.feature_rows(facts).items()})
            if self.dedup_model is not None:
                with self.timer("embed"):
                    both = embed_inputs(self.dedup_model, [v for f in facts for v in f[2]])
                emb, centre = dedup_arrays.model_arrays(self.dedup_model.name)
                arrays[emb] = (both[0::2].copy(), paths)
                arrays[centre] = (both[1::2].copy(), paths)
        with self.timer("write"), cat.transaction():
            for op in cheap:
                _apply_cheap(cat, op, self.mapping, stats)
            rows_of: dict[str, dict[str, int]] = {}
            missing = {w.path: have.get(w.row_id, set()) if w.kind == "backfill" else set() for w in work}
            for name, (data, paths) in arrays.items():
                keep = [i for i, p in enumerate(paths) if p not in errors]
                _append_rows(cat, name, data[keep], {paths[i]: j for j, i in enumerate(keep)}, missing, rows_of)
            for w in work:
                err = errors.get(w.path)
                vec = {} if err else rows_of.get(w.path, {})
                md = w.result.metadata if isinstance(w.result, Extracted) else None
                if w.kind == "added":
                    stats.metadata_read += 1
                    fid = _insert_file(cat, w.path, w.st, w.digest, md or Metadata(), w.sig, *(err or (None, None)))
                    self.by_digest.setdefault(w.digest, []).append((w.path, fid, err[0] if err else None))
                elif w.kind == "modified":
                    stats.metadata_read += 1
                    fid = w.row_id
                    cat.conn.execute("UPDATE files SET size = ?, mtime_ns = ?, dev = ?, inode = ?, digest = ?, "
                                     "pixel_digest = NULL, error = ?, error_kind = ? WHERE id = ?",
                                     (w.st.st_size, w.st.st_mtime_ns, w.st.st_dev, w.st.st_ino, w.digest,
                                      *(err or (None, None)), fid))
                    cat.conn.execute("DELETE FROM vectors WHERE file_id = ?", (fid,))
                    _write_meta(cat, fid, md or Metadata(), w.sig)
                else:
                    fid = w.row_id
                    if err:
                        cat.conn.execute("UPDATE files SET error = ?, error_kind = ? WHERE id = ?", (*err, fid))
                if err:
                    stats.failed += 1
                    stats.failures.append((w.path, err[0]))
                cat.conn.executemany("INSERT OR REPLACE INTO vectors(file_id, array, row) VALUES (?, ?, ?)",
                                     [(fid, n, r) for n, r in vec.items()])
                if not err and w.kind != "backfill":
                    self.complete.add(fid)  # a later batch's copy of this file reuses its rows
                for p, st, cmd, sig in w.copies:
                    stats.metadata_read += 1
                    _copy_row(cat, fid, p, st, w.digest, cmd or Metadata(), sig)
        stats.batches += 1


# Pixel-identical files have equal pHash codes when both decode at full size, and codes a few bits
# apart when one is a JPEG draft-decoded in fast mode; 8 bits keeps a margin while unrelated photos of
# one camera (same size) sit 20+ bits apart, so they are not decoded a second time.
PIXEL_CANDIDATE_RADIUS = 8


def _append_rows(cat, name, data, index_of, have, rows_of) -> None:
    """Append the rows of `data` for the files lacking array `name` (backfill keeps existing rows)."""
    paths = [p for p in index_of if name not in have.get(p, ())]
    if not paths:
        return
    start = cat.append(name, data[[index_of[p] for p in paths]])
    for j, p in enumerate(paths):
        rows_of.setdefault(p, {})[name] = start + j


def _pixel_digests(cat: Catalog, array: str, batch_size: int, stats: IndexStats, timer) -> None:
    """Pixel digests of the files that may be pixel-identical to a file with other bytes: same
    (width, height), hash codes within PIXEL_CANDIDATE_RADIUS, different content digests."""
    from imgsim_fast.indexes.hamming import hamming_radius

    rows = cat.conn.execute(
        "SELECT f.width, f.height, f.digest, f.id, f.path, f.pixel_digest, v.row FROM files f "
        "JOIN vectors v ON v.file_id = f.id AND v.array = ? WHERE f.error IS NULL AND (f.width, f.height) IN "
        "(SELECT width, height FROM files WHERE error IS NULL AND width IS NOT NULL "
        " GROUP BY width, height HAVING count(DISTINCT digest) > 1) ORDER BY f.width, f.height, f.path",
        (array,)).fetchall()
    codes = cat.array(array)
    by_dims: dict[tuple, list] = {}
    for r in rows:
        by_dims.setdefault((r[0], r[1]), []).append(r)
    todo = []
    for members in by_dims.values():
        c = np.ascontiguousarray(codes[[m[6] for m in members]])
        lims, ids, _ = hamming_radius(c, c, PIXEL_CANDIDATE_RADIUS, threads=1)
        for i, m in enumerate(members):
            if m[5] is None and any(members[j][2] != m[2] for j in ids[lims[i]:lims[i + 1]]):
                todo.append((m[2], m[3], m[4]))
    # Byte-identical files share a pixel digest: decode one path per content digest.
    groups: dict[str, list] = {}
    for d, fid, path in sorted(todo):
        groups.setdefault(d, []).append((fid, path))
    items = list(groups.values())
    for i in range(0, len(items), batch_size):
        out = []
        with timer("pixels"):
            for members in items[i:i + batch_size]:
                try:
                    px = pixel_digest(members[0][1])
                except (ImageLoadError, OSError):
                    continue  # vanished or undecodable at full size: tried again next run
                stats.pixel_digested += 1
                out.extend((px, fid) for fid, _ in members)
        with timer("write"), cat.transaction():
            cat.conn.executemany("UPDATE files SET pixel_digest = ? WHERE id = ?", out)
