"""Incremental indexing of folders into a catalog: decode and hash only what is new or changed.

A file is unchanged when (size, mtime_ns, dev, inode) match its row: nothing is read. Otherwise its
content digest decides: equal digest -> only the stat is updated; a new path whose digest belongs to a
vanished path is a rename, to a live path a copy: both reuse the stored codes without decoding. Only the
rest is decoded, in batches, each committed in one transaction, so a kill loses at most one batch and
the next run picks up where this one stopped (issue 5).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np

from imgsim_fast.features import hashing
from imgsim_fast.catalog.store import (CATALOG_DIRNAME, Catalog, CatalogDamaged, default_catalog_path, embedding_array_name,
                      hash_array_name)
from imgsim_fast.features.codes import words_for_bits
from imgsim_fast.io.digest import file_digest
from imgsim_fast.io.loading import DEFAULT_EXTENSIONS, ImageLoadError, LoadFailure, iter_image_files, load_image
from imgsim_fast.features.metadata import Metadata, load_mapping, read_metadata, sidecar_candidates
from imgsim_fast.runtime.progress import progress_bar

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
    copies: list = field(default_factory=list)  # (path, st, sidecars, sig) of in-run copies


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
    """
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    roots = [os.path.abspath(os.fspath(r)) for r in roots]
    if not roots:
        raise ValueError("index needs at least one folder or file")
    for r in roots:  # checked before a catalog is created: a typo must not leave one in the parent folder
        if not os.path.exists(r):
            raise ValueError(f"{r}: no such file or folder")
    kinds = hashing._check_kinds(kinds)
    hashing.draft_size(kinds, mode, hash_size)  # validates mode and hash_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if embed_model:
        _load_model(embed_model)  # an unknown model fails now, not after the hashing work
    catalog = catalog or default_catalog_path(roots[0] if os.path.isdir(roots[0]) else os.path.dirname(roots[0]))
    common = dict(sidecar_map=sidecar_map, workers=workers, batch_size=batch_size, progress=progress,
                  follow_symlinks=follow_symlinks, extensions=extensions)
    repaired, notes = 0, []
    if repair:
        repaired, notes, extra = _repair(catalog, kinds, mode, hash_size, embed_model)
        for cfg in extra:  # damaged arrays of other settings, recomputed before the run asked for
            _index_once(roots, catalog, **cfg, **common, pixel_digests=False)
    stats = _index_once(roots, catalog, kinds=kinds, mode=mode, hash_size=hash_size, embed_model=embed_model,
                        pixel_digests=pixel_digests, **common)
    stats.repaired, stats.repair_notes = repaired, notes
    return stats


def _load_model(name: str):
    from imgsim_fast.features.embedding import get_model
    from imgsim_fast.features.embedding.models import ModelNotAvailableError

    try:
        return get_model(name)
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
        if d.array in wanted:
            continue
        if "model" in p:
            extra.append(dict(kinds=kinds, mode=mode, hash_size=hash_size, embed_model=p["model"]))
        elif "kind" in p:
            hash_cfgs.setdefault((p["hash_size"], p["mode"]), []).append(p["kind"])
    extra += [dict(kinds=tuple(ks), mode=m, hash_size=hs, embed_model=None) for (hs, m), ks in hash_cfgs.items()]
    return sum(lost.values()), notes, extra


