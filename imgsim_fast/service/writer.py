"""The single writer in front of the catalog: one thread owns the write connection and commits queued adds
and deletes in batches, one transaction per batch.

A request is answered only after the transaction holding its row committed (the catalog's arrays are
fsynced before the commit, the database runs synchronous=FULL, and an uploaded file is fsynced and renamed
into the store, its folder fsynced, before the row pointing at it commits), so a kill -9 loses no
acknowledged image. Batching amortises the fsyncs over the uploads that arrive together; a batch that
fails is retried one job at a time, so one bad job fails alone.
"""
from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from imgsim_fast.catalog import dedup_features as dedup_arrays
from imgsim_fast.catalog.indexer import _insert_file  # the indexer's row writer: one definition of a file row
from imgsim_fast.catalog.store import Catalog, embedding_array_name
from imgsim_fast.io.atomic_write import fsync_dir
from imgsim_fast.jobs.dedup.detect import check_key_prefix
from imgsim_fast.jobs.dedup.keep import verdict_key_prefix
from imgsim_fast.service.ingest import DIHEDRAL_ARRAY, HASH_ARRAY, HASH_KIND, HASH_MODE, HASH_SIZE, Extracted

__all__ = ["AddJob", "DeleteJob", "LooksJob", "Writer", "stored_path"]


@dataclass
class AddJob:
    tmp: str                        # the bytes, fsynced; moved into the store (uploads) or removed (paths)
    features: Extracted
    vector: np.ndarray | None
    source_path: str | None = None  # a server-side file: the row points at it, nothing is copied
    ext: str = ""


@dataclass
class DeleteJob:
    file_id: int


@dataclass
class LooksJob:
    """The live index's pixel checks and keep-best verdicts, kept in the catalog as `imgsim dedup --catalog`
    keeps them, so a restart groups without looking at any pair again."""
    checks: dict
    verdicts: dict


def stored_path(storage: str, digest: str, ext: str) -> str:
    """Uploads are stored by content: <storage>/<2 hex>/<digest><ext>."""
    return os.path.join(storage, digest[:2], digest + ext)


