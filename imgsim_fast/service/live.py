"""The in-memory view of the catalog that readers search: per live file its id, content digest, pixel count,
pHash code with its eight flips/rotations, and embedding. Loaded once from the catalog at start; the writer
appends to it after each commit and marks deleted files, so readers never open the database to rank.

Duplicates are decided by the project's one pair test (jobs/dedup/detect.py: PairJudge over DEFAULTS, method
auto): candidates within the hash radius or the embedding's reach are judged with the query as one Features
set. What the catalog does not keep yet (issue 12 moves dedup's features into it): border-trimmed codes, the
centre-crop view and the thumbnails of the pixel check; the test runs on the evidence present (the
pixel check is skipped without thumbnails, as detect.PairJudge does).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from imgsim_fast.features.extract import Features, FileFacts
from imgsim_fast.jobs.dedup.detect import DEFAULTS, Match, PairJudge, candidate_pairs
from imgsim_fast.jobs.dedup.grouping import group_pairs

__all__ = ["LiveIndex", "Near"]


@dataclass
class Near:
    file_id: int
    match: Match


class LiveIndex:
    def __init__(self, words: int = 1, dim: int | None = None, thresholds=DEFAULTS):
        self.words, self.dim, self.t = words, dim, thresholds
        self._lock = threading.Lock()
        self.n = 0
        cap = 1024
        self.fids = np.zeros(cap, np.int64)
        self.pixels = np.zeros(cap, np.int64)
        self.codes = np.zeros((cap, words), np.uint64)
        self.codes8 = np.zeros((cap, 8, words), np.uint64)
        self.emb = np.zeros((cap, dim), np.float32) if dim else None
        self.alive = np.zeros(cap, bool)
        self.digests: list[str] = []
        self.row_of: dict[int, int] = {}
        self.generation = 0
        self._groups = None

    # -------------------------------------------------------------------------------------------
    # Writer side

    def _grow(self, need: int) -> None:
        cap = len(self.fids)
        if need <= cap:
            return
        new = max(need, 2 * cap)

        def grown(a):
            b = np.zeros((new,) + a.shape[1:], a.dtype)
            b[:self.n] = a[:self.n]
            return b

        # Readers holding the old arrays keep them (numpy keeps them alive): nothing is moved under them.
        self.fids, self.pixels, self.codes, self.codes8, self.alive = (
            grown(self.fids), grown(self.pixels), grown(self.codes), grown(self.codes8), grown(self.alive))
        if self.emb is not None:
            self.emb = grown(self.emb)

    def add(self, fids, digests, pixels, codes8, emb=None) -> None:
        """Append files (rows aligned). codes8 (m, 8, words); emb (m, dim) with zero rows for files lacking one."""
        m = len(fids)
        if not m:
            return
        with self._lock:
            self._grow(self.n + m)
            s, e = self.n, self.n + m
            self.fids[s:e] = fids
            self.pixels[s:e] = pixels
            self.codes8[s:e] = codes8
            self.codes[s:e] = np.asarray(codes8)[:, 0, :]
            if self.emb is not None and emb is not None:
                self.emb[s:e] = emb
            self.alive[s:e] = True
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
            info = {fid: (d, px) for fid, d, px in cat.conn.execute(
                "SELECT id, digest, coalesce(width * height, 0) FROM files WHERE error IS NULL")}
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
        self.add(fids, [info[int(f)][0] for f in fids], [info[int(f)][1] for f in fids], codes8, emb)

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

    def near(self, codes8: np.ndarray, emb: np.ndarray | None, digest: str, exclude: int | None = None) -> list[Near]:
        """Files of the collection the pair test calls duplicates or look-alikes of a picture with these
        features, duplicates first, each with its Match (rule and distances)."""
        from imgsim_fast.indexes.hamming import hamming_radius

        n, fids, codes, codes8_db, emb_db, alive, digests, _ = self._view()
        if n == 0:
            return []
        t = self.t
        # d(stored identity, query variant k): PairJudge.distances(candidate, query) compares exactly these.
        r = max(t.phash, t.similar_phash, t.dihedral)
        lims, ids, dist = hamming_radius(np.ascontiguousarray(codes8, np.uint64), codes, r)
        # Only rows some rule could accept go to the pair test: near the picture itself (identity distance within
        # the look-alike radius), or near one of its flips within the flip radius.
        ident = ids[:lims[1]][dist[:lims[1]] <= max(t.phash, t.similar_phash)]
        flips = ids[lims[1]:][dist[lims[1]:] <= t.dihedral]
        cand = set(ident.tolist()) | set(flips.tolist())
        if emb is not None and emb_db is not None:
            sims = emb_db @ emb
            floor = min(t.similar_cos, t.confirm_cos)
            top = np.argsort(-sims)[:t.knn]
            cand.update(int(i) for i in top if sims[i] >= floor)
        cand = [i for i in sorted(cand) if alive[i] and (exclude is None or fids[i] != exclude)]
        if not cand:
            return []
        m = len(cand)
        facts = [_facts(digests[i]) for i in cand] + [_facts(digest)]
        phash8 = np.concatenate([codes8_db[cand], codes8[None]])
        e = None
        if emb is not None and emb_db is not None:
            e = np.concatenate([emb_db[cand], emb[None]]).astype(np.float32)
        judge = PairJudge(Features(facts, phash8, e), "auto", t)
        out = []
        for k, i in enumerate(cand):
            mt = judge.match(k, m)
            if mt.duplicate or mt.similar:
                out.append(Near(int(fids[i]), mt))
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

    def groups(self):
        """Duplicate and look-alike groups of the whole collection (grouping.group_pairs: stars around a keeper,
        the larger picture kept), as lists of (file id, Match). Cached until the collection changes."""
        gen = self.generation
        cached = self._groups
        if cached is not None and cached[0] == gen:
            return cached[1]
        n, fids, _, codes8, emb_db, alive, digests, pixels = self._view()
        rows = np.flatnonzero(alive)
        out = []
        if len(rows) >= 2:
            facts = [_facts(digests[i]) for i in rows]
            e = None if emb_db is None else np.ascontiguousarray(emb_db[rows])
            if e is not None and not np.abs(e).sum(axis=1).all():
                e = None  # files indexed without this model: the kNN index needs a vector for every file
            judge = PairJudge(Features(facts, np.ascontiguousarray(codes8[rows]), e), "auto", self.t)
            px, ids = pixels[rows], fids[rows]

            def ranker(members):  # keep the largest picture, then the first added
                return {x: (-int(px[x]), int(ids[x])) for x in members}

            for g in group_pairs(len(rows), candidate_pairs(judge), judge, ranker):
                out.append((g.tier, [(int(ids[x]), m) for x, m in zip(g.members, g.matches)]))
        self._groups = (gen, out)
        return out


def _facts(digest: str) -> FileFacts:
    """The pair test reads only the digest of a file's facts (the exact rule)."""
    return FileFacts("", 0, 0.0, 0, 0, "", 0, digest or "")