def _index_once(roots, catalog, *, kinds, mode, hash_size, embed_model, sidecar_map, workers, batch_size,
                pixel_digests, progress, follow_symlinks, extensions) -> IndexStats:
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
                try:
                    p.encode("utf-8")
                except UnicodeEncodeError:
                    walk_failures.append(LoadFailure(p.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
                                                     "file name is not valid UTF-8; skipped", "bad_name"))
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

        # 3. Digests of what changed or appeared; renames and copies found by digest.
        with timer("digest"):
            vanished = {path: r for path, r in rows.items() if path not in seen_paths}
            cheap = []  # (op, ...) applied in the cheap phase
            # Digests read every byte of every new or touched file: the slow phase of a first run on a disk.
            digest_bar = progress_bar(len(touched) + len(new_files), progress if touched or new_files else False,
                                      "reading")
            for old, p, st, sidecars, entry, sig in touched:
                digest_bar.update()
                d = _digest(p, stats)
                if d is None:
                    continue
                if d == old[6]:
                    stats.touched += 1
                    cheap.append(("touch", old[0], p, st, sidecars, entry, sig, old[8] != sig))
                    if old[7] is None and old[0] not in complete:
                        work.append(_Work(p, st, d, old[0], "backfill", sidecars, sig))
                else:
                    stats.modified += 1
                    work.append(_Work(p, st, d, old[0], "modified", sidecars, sig))
            by_digest: dict[str, list] = {}
            if new_files:
                for fid, path, d, err in cat.conn.execute("SELECT id, path, digest, error FROM files WHERE digest IS NOT NULL"):
                    by_digest.setdefault(d, []).append((path, fid, err))
            first_new: dict[str, _Work] = {}
            for p, st, sidecars, entry, sig in new_files:
                digest_bar.update()
                d = _digest(p, stats)
                if d is None:
                    continue
                cands = by_digest.get(d, [])
                gone = sorted(c for c in cands if c[0] in vanished)
                live = sorted(c for c in cands if c[0] not in vanished and (c[2] is not None or c[1] in complete))
                if gone:
                    src = gone[0]
                    del vanished[src[0]]
                    cands.remove(src)
                    cands.append((p, src[1], src[2]))
                    stats.renamed += 1
                    cheap.append(("rename", src[1], p, st, sidecars, entry, sig, True))
                    if src[2] is None and src[1] not in complete:
                        work.append(_Work(p, st, d, src[1], "backfill", sidecars, sig))
                elif live:
                    stats.copied += 1
                    cheap.append(("copy", live[0][1], p, st, sidecars, entry, sig, d))
                elif d in first_new:
                    stats.copied += 1
                    first_new[d].copies.append((p, st, sidecars, sig))
                else:
                    stats.added += 1
                    w = _Work(p, st, d, None, "added", sidecars, sig)
                    first_new[d] = w
                    work.append(w)
            digest_bar.close()
            stats.removed = len(vanished)

        # 4. Cheap changes: nothing decoded. Committed before the slow phase, in chunks.
        with timer("write"):
            ops = [("remove", r[0]) for r in vanished.values()]
            ops += cheap
            ops += [("meta", fid, p, sc, e, sig) for fid, p, sc, e, sig in unchanged_meta]
            for i in range(0, max(len(ops), 1), 1000):
                with cat.transaction():
                    if i == 0:
                        cat.conn.execute("DELETE FROM walk_errors")
                        cat.conn.executemany("INSERT INTO walk_errors(path, kind, reason) VALUES (?, ?, ?)",
                                             [(f.path, f.kind, f.reason) for f in walk_failures])
                        if sidecar_map:
                            cat.set_meta("sidecar_map", os.path.abspath(sidecar_map))
                    for op in ops[i:i + 1000]:
                        _apply_cheap(cat, op, mapping, stats)

        # 5. Decode, hash, embed: batches, each one transaction.
        stats.backfilled = sum(1 for w in work if w.kind == "backfill")
        bar = progress_bar(len(work), progress if work else False, "decoding")
        try:
            for i in range(0, len(work), batch_size):
                _run_batch(cat, work[i:i + batch_size], kinds, mode, hash_size, hash_arrays, embed_model,
                           embed_array, complete, mapping, workers, stats, timer)
                bar.update(len(work[i:i + batch_size]))
        finally:
            bar.close()

        # 6. Pixel digests where dimensions collide.
        if pixel_digests:
            _pixel_digests(cat, hash_arrays[kinds[0]], batch_size, stats, timer)
        with cat.transaction():
            cat.set_meta("last_index", {"roots": roots, "kinds": list(kinds), "mode": mode,
                                        "hash_size": hash_size, "embed_model": embed_model,
                                        "time": time.time()})
    stats.seconds["total"] = time.perf_counter() - t_start
    return stats


def _digest(path: str, stats: IndexStats) -> str | None:
    try:
        d = file_digest(path)
    except OSError:
        return None  # vanished or unreadable since the walk: treated as not seen this run
    stats.digested += 1
    return d


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
    kind = op[0]
    if kind == "remove":
        cat.conn.execute("DELETE FROM files WHERE id = ?", (op[1],))
    elif kind in ("touch", "rename"):
        _, fid, p, st, sidecars, entry, sig, reread = op
        cat.conn.execute("UPDATE files SET path = ?, size = ?, mtime_ns = ?, dev = ?, inode = ? WHERE id = ?",
                         (p, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino, fid))
        if reread:  # a renamed file has other sidecars; its embedded metadata is the same
            _write_meta(cat, fid, _read_md(p, sidecars, mapping, stats), sig)
    elif kind == "copy":
        _, src, p, st, sidecars, entry, sig, d = op
        _copy_row(cat, src, p, st, d, _read_md(p, sidecars, mapping, stats), sig)
    elif kind == "meta":
        _, fid, p, sidecars, entry, sig = op
        _write_meta(cat, fid, _read_md(p, sidecars, mapping, stats), sig)