class Writer:
    def __init__(self, catalog: str, storage: str, live, *, model_name: str | None, dim: int | None,
                 max_batch: int = 64, metrics=None):
        self.storage = storage
        self.live = live
        self.max_batch = max_batch
        self.metrics = metrics
        self.cat = Catalog(catalog, write=True)
        try:
            damage = self.cat.verify()
            if damage:
                from imgsim_fast.catalog.store import CatalogDamaged

                raise CatalogDamaged(f"the catalog {self.cat.path} is damaged ({damage[0].array}: {damage[0].reason}); "
                                     f"run `{self.cat.repair_command()}`", damage)
            self.cat.declare_batch_rows(max_batch)
            self.cat.ensure_array(HASH_ARRAY, np.uint64, 1, {"kind": HASH_KIND, "hash_size": HASH_SIZE, "mode": HASH_MODE})
            self.cat.ensure_array(DIHEDRAL_ARRAY, np.uint64, 8, {"dihedral_of": HASH_ARRAY})
            self.embed_array = embedding_array_name(model_name) if model_name else None
            if self.embed_array:
                self.cat.ensure_array(self.embed_array, np.float32, dim, {"model": model_name})
            # dedup's features, as `imgsim dedup --catalog` keeps them: the live index's duplicate test reads them.
            dedup_names = dedup_arrays.ensure_arrays(self.cat, model_name, dim)
            self.view_arrays = dedup_arrays.model_arrays(model_name) if model_name else None
            # An earlier version's dedup features and looks: nothing of this version reads them.
            dedup_arrays.drop_stale_arrays(self.cat)
            with self.cat.transaction():
                dedup_arrays.drop_stale_looks(self.cat, check_key_prefix(), verdict_key_prefix())
            # What this server keeps for every file it adds.
            self.arrays = [HASH_ARRAY, DIHEDRAL_ARRAY] + ([self.embed_array] if self.embed_array else []) + dedup_names
        except BaseException:
            self.cat.close()
            raise
        self._q: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="imgsim-writer", daemon=True)
        self._thread.start()

    def submit(self, job) -> Future:
        fut: Future = Future()
        self._q.put((job, fut))
        return fut

    def alive(self) -> bool:
        return self._thread.is_alive()

    def depth(self) -> int:
        return self._q.qsize()

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=30)
        self.cat.close()

    # -------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)
                    break
                batch.append(nxt)
            self._commit(batch)

    def _commit(self, batch) -> None:
        try:
            # live: the batch's changes to the live index, in the order the jobs made them (a file removed and
            # an id reused, or a file added again and then changed, within one batch).
            done, live, unlink = [], [], []
            with self.cat.transaction():
                for job, _ in batch:
                    done.append(self._apply(job, live, unlink))
        except Exception as e:
            if len(batch) > 1:
                for one in batch:
                    self._commit([one])
                return
            batch[0][1].set_exception(e)
            return
        k = 0
        while k < len(live):
            if live[k][0] == "remove":
                self.live.remove(live[k][1])
                k += 1
                continue
            run = []
            while k < len(live) and live[k][0] == "add":
                run.append(live[k][1])
                k += 1
            self._live_add(run)
        for p in unlink:
            # A later job of the batch may have stored the same bytes again, at the same path.
            if self.cat.conn.execute("SELECT 1 FROM files WHERE path = ?", (p,)).fetchone() is not None:
                continue
            try:
                os.unlink(p)
            except OSError:
                pass  # already gone: the row is what counted
        if self.metrics is not None:
            self.metrics.batch(len(batch))
        for (job, fut), result in zip(batch, done):
            if isinstance(job, AddJob) and job.source_path is not None:
                _remove_quietly(job.tmp)
            fut.set_result(result)

    def _live_add(self, adds: list[tuple]) -> None:
        fids, digests, pixels, codes8, vecs, dcodes8, thumb_rows, views, paths = zip(*adds)
        emb = dviews = None
        if self.live.emb is not None:
            emb = np.stack([np.zeros(self.live.dim, np.float32) if v is None else v for v in vecs])
            dviews = np.stack([np.zeros((2, self.live.dim), np.float32) if v is None else v for v in views])
        self.live.add(np.array(fids, np.int64), list(digests), list(pixels), np.stack(codes8), emb,
                      dedup=(np.stack(dcodes8), np.array(thumb_rows, np.int64), dviews), paths=list(paths))

    def _apply(self, job, live, unlink):
        conn = self.cat.conn
        if isinstance(job, LooksJob):
            # The looks one grouping added, beside what the catalog holds (an `imgsim dedup --catalog` run may
            # have stored others since).
            dedup_arrays.store_checks(self.cat, job.checks)
            dedup_arrays.store_verdicts(self.cat, job.verdicts)
            return True
        if isinstance(job, DeleteJob):
            row = conn.execute("SELECT path FROM files WHERE id = ?", (job.file_id,)).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM files WHERE id = ?", (job.file_id,))
            live.append(("remove", job.file_id))
            path = row[0]
            if path.startswith(self.storage + os.sep) and conn.execute(
                    "SELECT 1 FROM files WHERE path = ?", (path,)).fetchone() is None:
                unlink.append(path)
            return True
        f = job.features
        if job.source_path is None:
            path = stored_path(self.storage, f.digest, job.ext)
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.replace(job.tmp, path)
                fsync_dir(os.path.dirname(path))
            else:
                _remove_quietly(job.tmp)
            st = os.stat(path)
        else:
            path = job.source_path
            st = f.st
        old = conn.execute("SELECT id, digest, error FROM files WHERE path = ?", (path,)).fetchone()
        if old is not None:
            if old[1] == f.digest and old[2] is None:
                # Known already. A file indexed without what this server keeps (by `imgsim index`: no dedup
                # features, no embedding of this model) gets the missing arrays now, so adding it again is how
                # it joins the duplicate test.
                have = {a for (a,) in conn.execute("SELECT array FROM vectors WHERE file_id = ?", (old[0],))}
                if not set(self.arrays) <= have:
                    live.append(("add", self._append_rows(old[0], f, job, have, path)))
                return old[0], False, path
            # A server-side file changed since, or one the indexer could not read (its row holds the error):
            # this read succeeded, so a fresh row replaces the old one.
            conn.execute("DELETE FROM files WHERE id = ?", (old[0],))
            live.append(("remove", old[0]))
        fid = _insert_file(self.cat, path, st, f.digest, f.metadata, "")
        live.append(("add", self._append_rows(fid, f, job, set(), path)))
        return fid, True, path

    def _append_rows(self, fid: int, f: Extracted, job: AddJob, have: set, path: str) -> tuple:
        """Append file `fid`'s rows of the arrays it lacks (all but `have`); what the live index adds for it."""
        data = {HASH_ARRAY: f.codes8[:1], DIHEDRAL_ARRAY: f.codes8.reshape(1, -1)}
        if self.embed_array and job.vector is not None:
            data[self.embed_array] = job.vector[None]
        data.update(f.dedup_rows)
        if self.view_arrays and f.dedup_vectors is not None:
            data.update({name: f.dedup_vectors[k:k + 1] for k, name in enumerate(self.view_arrays)})
        rows = [(fid, name, self.cat.append(name, x)) for name, x in data.items() if name not in have]
        self.cat.conn.executemany("INSERT INTO vectors(file_id, array, row) VALUES (?, ?, ?)", rows)
        thumb_row = next((r for _, name, r in rows if name == dedup_arrays.THUMBS), None)
        if thumb_row is None:  # kept before (the views were what lacked)
            thumb_row = self.cat.conn.execute("SELECT row FROM vectors WHERE file_id = ? AND array = ?",
                                              (fid, dedup_arrays.THUMBS)).fetchone()[0]
        md = f.metadata
        return (fid, f.digest, (md.width or 0) * (md.height or 0), f.codes8, job.vector,
                f.dedup_codes8, thumb_row, f.dedup_vectors, path)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
