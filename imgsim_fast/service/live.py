"""The in-memory view of the catalog that readers search: per live file its id, content digest, pixel count,
pHash code with its eight flips/rotations and embedding (search), and dedup's features (the duplicate test).
Loaded once from the catalog at start; the writer appends to it after each commit and marks deleted files,
so readers never open the database to rank.

Duplicates are `imgsim dedup`'s pair test on dedup's own features (catalog/dedup_features.py, which the
writer stores for every file it adds): the border-trimmed dihedral pHash, the two embedded views in the
learned space (jobs/dedup.learned_space), and the pixel check on the 128 px thumbnails, read from the
catalog's thumbnail array on demand (16 KiB a file stays on disk, not in memory). A file indexed without
dedup's features (by `imgsim index`, or a server before this one) takes no part in the pair test (a
byte-identical copy of it is still found, by digest) until it is added again, when the writer stores what it
lacks; `missing_dedup` counts those files.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from imgsim_fast.catalog import dedup_features as dedup_arrays
from imgsim_fast.features.extract import THUMB_SIDE, Features, FileFacts
from imgsim_fast.jobs.dedup import learned_space
from imgsim_fast.jobs.dedup.detect import DEFAULTS, Match, PairJudge, candidate_pairs, check_key_prefix
from imgsim_fast.jobs.dedup.grouping import group_pairs
from imgsim_fast.jobs.dedup.keep import DEFAULT_ORDER, FactTable, keep_ranks, verdict_key_prefix

__all__ = ["LiveIndex", "Near"]

# A query's candidates by embedding score, at most (the best-scoring): a collection holding thousands of
# copies of one picture is judged on the closest ones.
MAX_VIEW_CANDIDATES = 1024


@dataclass
class Near:
    file_id: int
    match: Match


class _Thumbs:
    """Thumbnails of some live rows (and optionally one more, the query's) as PairJudge reads them:
    `shape`, and one (side, side) picture per integer index, taken from the mapped catalog array when asked."""

    def __init__(self, mapped: np.ndarray, rows: np.ndarray, extra: np.ndarray | None = None):
        self.mapped, self.rows, self.extra = mapped, rows, extra
        self.shape = (len(rows) + (extra is not None), THUMB_SIDE, THUMB_SIDE)

    def __getitem__(self, i) -> np.ndarray:
        i = int(i)
        if i == len(self.rows):
            return self.extra
        return np.asarray(self.mapped[self.rows[i]]).reshape(THUMB_SIDE, THUMB_SIDE)


class LiveIndex:
    def __init__(self, words: int = 1, dim: int | None = None, thresholds=DEFAULTS, dedup_model: str | None = None):
        """dim: the search embedding's width (None: no embedding); dedup_model: the model that embedded dedup's
        views (the service's model, `dim` wide), whose learned space and thresholds the duplicate test uses."""
        self.words, self.dim = words, dim
        self.head, self.t = learned_space(dedup_model, thresholds) if dim else (None, thresholds)
        self.dedup_model = dedup_model if dim else None
        space = self.head.dim if self.head is not None else dim
        self._lock = threading.Lock()
        self.n = 0
        cap = 1024
        self.fids = np.zeros(cap, np.int64)
        self.pixels = np.zeros(cap, np.int64)
        self.codes = np.zeros((cap, words), np.uint64)
        self.codes8 = np.zeros((cap, 8, words), np.uint64)
        self.emb = np.zeros((cap, dim), np.float32) if dim else None
        self.alive = np.zeros(cap, bool)
        # dedup's features: trimmed codes, the thumbnail's row in the catalog array (-1: none), the two views
        # (projected into the learned space where it applies; zero rows: not embedded).
        self.dcodes = np.zeros((cap, 8, 1), np.uint64)
        self.dident = np.zeros((cap, 1), np.uint64)  # dcodes[:, 0], contiguous for the radius scan
        self.thumb_row = np.full(cap, -1, np.int64)
        self.dviews = np.zeros((cap, 2, space), np.float32) if dim else None
        # Each row's page score (embedding/pages.py, from the raw whole view: the projection loses it); 1 where
        # none is known, which lifts nothing.
        self.dpage = np.ones(cap, np.float32)
        self.digests: list[str] = []
        # Each row's file, for the pair test's detail check (it decodes both files of a pair whose thumbnails
        # pass); "" where none is known. Only appended to, like digests.
        self.paths: list[str] = []
        self.row_of: dict[int, int] = {}
        self.generation = 0
        self._groups = None
        self.thumb_file: str | None = None
        self._mapped = np.zeros((0, THUMB_SIDE * THUMB_SIDE), np.uint8)
        self.checks: dict = {}
        self.verdicts: dict = {}  # keep-best's looks at full-size pixels (keep.derived_from), by contents
        # Both are read from the catalog at load; after a grouping, on_looks(checks, verdicts) is called with
        # what was added since the last call (by queries and groupings; the service hands them to its
        # writer, which adds them to the catalog's), so a restart checks no pair again. Both dicts are only
        # ever added to, in order: `_handed` counts the entries handed over (or read at load).
        self.on_looks = None
        self._handed = (0, 0)
        self._groups_lock = threading.Lock()

    # -------------------------------------------------------------------------------------------
    # Writer side

    def _grow(self, need: int) -> None:
        cap = len(self.fids)
        if need <= cap:
            return
        new = max(need, 2 * cap)

        def grown(a, fill=0):
            b = np.full((new,) + a.shape[1:], fill, a.dtype)
            b[:self.n] = a[:self.n]
            return b

        # Readers holding the old arrays keep them (numpy keeps them alive): nothing is moved under them.
        self.fids, self.pixels, self.codes, self.codes8, self.alive, self.dcodes, self.dident = (
            grown(self.fids), grown(self.pixels), grown(self.codes), grown(self.codes8), grown(self.alive),
            grown(self.dcodes), grown(self.dident))
        self.thumb_row = grown(self.thumb_row, -1)
        self.dpage = grown(self.dpage, 1)
        if self.emb is not None:
            self.emb, self.dviews = grown(self.emb), grown(self.dviews)

    def _project(self, views: np.ndarray) -> np.ndarray:
        """(m, 2, dim) raw views -> the learned space where it applies; zero rows stay zero."""
        if self.head is None:
            return views
        flat = views.reshape(-1, views.shape[-1])
        out = self.head.project(flat)
        out[~np.abs(flat).any(axis=1)] = 0
        return out.reshape(len(views), 2, -1)

    def _pages(self, views: np.ndarray) -> np.ndarray:
        """(m, 2, dim) raw views -> the page scores of their whole views, where dedup has them: in the learned
        space (siamese.learned_features), and only for the probe's backbone; 1 elsewhere."""
        from imgsim_fast.features.embedding.pages import page_scores

        got = page_scores(views[:, 0], self.dedup_model) if self.head is not None else None
        return np.ones(len(views), np.float32) if got is None else got

    def add(self, fids, digests, pixels, codes8, emb=None, dedup=None, paths=None) -> None:
        """Append files (rows aligned). codes8 (m, 8, words); emb (m, dim) with zero rows for files lacking one;
        dedup: (trimmed codes (m, 8, 1), thumbnail rows in the catalog array (m,), -1 for none, raw views
        (m, 2, dim) or None), or None for files without dedup's features; paths: the files (None: unknown)."""
        m = len(fids)
        if not m:
            return
        views = pages = None
        if dedup is not None and dedup[2] is not None and self.dviews is not None:
            raw = np.asarray(dedup[2], np.float32)
            views, pages = self._project(raw), self._pages(raw)
        with self._lock:
            self._grow(self.n + m)
            s, e = self.n, self.n + m
            self.fids[s:e] = fids
            self.pixels[s:e] = pixels
            self.codes8[s:e] = codes8
            self.codes[s:e] = np.asarray(codes8)[:, 0, :]
            if self.emb is not None and emb is not None:
                self.emb[s:e] = emb
            if dedup is not None:
                self.dcodes[s:e] = dedup[0]
                self.dident[s:e] = np.asarray(dedup[0])[:, 0, :]
                self.thumb_row[s:e] = dedup[1]
                if views is not None:
                    self.dviews[s:e] = views
                    self.dpage[s:e] = pages
            self.alive[s:e] = True
            self.paths.extend(paths if paths is not None else [""] * m)
            self.digests.extend(digests)
            for i, f in enumerate(fids):
                old = self.row_of.get(int(f))
                if old is not None:
                    self.alive[old] = False
                self.row_of[int(f)] = s + i
            self.n = e  # published last: a reader sees whole rows only
            self.generation += 1

    def remove(self, fid: int) -> None:
        with self._lock:
            row = self.row_of.pop(int(fid), None)
            if row is not None:
                self.alive[row] = False
                self.generation += 1

    def load(self, cat, hash_array: str, dihedral_array: str, embed_array: str | None) -> None:
        """Every file of the catalog with the service's hash codes (and their flips and embedding, if stored)."""
        arrays = cat.arrays()
        if hash_array not in arrays:
            return
        with cat.snapshot():
            info = {fid: (d, px, p) for fid, d, px, p in cat.conn.execute(
                "SELECT id, digest, coalesce(width * height, 0), path FROM files WHERE error IS NULL")}
            fids, _, codes = cat.vectors(hash_array)
            keep = np.array([int(f) in info for f in fids], bool)
            fids, codes = fids[keep], codes[keep]
            codes8 = np.repeat(codes[:, None, :], 8, axis=1)  # no flip evidence unless stored
            if dihedral_array in arrays:
                f8, _, d8 = cat.vectors(dihedral_array)
                pos = {int(f): i for i, f in enumerate(fids)}
                for f, row in zip(f8, d8.reshape(len(f8), 8, self.words)):
                    if int(f) in pos:
                        codes8[pos[int(f)]] = row
            emb = None
            if self.emb is not None and embed_array and embed_array in arrays:
                fe, _, ev = cat.vectors(embed_array)
                emb = np.zeros((len(fids), self.dim), np.float32)
                pos = {int(f): i for i, f in enumerate(fids)}
                for f, v in zip(fe, ev):
                    if int(f) in pos and len(v) == self.dim:
                        emb[pos[int(f)]] = v
            dedup = self._load_dedup(cat, fids, arrays)
        self.add(fids, [info[int(f)][0] for f in fids], [info[int(f)][1] for f in fids], codes8, emb, dedup,
                 [info[int(f)][2] for f in fids])

    def _load_dedup(self, cat, fids: np.ndarray, arrays: dict):
        """dedup's features of the files `fids` (see add), from the catalog, inside the caller's snapshot; a
        file without them gets thumbnail row -1 (it takes no part in the duplicate test)."""
        if dedup_arrays.THUMBS not in arrays or dedup_arrays.PHASH8 not in arrays:
            return None
        self.thumb_file = cat.array_file(dedup_arrays.THUMBS)
        # The pixel checks and keep-best verdicts made so far, by contents (PairJudge.checks, keep.derived_from):
        # a regrouping or a repeated upload looks at no pair twice. All of them, as `imgsim dedup --catalog`
        # holds them: about 300 bytes a checked pair in memory (a group rests on about 1.5 checks a file).
        self.checks = dedup_arrays.stored_checks(cat, check_key_prefix())
        self.verdicts = dedup_arrays.stored_verdicts(cat, verdict_key_prefix())
        self._handed = (len(self.checks), len(self.verdicts))
        pos = {int(f): i for i, f in enumerate(fids)}
        m = len(fids)
        dcodes = np.zeros((m, 8, 1), np.uint64)
        has = np.zeros(m, bool)
        f8, _, d8 = cat.vectors(dedup_arrays.PHASH8, fids)
        for f, row in zip(f8, d8):
            dcodes[pos[int(f)], :, 0] = row
            has[pos[int(f)]] = True
        # The thumbnails' rows only: their pixels stay in the array file until a check reads them.
        thumb = np.full(m, -1, np.int64)
        for f, row in cat.conn.execute("SELECT file_id, row FROM vectors WHERE array = ?", (dedup_arrays.THUMBS,)):
            if int(f) in pos:
                thumb[pos[int(f)]] = row
        views = None
        if self.dviews is not None:
            views = np.zeros((m, 2, self.dim), np.float32)
            names = dedup_arrays.model_arrays(self.dedup_model)
            embedded = np.ones(m, bool)
            for k, name in enumerate(names):
                seen = np.zeros(m, bool)
                if name in arrays:
                    fe, _, ev = cat.vectors(name, fids)
                    for f, v in zip(fe, ev):
                        views[pos[int(f)], k] = v
                        seen[pos[int(f)]] = True
                embedded &= seen
            # A file indexed without this model's views would be judged on hashes alone: not dedup's test.
            has &= embedded
        thumb[~has] = -1
        return dcodes, thumb, views

    # -------------------------------------------------------------------------------------------
    # Reader side

    def _view(self):
        with self._lock:
            n = self.n
            # The digest list itself, not a copy (10^6 strings cost ~10 ms a request): it is only appended to,
            # and readers index rows below n.
            return (n, self.fids[:n], self.codes[:n], self.codes8[:n], None if self.emb is None else self.emb[:n],
                    self.alive[:n], self.digests, self.pixels[:n])

    def __len__(self) -> int:
        return len(self.row_of)

    @property
    def missing_dedup(self) -> int:
        """Live files without dedup's features: the duplicate test leaves them out."""
        n, _, _, _, _, alive, _, _ = self._view()
        return int((alive & (self.thumb_row[:n] < 0)).sum())

    def _thumbs(self, rows: np.ndarray) -> np.ndarray:
        """The catalog's thumbnail array mapped far enough to read `rows` (committed before they were added
        here). Mapped again only when it has grown past the last mapping."""
        need = int(rows.max()) + 1 if len(rows) else 0
        with self._lock:
            if need > len(self._mapped):
                self._mapped = np.memmap(self.thumb_file, dtype=np.uint8, mode="r",
                                         shape=(max(need, len(self._mapped)), THUMB_SIDE * THUMB_SIDE))
            return self._mapped

    def _judge(self, rows: np.ndarray, digests: list[str], query=None, qviews: np.ndarray | None = None,
               qpath: str = "", qpage: float = 1.0) -> PairJudge:
        """dedup's pair test over the live rows `rows` (and the query last, with its views already in the
        test's space, its page score qpage, its file at qpath): its codes, views, page scores, thumbnails and
        files, in the space and at the thresholds `imgsim dedup` uses."""
        paths = self.paths
        facts = [_facts(digests[i], paths[i]) for i in rows]
        codes = self.dcodes[rows]
        views = None if self.dviews is None else self.dviews[rows]
        pages = self.dpage[rows]
        extra = None
        if query is not None:
            facts.append(_facts(query.digest, qpath))
            codes = np.concatenate([codes, query.dedup_codes8[None]])
            pages = np.append(pages, np.float32(qpage))
            extra = query.thumb
            if views is not None:
                views = np.concatenate([views, np.zeros((1,) + views.shape[1:], np.float32) if qviews is None
                                        else qviews[None]])
        thumbs = _Thumbs(self._thumbs(self.thumb_row[rows]), self.thumb_row[rows], extra)
        emb = centre = None
        if views is not None and np.abs(views).any(axis=2).all():
            emb, centre = np.ascontiguousarray(views[:, 0]), np.ascontiguousarray(views[:, 1])
        return PairJudge(Features(facts, codes, emb, model=self.dedup_model, centre_embeddings=centre,
                                  thumbs=thumbs, page_scores=pages), "auto", self.t, checks=self.checks)

    def near(self, query, exclude: int | None = None, qpath: str | None = None) -> list[Near]:
        """Files of the collection the pair test calls duplicates or look-alikes of the picture `query`
        (service/ingest.Extracted, its dedup views embedded), duplicates first, each with its Match."""
        from imgsim_fast.indexes.hamming import hamming_radius

        n, fids, codes, _, _, alive, digests, _ = self._view()
        if n == 0:
            return []
        t = self.t
        mine = alive & ((fids != exclude) if exclude is not None else True)
        ok = mine & (self.thumb_row[:n] >= 0)
        # The candidates of candidate_pairs: the query's codes against every file's identity code
        # (d(stored, query variant k): what PairJudge.distances(candidate, query) compares) ...
        r = max(t.phash, t.similar_phash, t.dihedral)
        lims, ids, dist = hamming_radius(np.ascontiguousarray(query.dedup_codes8, np.uint64), self.dident[:n], r)
        ident = ids[:lims[1]][dist[:lims[1]] <= max(t.phash, t.similar_phash)]
        flips = ids[lims[1]:][dist[lims[1]:] <= t.dihedral]
        # ... and the other way round (the test takes the flip evidence either way): the query's identity
        # code against every file's variants ...
        _, back, _ = hamming_radius(np.ascontiguousarray(query.dedup_codes8[:1], np.uint64),
                                    np.ascontiguousarray(self.dcodes[:n].reshape(n * 8, 1)), t.dihedral)
        cand = set(ident.tolist()) | set(flips.tolist()) | set((back // 8).tolist())
        q, qpage = None, 1.0
        if self.dviews is not None and query.dedup_vectors is not None:
            # ... and every file whose views score what the test could accept (PairJudge.cosines' crosswise
            # rule). Not only the query's nearest `knn`: candidate_pairs also takes a file whose own nearest
            # hold the query, which one query cannot know, so all of them, up to MAX_VIEW_CANDIDATES.
            raw = np.asarray(query.dedup_vectors, np.float32)[None]
            q, qpage = self._project(raw)[0], float(self._pages(raw)[0])
            v = self.dviews[:n]
            score = np.maximum(v[:, 0] @ q[0], np.maximum(v[:, 0] @ q[1], v[:, 1] @ q[0]) - t.centre_discount)
            score[~ok] = -np.inf
            near_rows = np.flatnonzero(score >= min(t.similar_cos, t.confirm_cos))
            if len(near_rows) > MAX_VIEW_CANDIDATES:
                near_rows = near_rows[np.argpartition(-score[near_rows], MAX_VIEW_CANDIDATES)[:MAX_VIEW_CANDIDATES]]
            cand.update(near_rows.tolist())
        cand = np.array(sorted(i for i in cand if ok[i]), np.int64)
        out = []
        if len(cand):
            # The query's file for the detail check: qpath where the caller just stored it (the upload it was
            # read from has been moved into the store), else the file it was read from.
            judge = self._judge(cand, digests, query, q, query.dedup[0].path if qpath is None else qpath, qpage)
            m = len(cand)
            # One vectorised test of every (candidate, query) pair: the pairs with a rule, in candidate order.
            d = judge.decide(np.arange(m, dtype=np.int64), np.full(m, m, np.int64))
            out = [Near(int(fids[cand[k]]), mt) for k, mt in zip(d.i.tolist(), d.matches(np.arange(len(d.i))))]
        # Byte-identical files need no features: those indexed without dedup's (by `imgsim index`) are still
        # found by their digest, among the files whose plain code is the query's.
        _, same, _ = hamming_radius(np.ascontiguousarray(query.codes8[:1], np.uint64), codes, 0)
        seen = set(cand.tolist())
        for i in same.tolist():
            if mine[i] and i not in seen and digests[i] == query.digest:
                out.append(Near(int(fids[i]), Match("exact", 0, 0, "none", None)))
        out.sort(key=lambda x: (not x.match.duplicate, x.match.phash, -(x.match.cos or 0), x.file_id))
        return out

    def rank(self, *, code: np.ndarray | None = None, vector: np.ndarray | None = None, k: int = 20,
             allowed: np.ndarray | None = None, exclude: int | None = None) -> list[tuple[int, float, int | None]]:
        """Top k live files: (file id, score, hamming distance or None). By embedding cosine when `vector`
        is given, else by Hamming distance of `code` (score 1 - d / bits). `allowed`: file ids passing a filter."""
        from imgsim_fast.indexes.hamming import hamming_distance

        from imgsim_fast.indexes.hamming import hamming_topk

        n, fids, codes, _, emb_db, alive, _, _ = self._view()
        if n == 0 or k < 1:
            return []
        dead = n - len(self.row_of)
        if vector is None and allowed is None and dead <= 4096:
            # No filter: the SIMD top-k over every row, over-fetched by the dead rows and the excluded one.
            kk = min(n, k + 1 + dead)
            idx, dd = hamming_topk(np.ascontiguousarray(code, np.uint64).reshape(1, -1), codes, kk)
            out = [(int(fids[i]), int(d)) for i, d in zip(idx[0], dd[0])
                   if i >= 0 and alive[i] and fids[i] != exclude]
            bits = 64 * self.words
            return [(f, round(1.0 - d / bits, 6), d) for f, d in out[:k]]
        ok = alive.copy()
        if allowed is not None:
            ok &= np.isin(fids, allowed)
        if exclude is not None:
            ok &= fids != exclude
        if vector is not None:
            if emb_db is None:
                return []
            score = (emb_db @ vector).astype(np.float64)
            ok &= np.abs(emb_db).sum(axis=1) > 0  # files without an embedding are not ranked by one
            key = -score
        else:
            d = hamming_distance(np.ascontiguousarray(code, np.uint64).reshape(-1), codes).astype(np.int64)
            key = d.astype(np.float64)
        rows = np.flatnonzero(ok)
        if not len(rows):
            return []
        kk = min(k, len(rows))
        part = rows[np.argpartition(key[rows], kk - 1)[:kk]] if kk < len(rows) else rows
        part = part[np.lexsort((fids[part], key[part]))]
        bits = 64 * self.words
        if vector is not None:
            return [(int(fids[i]), round(float(score[i]), 6), None) for i in part]
        return [(int(fids[i]), round(1.0 - key[i] / bits, 6), int(key[i])) for i in part]

    def groups(self, facts_of=None):
        """Duplicate and look-alike groups of the whole collection (grouping.group_pairs: stars around a keeper),
        as lists of (file id, Match). Cached until the collection changes.

        facts_of: file ids -> their FileFacts (catalog/dedup_features.stored_facts), so the keeper is the
        file `imgsim dedup` keeps (keep.keep_ranks, looking at full-size pixels where the facts leave a
        doubt); None: the largest picture, then the first added."""
        # One grouping at a time: a second caller waits for it and takes its result rather than doing the
        # same pixel checks again (on a large collection the first grouping can outlast a request).
        with self._groups_lock:
            gen = self.generation
            cached = self._groups
            if cached is not None and cached[0] == gen:
                return cached[1]
            out = self._grouped(facts_of)
            self._groups = (gen, out)
            hc, hv = self._handed
            if self.on_looks is not None and (len(self.checks) > hc or len(self.verdicts) > hv):
                # Copied in one step each (queries on other threads may add meanwhile), then the new tail.
                checks, verdicts = self.checks.copy(), self.verdicts.copy()
                self.on_looks(dedup_arrays.added(checks, hc), dedup_arrays.added(verdicts, hv))
                self._handed = (len(checks), len(verdicts))
            return out

    def _grouped(self, facts_of) -> list:
        n, fids, _, _, _, alive, digests, pixels = self._view()
        rows = np.flatnonzero(alive & (self.thumb_row[:n] >= 0))
        out = []
        if len(rows) >= 2:
            judge = self._judge(rows, digests)
            px, ids = pixels[rows], fids[rows]
            if facts_of is None:
                def ranker(members):
                    return {x: (-int(px[x]), int(ids[x])) for x in members}
            else:
                known = facts_of(ids)
                table = FactTable([known.get(int(f)) or _facts(digests[r]) for f, r in zip(ids, rows)])

                def ranker(members):
                    return keep_ranks(table, members, DEFAULT_ORDER, inspect=True, verdicts=self.verdicts)

            for g in group_pairs(len(rows), candidate_pairs(judge), judge, ranker):
                out.append((g.tier, [(int(ids[x]), m) for x, m in zip(g.members, g.matches)]))
        return out


def _facts(digest: str, path: str = "") -> FileFacts:
    """The pair test reads only the digest of a file's facts (the exact rule) and its path (the detail
    check)."""
    return FileFacts(path, 0, 0.0, 0, 0, "", 0, digest or "")