def _copy_row(cat: Catalog, src: int, p: str, st, d: str, md: Metadata, sig: str) -> None:
    err, err_kind, pix = cat.conn.execute("SELECT error, error_kind, pixel_digest FROM files WHERE id = ?",
                                          (src,)).fetchone()
    fid = _insert_file(cat, p, st, d, md, sig, err, err_kind, pix)
    cat.conn.execute("INSERT INTO vectors(file_id, array, row) SELECT ?, array, row FROM vectors WHERE file_id = ?",
                     (fid, src))


def _run_batch(cat, batch: list[_Work], kinds, mode, hash_size, hash_arrays, embed_model, embed_array,
               complete, mapping, workers, stats, timer) -> None:
    from imgsim_fast.runtime.pool import hash_paths

    with timer("metadata"):
        mds = {w.path: _read_md(w.path, w.sidecars, mapping, stats) for w in batch if w.kind != "backfill"}
    have: dict[int, set[str]] = {}
    backfill_ids = [w.row_id for w in batch if w.kind == "backfill"]
    if backfill_ids:
        q = ",".join("?" * len(backfill_ids))
        for fid, name in cat.conn.execute(f"SELECT file_id, array FROM vectors WHERE file_id IN ({q})", backfill_ids):
            have.setdefault(fid, set()).add(name)
    need_hash = [w for w in batch if w.kind != "backfill" or not set(hash_arrays.values()) <= have.get(w.row_id, set())]
    with timer("decode_hash"):
        res = hash_paths([w.path for w in need_hash], kinds=kinds, mode=mode, hash_size=hash_size,
                         workers=workers, progress=False) if need_hash else None
    stats.decoded += len(need_hash)
    codes_of: dict[str, int] = {p: i for i, p in enumerate(res.paths)} if res else {}
    errors: dict[str, tuple[str, str]] = {f.path: (f.reason, f.kind) for f in res.failures} if res else {}
    emb_of: dict[str, int] = {}
    emb = None
    if embed_array:
        to_embed = [w.path for w in batch if w.path not in errors
                    and (w.kind != "backfill" or embed_array not in have.get(w.row_id, set()))]
        if to_embed:
            from imgsim_fast.features.embedding import embed_paths

            with timer("embed"):
                emb = embed_paths(to_embed, model=embed_model)
            stats.embedded += len(emb.paths)
            finite = np.isfinite(np.asarray(emb.vectors)).all(axis=1) if len(emb.paths) else []
            emb_of = {p: i for i, p in enumerate(emb.paths) if finite[i]}
            for f in emb.failures:
                errors.setdefault(f.path, (f"embedding failed: {f.reason}", f.kind))
            for i in np.flatnonzero(~np.asarray(finite, bool)):  # a NaN row would score 1e31 against everything
                errors.setdefault(emb.paths[i], ("embedding failed: the model returned NaN or infinity",
                                                 "hash_error"))
            if len(emb.paths):
                cat.ensure_array(embed_array, np.float32, int(np.asarray(emb.vectors).shape[1]), {"model": embed_model})
    with timer("write"), cat.transaction():
        rows_of: dict[str, dict[str, int]] = {}
        missing = {w.path: have.get(w.row_id, set()) if w.kind == "backfill" else set() for w in batch}
        if res and len(res.paths):
            for k, name in hash_arrays.items():
                _append_rows(cat, name, res.codes[k], codes_of, missing, rows_of)
        if emb is not None and len(emb.paths):
            _append_rows(cat, embed_array, np.asarray(emb.vectors, dtype=np.float32), emb_of, missing, rows_of)
        for w in batch:
            err = errors.get(w.path)
            vec = {} if err else rows_of.get(w.path, {})
            if w.kind == "added":
                fid = _insert_file(cat, w.path, w.st, w.digest, mds[w.path], w.sig, *(err or (None, None)))
            elif w.kind == "modified":
                fid = w.row_id
                cat.conn.execute("UPDATE files SET size = ?, mtime_ns = ?, dev = ?, inode = ?, digest = ?, "
                                 "pixel_digest = NULL, error = ?, error_kind = ? WHERE id = ?",
                                 (w.st.st_size, w.st.st_mtime_ns, w.st.st_dev, w.st.st_ino, w.digest,
                                  *(err or (None, None)), fid))
                cat.conn.execute("DELETE FROM vectors WHERE file_id = ?", (fid,))
                _write_meta(cat, fid, mds[w.path], w.sig)
            else:
                fid = w.row_id
                if err:
                    cat.conn.execute("UPDATE files SET error = ?, error_kind = ? WHERE id = ?", (*err, fid))
            if err:
                stats.failed += 1
            cat.conn.executemany("INSERT OR REPLACE INTO vectors(file_id, array, row) VALUES (?, ?, ?)",
                                 [(fid, n, r) for n, r in vec.items()])
            for p, st, sidecars, sig in w.copies:
                _copy_row(cat, fid, p, st, w.digest, _read_md(p, sidecars, mapping, stats), sig)
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
