"""Which files are duplicates: candidate pairs (MIH self-join, embedding kNN), one pair test, two tiers of
guarded groups.

Methods:
- exact: byte-identical files (content digest).
- phash: border-trimmed pHash; a pair matches when its codes are within `phash` bits, or one code is within
  `dihedral` bits of one of the 8 flips/rotations of the other (mirrors, 90/180/270 degrees).
- embedding: embedding similarity >= `embed_cos`. A pair's similarity is the larger of whole-whole and, less
  `centre_discount`, whole(i)-centre(j) or centre(i)-whole(j) (features.EMBED_CROP): a cropped copy looks
  like its original's centre. The embeddings are the backbone's, or its projection by the learned head
  (dedup.group_features, embedding/siamese.py), which `auto` uses with its own thresholds.
- auto (default): phash (a pHash match also needing similarity >= `phash_cos`), plus pairs the hashes call
  borderline that the embedding confirms, plus pairs the embedding alone is sure of (crops, heavy edits):
  a pair whose (identity) pHash distance is h <= confirm_phash matches when similarity >= confirm_cos +
  confirm_slope * (h - phash). Exact copies always match, in every method.

Every match but byte identity must then pass the pixel check (verify.compare: the thumbnails aligned by a
shift or an affine warp, at most `changed` of them different beyond the local contrast and at most
`strong` far beyond it, and the detail check's bounds where it applies), or pass the overlay route (text
written over a photo: a caption, a watermark; verify.overlay_measures, Thresholds.overlay_*, and over a
smooth picture only where the CNN calls both files pictures, not pages: embedding/pages.py): hashes and
embeddings see that two pictures look alike, the pixels whether one is a copy of the other.

Tiers: a pair the test accepts is a duplicate (the only tier actions touch); a pair within `similar_phash`
bits, or one the embedding accepted and the pixel check refused while the pictures still line up over most
of their area, is a look-alike ('similar', reported only). Groups are stars around a keeper (grouping.py).

Candidates come from `hash_pairs` (the only all-pairs step over hashes: HammingIndex.self_join) and
`embedding_pairs` (VectorIndex kNN with a score cut); every candidate, and every pair the grouping asks
about, goes through the same test, `PairJudge.match`. Thresholds and the evidence behind them:
DEFAULTS below, dedup.LEARNED, and the README's "Deduplication" section (python -m imgsim_fast.bench accuracy).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from imgsim_fast.indexes.mih import HammingIndex
from imgsim_fast.features.extract import PREP_TAG, THUMB_SIDE, Features
from imgsim_fast.features.hashing import DIHEDRAL
from imgsim_fast.jobs.dedup import detail as detail_check, verify
from imgsim_fast.jobs.dedup.verify import compare

__all__ = ["METHODS", "DUPLICATE_RULES", "Thresholds", "DEFAULTS", "PairJudge", "PairDecisions", "Match",
           "hash_pairs", "embedding_pairs", "candidate_pairs", "check_key_prefix"]

METHODS = ("auto", "phash", "embedding", "exact")
# Variant names in hashing.DIHEDRAL's order; variant 0 is the image itself.
TRANSFORMS = ("none", "rot90", "rot180", "rot270", "mirror-lr", "mirror-tb", "transpose", "anti-transpose")


@dataclass(frozen=True)
class Thresholds:
    """Pair-test thresholds (pHash bits of 64; cosine similarities). See DEFAULTS for the chosen values."""

    phash: int = 10            # identity pHash distance accepted on its own ...
    phash_cos: float = -1.0    # ... when the embedding similarity is at least this (-1: whatever it is)
    dihedral: int = 8          # distance to a flip/rotation accepted on its own
    confirm_phash: int = 28    # largest hash distance an embedding may confirm
    confirm_cos: float = 0.6   # cosine needed at h == phash ...
    confirm_slope: float = 0.015  # ... plus this much per bit beyond it (0.87 at h == 28)
    embed_cos: float = 0.88    # cosine accepted on its own, whatever the hashes say
    centre_discount: float = 0.05  # a whole-vs-centre cosine counts this much less than a whole-whole one
    knn: int = 32              # embedding neighbours examined per file
    similar_phash: int = 18    # the look-alike tier (reported, never acted on): pHash within this ...
    similar_cos: float = 0.80  # ... or embedding cosine at least this
    # The pixel check (verify.compare) of every pair a hash or the embedding accepted: it stays a duplicate
    # only when at most `changed` of the aligned thumbnails differs by more than the local contrast allows
    # (verify.py); otherwise it is a look-alike. Tune half of the accuracy corpus (with 24 dialogs), original
    # against each copy and every look-alike pair within 18 bits: copies change 0 (median), at most 1.34%
    # when they pass (a strongly resized copy, a rotated one), look-alikes at least 1.72% (two slides of one
    # template). Dialogs of one kind change less: see `strong`.
    changed: float = 0.015
    # ... and at most `strong` differs by more than verify.STRONG_K local contrasts: what copying changes is
    # barely over the bound, a look-alike's change is other content. Tune halves of the accuracy corpus
    # (24 dialogs) built with two seeds: copies that pass `changed` at most 0.31% (a half-size chart), the
    # look-alikes closest to passing (slides of one template, a burst) at least 0.48%. Held-out half (15th
    # look): slide look-alikes 10.6 -> 0 false pairs per 1,000 files, recall 0.843 -> 0.833 (text captions,
    # 0.56 -> 0.44). Two dialogs of one kind of one application pass both bounds (0.25-0.6% changed, 0.03-0.3%
    # strongly): the corpus with 72 dialogs shows it, README "Accuracy".
    strong: float = 0.004
    # A pair that passes is compared again at up to 384 px, decoded from the files, where words resolve
    # (detail.py): at most `detail_changed` may differ and `detail_strong` strongly. Tune half with 70 more
    # dialogs: 5 of 596 look-alike pairs passing the thumbnail check pass these, 20 of 890 copies fail.
    detail_changed: float = 0.02
    detail_strong: float = 0.0003
    # A pair the test refuses is a look-alike only when the pictures still line up over most of their area
    # (crops, slides of one template: 1-10% differs); two unrelated photos the embedding happens to score
    # high differ over a third or more, and are no pair at all.
    similar_changed: float = 0.25
    # A pair refused by the bounds above (the thumbnails' or the detail check's) is still a duplicate when what differs
    # is a line of text written over a photo (a caption, a date stamp: verify.overlay_measures): at most
    # `overlay_changed` of the thumbnails (of the whole pictures, where those were compared) differs, on the side of one
    # picture (`overlay_side` of the changed pixels more contrasted there), over a photo that matches elsewhere
    # (`overlay_texture` of it unchanged and textured), in a band (at most `overlay_rows` of the height, and
    # `overlay_wide` times as wide a share of the width), and the embedding calls the two the same picture
    # (`overlay_cos`). The learned similarity guards what pixels cannot tell (a subject that walked into a burst frame:
    # 0.69 at most on the tune half, captioned and watermarked copies 0.77 and up) and the raw cosine does not, so the
    # route is closed (2.0) unless the learned space opens it (dedup.LEARNED). Tune half (34 captioned copies, 34 with a
    # large watermark across the middle, look-alikes with empty burst frames): of the 29 captioned copies the bounds
    # refuse, 19 pass (the rest lie on smooth wallpapers: texture under 0.5); no look-alike pair does. A watermark two
    # lines high is no band (rows 0.24-0.8, as high as the burst frames' animal): it passes as letters, below, or not at
    # all. A band must span `overlay_cols` of the width (captions 0.23-0.67 on the tune half): a small subject that
    # moved a little in a burst is one-sided too, and a blob a few pixels across passes any ratio of its height. A wide
    # low subject that drives into a frame, or a small one that crosses it, would still pass the pixels' tests. Where
    # the two trims differ, the measures are taken on the whole pictures (PairJudge._changed): letters across a smooth
    # margin move the trim. Tune half: 3 more text copies pass (recall 0.964 -> 0.971), no look-alike pair does.
    overlay_changed: float = 0.2
    overlay_side: float = 0.7
    overlay_texture: float = 0.5
    overlay_rows: float = 0.15
    overlay_wide: float = 2.0
    overlay_cols: float = 0.2
    # A watermark across the middle is no band, but its letters are strokes: many short runs of changed
    # pixels (verify.overlay_measures' `strokes`, at least `overlay_strokes`), on one side more surely
    # (`overlay_stroke_side`), over a photo that may be smoother (`overlay_stroke_texture`). Tune half: 20 of
    # the 34 watermarked copies pass where none did (the rest lie on smooth wallpapers, texture under 0.3,
    # or are two-sided), no look-alike pair does. What guards it: dialogs one-sided enough match over flat
    # areas only (texture 0.24 at most); the empty burst frames against the animal's are one-sided
    # (0.88-0.92) and their blob's runs are not all long (strokes 0.47-0.57), so the learned similarity
    # (0.69 at most, against 0.77 for the watermarked copies) is what refuses them, as for the band.
    overlay_strokes: float = 0.5
    overlay_stroke_side: float = 0.85
    overlay_stroke_texture: float = 0.3
    overlay_cos: float = 2.0
    # The texture floors above are what keeps the route off slides and dialogs, where other words over flat
    # areas make another page. Two pictures (both files' page scores under `overlay_page`: embedding/pages.py,
    # the CNN's own verdict on what a file shows) need no floor: over a smooth wallpaper, words are written
    # on it, not what it is. 0.5: the probe's own boundary, more likely a picture than a page. Out-of-fold
    # page scores on the tune half: its pictures 0.47 at most, its pages (screenshots, slides, charts, slide
    # builds) 0.73 at least; chained-edit training copies of pages 0.32 at least (a few, heavily edited). The
    # route then passes 6 more watermarked or captioned wallpapers (texture 0.01-0.22) there, and no look-alike.
    overlay_page: float = 0.5

    def confirm_needed(self, h):
        """Cosine an embedding must reach to confirm a pair whose hashes are h bits apart (h: int or array)."""
        return self.confirm_cos + self.confirm_slope * np.maximum(0, h - self.phash)


# Tuned on the "tune" half of the accuracy corpus and reported on the held-out "test" half (README).
DEFAULTS = Thresholds()


DUPLICATE_RULES = ("exact", "phash", "flip", "confirmed", "embedding")
_TRANSFORM_WORDS = {"rot90": "rotated 90°", "rot180": "rotated 180°", "rot270": "rotated 270°",
                    "mirror-lr": "mirrored", "mirror-tb": "flipped upside down",
                    "transpose": "mirrored and rotated", "anti-transpose": "mirrored and rotated"}


@dataclass(frozen=True)
class Match:
    """Why a pair matched (or not): distances and the rule that fired.

    rule: one of DUPLICATE_RULES (the duplicate tier: the same picture), 'similar' (a look-alike, reported
    for review only), 'keeper' (a group's kept file against itself) or '' (no match).
    """

    rule: str
    phash: int                # identity pHash distance
    dihedral: int             # smallest distance to a flipped/rotated variant of the other file
    transform: str            # which variant gave `dihedral`
    cos: float | None         # embedding cosine similarity, None without embeddings
    changed: float | None = None  # fraction of the aligned thumbnails that differs (the pixel check) ...
    strong: float | None = None   # ... and that differs strongly (verify.STRONG_K)
    detail: tuple[float, float] | None = None  # the detail check's (changed, strong); (0, 0) where it did not apply
    overlay: bool = False     # a duplicate by the overlay route: `changed` is what was drawn over one picture

    @property
    def duplicate(self) -> bool:
        return self.rule in DUPLICATE_RULES

    @property
    def similar(self) -> bool:
        return self.rule == "similar"

    def __bool__(self) -> bool:
        """True for the duplicate tier only: the test every removable file passes against its keeper."""
        return self.duplicate

    def describe(self) -> str:
        """The match in plain words, e.g. 'mirrored copy, 2 bits apart'."""
        words = self._words()
        if self.overlay and self.changed is not None:
            words += f", with text written over {_percent(self.changed)} of it"
        return words

    def _words(self) -> str:
        cos = "" if self.cos is None else f", embedding similarity {self.cos:.2f}"
        if self.rule == "keeper":
            return "kept: the best file of the group"
        if self.rule == "exact":
            return "byte-identical copy"
        if self.rule == "phash":
            return "same picture, " + ("identical hash" if self.phash == 0 else _bits(self.phash) + " apart")
        if self.rule == "flip":
            return f"{_TRANSFORM_WORDS.get(self.transform, self.transform)} copy, {_bits(self.dihedral)} apart"
        if self.rule == "confirmed":
            return f"edited copy: {_bits(self.phash)} apart{cos}"
        if self.rule == "embedding":
            return f"edited or cropped copy{cos}, {_bits(self.phash)} apart"
        if self.rule == "similar":
            # The thumbnails may agree where the detail check, at up to DETAIL_SIDE px, does not (two dialogs of one
            # kind): both figures are named for what they measured, or "0.00% differs; ... 9.5% differs" reads
            # as a contradiction.
            closer = self.detail is not None and any(self.detail)
            what = "of the thumbnails differ" if closer else "of the picture differs"
            diff = "" if self.changed is None else f", {_percent(self.changed)} {what}"
            if self.strong:
                diff += f" ({_percent(self.strong)} strongly)"
            if closer:
                close, strongly = (_percent(x) for x in self.detail)
                diff += f"; compared at up to {detail_check.DETAIL_SIDE} px, {close} differs ({strongly} strongly)"
            return f"look-alike, not a duplicate: {_bits(self.phash)} apart{cos}{diff}"
        return "no match"


def _percent(x: float) -> str:
    """0.04%, 0.4% and 12%: a look-alike may differ by under one percent (the strong counts)."""
    return f"{x:.2%}" if x < 0.001 else f"{x:.1%}" if x < 0.1 else f"{x:.0%}"


def _bits(d: int) -> str:
    return f"{d} bit{'s' if d != 1 else ''}"


KEEPER = Match("keeper", 0, 0, "none", None)


def check_key_prefix() -> str:
    """What the key of every pixel check this version makes starts with (PairJudge.checks): the check's
    version, the thumbnails' side and the preparation's version (extract.PREP_VERSION: the thumbnails are
    of the trimmed picture; keys of version 1 had no such part). A caller loading stored checks reads only
    these: one of an earlier version is never looked up, and need not be held."""
    return f"{verify.VERSION}:{THUMB_SIDE}:{PREP_TAG}:"


class PairJudge:
    """The one pair test of a method over a Features set, with the distances it used."""

    def __init__(self, features: Features, method: str = "auto", thresholds: Thresholds = DEFAULTS,
                 flips: bool = True, checks: dict | None = None):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
        if method == "embedding" and features.embeddings is None:
            raise ValueError("method 'embedding' needs embeddings (compute_features(embed=True))")
        self.f = features
        self.method = method
        self.t = thresholds
        self.flips = flips
        self.digests = [x.digest for x in features.facts]
        # Content digests as numbers, in the digests' sorted order (equal numbers: byte-identical files), so
        # the order of a pair's check (see _changed) depends on the two files' bytes, not on which files were
        # scanned with them: a stored verdict holds for any later run.
        self.digest_ids = (np.unique(np.array(self.digests), return_inverse=True)[1].astype(np.int64).ravel()
                           if self.digests else np.zeros(0, np.int64))
        # The pixel check's results by pair of contents (see _changed); the caller may pass a dict it keeps
        # (find_duplicates with a catalog stores it), so a second run checks no pair twice.
        self.checks = {} if checks is None else checks
        # The detail check reads the files (facts' paths): a file that cannot be read, or no longer holds the
        # content scanned, leaves its pairs judged on their thumbnails alone.
        self.paths = [x.path for x in features.facts]
        self.pictures = detail_check.Pictures()
        n = len(features)
        words = features.phash8.shape[2] if features.phash8.ndim == 3 else 1
        self.codes = np.ascontiguousarray(features.phash8, dtype=np.uint64).reshape(n, 8, words)
        self.emb = features.embeddings
        self.centre = features.centre_embeddings
        self.thumbs = features.thumbs
        self.page_scores = features.page_scores
        if self.page_scores is not None and len(self.page_scores) != n:
            # A subset of rows that kept every row's score would lift the floors for the wrong files.
            raise ValueError(f"{len(self.page_scores)} page scores for {n} files")
        if self.thumbs is not None and self.thumbs.shape[1:] != (THUMB_SIDE, THUMB_SIDE):
            raise ValueError(f"thumbnails of {self.thumbs.shape[1]} px, not {THUMB_SIDE}: features from an older "
                             "version; extract them again")

    def cosine(self, i: int, j: int) -> float | None:
        """Embedding similarity of one pair (see cosines)."""
        c = self.cosines(np.array([i]), np.array([j]))
        return None if c is None else float(c[0])

    def cosines(self, ii: np.ndarray, jj: np.ndarray) -> np.ndarray | None:
        """Embedding similarity of pairs: whole-whole, or whole-centre either way less `centre_discount` if
        higher. Row dot products summed the same way whatever the number of pairs, so a pair scores the same
        alone or among millions.

        The discount: taking the best of three cosines lifts unrelated pairs too. On the tune half the
        closest unrelated pair went from 0.768 (whole-whole) to 0.813 (best of three), while the 99.99th
        percentile of unrelated pairs did not move; 0.05 takes that lift back off the tail.
        """
        if self.emb is None:
            return None
        c = _rowdot(self.emb, ii, self.emb, jj)
        if self.centre is not None:
            x = np.maximum(_rowdot(self.emb, ii, self.centre, jj), _rowdot(self.centre, ii, self.emb, jj))
            c = np.maximum(c, x - np.float32(self.t.centre_discount))
        return c.astype(np.float64)

    def distances(self, i: int, j: int) -> tuple[int, int, int]:
        """(identity distance, smallest flipped/rotated distance, index of that variant) of one pair."""
        d0, dk, k = self._distances(np.array([i]), np.array([j]))
        return int(d0[0]), int(dk[0]), int(k[0])

    def _distances(self, ii: np.ndarray, jj: np.ndarray):
        """Identity distance d(code_i, code_j), and the smallest distance over the 7 flips/rotations k of
        d(code_i, variant_k(code_j)) and d(code_j, variant_k^-1(code_i)), with its k, for arrays of pairs
        (popcounts over the packed words). Both are symmetric in i and j."""
        d = np.bitwise_count(self.codes[ii, :1, :] ^ self.codes[jj]).sum(axis=2, dtype=np.int64)  # (m, 8)
        if not self.flips:
            return d[:, 0], np.full(len(ii), 10**6, np.int64), np.zeros(len(ii), np.int64)
        # The flip evidence either way round: i against variant k of j, or j against the inverse variant of i
        # (the same relation of the two pictures). The variants are hashes of flipped pixels, not flipped
        # codes, so the two can differ by a few bits (8 and 12 on a mirrored letterboxed copy), and taking
        # one way only made a pair's verdict depend on which file came first.
        back = np.bitwise_count(self.codes[jj, :1, :] ^ self.codes[ii]).sum(axis=2, dtype=np.int64)
        both = np.minimum(d[:, 1:], back[:, _INVERSE_VARIANT[1:]])
        k = np.argmin(both, axis=1) + 1
        return d[:, 0], both[np.arange(len(ii)), k - 1], k

    def match(self, i: int, j: int) -> Match:
        """The pair test of one pair (decide on one pair: the same decision)."""
        return self._matches(np.array([i], np.int64), np.array([j], np.int64)).match(0)

    def decide(self, ii: np.ndarray, jj: np.ndarray, chunk: int = 1 << 16, lazy: bool = False) -> PairDecisions:
        """The pair test over arrays of candidate pairs, vectorised: the decisions of the pairs with a rule
        (duplicate or similar), in input order, as arrays (no object per pair: grouping.group_pairs).

        lazy: leave the pixel check of hash and embedding matches for later (their rows are `pending`; settle
        runs it): grouping checks only the pairs a group would rest on (held-out folder, phash: 711 of 3,930)."""
        ii, jj = np.asarray(ii, np.int64), np.asarray(jj, np.int64)
        parts = []
        for s in range(0, len(ii), chunk):
            d = self._matches(ii[s:s + chunk], jj[s:s + chunk], check=not lazy)
            parts.append(d.take(d.rule > 0))
        return PairDecisions.concat(parts)

    def match_pairs(self, ii: np.ndarray, jj: np.ndarray, chunk: int = 1 << 16) -> list[tuple[int, int, Match]]:
        """(i, j, Match) of the pairs with a rule (duplicate or similar), in input order (decide, as objects)."""
        d = self.decide(ii, jj, chunk)
        return [(int(a), int(b), d.match(x)) for x, (a, b) in enumerate(zip(d.i.tolist(), d.j.tolist()))]

    def _matches(self, ii: np.ndarray, jj: np.ndarray, check: bool = True) -> PairDecisions:
        """The decision of every pair (rule 0: none). The rules, in order of precedence: exact,
        phash, flip, then (auto) confirmed or embedding, which must pass the pixel check (settle; without
        `check` they stay pending); else similar."""
        t, m = self.t, len(ii)
        d0, dk, k = self._distances(ii, jj)
        cos = self.cosines(ii, jj)
        hashes = self.method in ("phash", "auto")
        rule = np.zeros(m, np.int8)  # index into _RULES
        exact = self.digest_ids[ii] == self.digest_ids[jj]
        rule[exact] = 1
        free = rule == 0
        if hashes:
            ok = free & (d0 <= t.phash)
            if cos is not None:
                ok &= cos >= t.phash_cos
            rule[ok] = 2
            free = rule == 0
            rule[free & (dk <= t.dihedral)] = 3
            free = rule == 0
        if cos is not None and self.method == "auto":
            # Only the identity distance is confirmed: an embedding is not rotation-invariant, so it cannot
            # vouch for a flipped or rotated hash match (those stand on the hash alone, `dihedral`).
            conf = free & (d0 <= t.confirm_phash) & (cos >= t.confirm_needed(d0))
            rule[conf] = 4
            rule[free & ~conf & (cos >= t.embed_cos)] = 5
        elif cos is not None and self.method == "embedding":
            rule[free & (cos >= t.embed_cos)] = 5
        # Without flips k is 0 ('none') and the flip distance is reported as -1.
        dks = dk if self.flips else np.full(m, -1)
        pending = None
        if self.thumbs is not None:
            pending = (rule >= 2) & (rule <= 5)  # every duplicate rule but byte identity
        d = PairDecisions(ii, jj, rule, d0.astype(np.int32), dks.astype(np.int32), k.astype(np.int8), cos,
                          None if pending is None else np.full(m, np.nan), pending,
                          None if pending is None else np.full(m, np.nan),
                          None if pending is None else np.full((m, 2), np.nan),
                          None if pending is None else np.zeros(m, bool))
        self._similar(d, np.flatnonzero(rule == 0))
        if check and pending is not None:
            self.settle(d, np.flatnonzero(pending))
        if d.changed is not None and np.isnan(d.changed).all() and not d.pending.any():
            d = dataclasses.replace(d, changed=None, strong=None, detail=None, overlay=None)  # no pair checked
        return d

    def settle(self, d: PairDecisions, rows: np.ndarray) -> None:
        """Run the pending pixel checks among d's `rows`, in place: a pair that fails leaves the duplicate
        tier (a look-alike, or nothing)."""
        rows = np.asarray(rows, np.int64)
        if d.pending is None or not len(rows):
            return
        rows = rows[d.pending[rows]]
        if not len(rows):
            return
        cos = None if d.cos is None else d.cos[rows]
        c, s, fine, over = self._changed(d.i[rows], d.j[rows], np.where(d.rule[rows] == 3, d.transform[rows], 0), cos)
        pictures = self._two_pictures(d.i[rows], d.j[rows])
        overlaid = self._overlaid(over, cos, pictures)
        # A pair passed as text written over a picture changed by as much as the route found written.
        d.changed[rows] = np.where(overlaid, over[:, 0], c)
        d.strong[rows] = s
        d.detail[rows] = fine
        d.overlay[rows] = overlaid
        d.pending[rows] = False
        fail = rows[~self._passing(c, s, fine, over, cos, pictures)]
        d.rule[fail] = 0
        self._similar(d, fail)

    def _similar(self, d: PairDecisions, rows: np.ndarray) -> None:
        """Mark the look-alikes among rows that have no rule: pHash within similar_phash, or an embedding
        score of similar_cos while the pixel check (where it ran) still lines the pictures up."""
        if self.method == "exact" or not len(rows):
            return
        t = self.t
        alike = d.phash[rows] <= t.similar_phash
        if d.cos is not None:
            changed = np.full(len(rows), np.nan) if d.changed is None else d.changed[rows]
            alike |= (d.cos[rows] >= t.similar_cos) & ~(changed > t.similar_changed)
        d.rule[rows[alike]] = 6

    def changed(self, i: int, j: int, variant: int = 0) -> float:
        """The pixel check of one pair: the fraction of i's thumbnail that j's (its `variant` flip or
        rotation) does not explain (verify.compare)."""
        return float(self._changed(np.array([i]), np.array([j]), np.array([variant]))[0][0])

    def passes(self, i: int, j: int, variant: int = 0) -> bool:
        """Whether one pair passes the pixel check (its bounds, and the detail check's where that ran, or the
        overlay route)."""
        ii, jj = np.array([i]), np.array([j])
        cos = self.cosines(ii, jj)
        return bool(self._passing(*self._changed(ii, jj, np.array([variant]), cos), cos, self._two_pictures(ii, jj))[0])

    def _two_pictures(self, ii: np.ndarray, jj: np.ndarray) -> np.ndarray:
        """Which pairs are two pictures, not designed pages (both page scores under Thresholds.overlay_page;
        none where the features have no page scores)."""
        pages = self.page_scores
        if pages is None:
            return np.zeros(len(ii), bool)
        return np.maximum(pages[ii], pages[jj]) < self.t.overlay_page

    def _passing(self, changed: np.ndarray, strong: np.ndarray, fine: np.ndarray, over: np.ndarray,
                 cos: np.ndarray | None, pictures: np.ndarray) -> np.ndarray:
        """Which checks pass: the one statement of the pixel check's bounds over arrays of results (fine: the
        detail check's (changed, strong) rows, NaN where it did not run; over: overlay_measures' (m, 6) rows,
        NaN where they were not taken; cos: the pairs' embedding similarities, None without embeddings;
        pictures: _two_pictures of the pairs)."""
        t = self.t
        ok = (changed <= t.changed) & (strong <= t.strong)
        ok &= ~((fine[:, 0] > t.detail_changed) | (fine[:, 1] > t.detail_strong))
        return ok | self._overlaid(over, cos, pictures)

    def _overlaid(self, over: np.ndarray, cos: np.ndarray | None, pictures: np.ndarray) -> np.ndarray:
        """Which checks pass by the overlay route (Thresholds.overlay_*; NaN measures never do; pictures: the
        pairs of two pictures, where the texture floors do not apply)."""
        t = self.t
        if cos is None:
            return np.zeros(len(over), bool)
        changed, side, texture, rows, cols, strokes = over.T
        band = (side >= t.overlay_side) & (pictures | (texture >= t.overlay_texture)) & (rows <= t.overlay_rows) \
            & (cols >= t.overlay_wide * rows)
        lettered = (side >= t.overlay_stroke_side) & (pictures | (texture >= t.overlay_stroke_texture)) \
            & (strokes >= t.overlay_strokes)
        return (changed <= t.overlay_changed) & (band | lettered) & (cols >= t.overlay_cols) & (cos >= t.overlay_cos)

    def _changed(self, ii: np.ndarray, jj: np.ndarray, variants: np.ndarray,
                 cos: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(changed, strong, detail, overlay) of the pairs' pixel checks (verify.compare, then detail.py's
        where the thumbnails pass, and verify.overlay_measures, while the route is open, where either refused
        the pair, of the whole pictures where those were compared: (m, 2) and (m, 6) arrays, NaN where they did
        not run), each run once by content. cos: the pairs' similarities (symmetric, so in either order), where
        given the measures are taken only where it reaches overlay_cos (elsewhere the route cannot pass)."""
        thumbs, limit, strong = self.thumbs, self.t.changed, self.t.strong
        # The check is not symmetric (it tries one way round before the other, for the grey levels and for
        # the warp, and reports the first that passes): each pair is checked in one order fixed by content,
        # so byte-identical files get the same verdict against a third, whichever way round the caller asks.
        # Swapping inverts the flip (rot90 <-> rot270; the others undo themselves).
        swap = self.digest_ids[ii] > self.digest_ids[jj]
        ii, jj = np.where(swap, jj, ii), np.where(swap, ii, jj)
        variants = np.where(swap, _INVERSE_VARIANT[variants], variants)
        # A verdict depends on the two contents, the flip, the limits (they decide whether the warp is
        # tried), the thumbnails' side, the check's and the preparation's versions: that is its key in
        # self.checks, and [changed, strong] its value.
        dg = self.digests
        prefix = check_key_prefix()
        keys = [f"{prefix}{limit}:{strong}:{dg[a]}:{dg[b]}:{v}"
                for a, b, v in zip(ii.tolist(), jj.tolist(), variants.tolist())]
        out = self._stored(keys)
        todo = np.flatnonzero(np.isnan(out[:, 0])).tolist()

        def one(x: int) -> list[float]:
            v = compare(thumbs[ii[x]], DIHEDRAL[variants[x]](thumbs[jj[x]]), limit, strong)
            return [v.changed, v.strong]

        found = _pool_map(one, todo)
        for x, c in zip(todo, found):
            out[x] = c
            self._store(keys[x], c)
        fine = np.full((len(keys), 2), np.nan)
        passed = (out[:, 0] <= limit) & (out[:, 1] <= strong)
        # Two pictures the thumbnails refused, whose trims differ, are compared whole: a trim can take a
        # picture's own uniform part (a sky, a fog) on one copy and not on the other. Where that passes, it is
        # the verdict, with the detail check taken on the whole pictures too.
        whole = np.zeros(len(keys), bool)
        differ = np.zeros(len(keys), bool)  # the pairs compared whole (their measures are the whole pictures')
        seen = out.copy()  # the check each pair's overlay measures follow: the whole pictures' where they ran
        facts = self.f.facts
        retry = np.flatnonzero(~passed & self._two_pictures(ii, jj))
        retry = retry[np.array([detail_check.trims_differ(facts[ii[x]].trim, facts[jj[x]].trim, int(variants[x]))
                                for x in retry.tolist()], bool)]
        if len(retry):
            got = self._whole(ii[retry], jj[retry], variants[retry], [keys[x] for x in retry.tolist()])
            differ[retry] = True
            seen[retry] = got[:, :2]
            whole[retry] = (got[:, 0] <= limit) & (got[:, 1] <= strong)
            out[whole] = got[whole[retry], :2]
            fine[whole] = got[whole[retry], 2:]
            passed |= whole
        ok = np.flatnonzero(passed & ~whole)
        fine[ok] = self._detail(ii[ok], jj[ok], variants[ok], [keys[x] for x in ok.tolist()])
        over = np.full((len(keys), 6), np.nan)
        t = self.t
        if t.overlay_cos <= 1.0 and cos is not None:  # (without embeddings the route cannot pass)
            # A pair the check refused is measured where at most overlay_changed of it differs; where the trims
            # differ, the thumbnails show two parts of the pictures (letters across a smooth margin move the
            # trim), and the whole pictures are measured, as they were compared (none where the files cannot
            # be read now). A pair compare refused without comparing (verify.NOT_COMPARED: contrasts too far
            # apart) is not measured: the measures map grey levels onto each other as compare does, and a photo
            # mapped onto a flat picture changes only where the flat one has letters.
            refused = np.where(passed, (fine[:, 0] > t.detail_changed) | (fine[:, 1] > t.detail_strong),
                               seen[:, 0] <= t.overlay_changed)
            o = np.flatnonzero(refused & (cos >= t.overlay_cos))
            on_whole = differ[o]
            for sel, wholly in ((o[~on_whole], False), (o[on_whole], True)):
                over[sel] = self._overlay(ii[sel], jj[sel], variants[sel], [keys[x] for x in sel.tolist()], wholly)
        return out[:, 0].copy(), out[:, 1].copy(), fine, over

    def _overlay(self, ii: np.ndarray, jj: np.ndarray, variants: np.ndarray, keys: list[str],
                 whole: bool = False) -> np.ndarray:
        """verify.overlay_measures of refused pairs (in the order _changed fixed), (m, 6), stored in self.checks
        beside the thumbnail verdict as entries of two (what a stored check holds): its key with 'overlay' and
        their version holds (side, texture), that key with ':extent' (rows, cols), with ':strokes' (strokes / 2,
        changed): a stored check is two fractions (the catalog reads back values in [0, 1] only), and strokes
        run to 2. whole: of the whole pictures read from the files, squashed to the thumbnails' side
        (detail.whole_squares; 'whole' and their version in the key; NaN, and nothing stored, where either cannot
        be read now)."""
        keys = [f"{k}:overlay{verify.OVERLAY_VERSION}" + (f":whole{detail_check.WHOLE_VERSION}" if whole else "")
                for k in keys]
        stored = self._stored(keys, _OVERLAY_PARTS)  # side, texture, rows, cols, strokes / 2, changed
        out = np.column_stack([stored[:, 5], stored[:, :4], 2 * stored[:, 4]])
        todo = np.flatnonzero(np.isnan(out[:, 0])).tolist()
        thumbs = self.thumbs

        def one(x: int) -> tuple[float, float, float, float, float, float] | None:
            if not whole:
                return verify.overlay_measures(thumbs[ii[x]], DIHEDRAL[variants[x]](thumbs[jj[x]]))
            read = self._read(int(ii[x]), int(jj[x]))
            if read is None:
                return None
            return verify.overlay_measures(*detail_check.whole_squares(self.pictures, *read, int(variants[x]),
                                                                      THUMB_SIDE))

        for x, got in zip(todo, _pool_map(one, todo, serial_under=8 if whole else 64)):
            if got is None:
                continue
            changed, side, texture, rows, cols, strokes = got
            out[x] = got
            self._store(keys[x], (side, texture, rows, cols, strokes / 2, changed), _OVERLAY_PARTS)
        return out

    def _stored(self, keys: list[str], parts: tuple[str, ...] = ("",)) -> np.ndarray:
        """The stored checks of `keys`: each key with each suffix of `parts` holds two values (what a stored check
        holds), in that order, (m, 2 len(parts)); a row is NaN where any part is missing (made again whole)."""
        nan2 = (np.nan, np.nan)
        out = np.array([[v for p in parts for v in self.checks.get(k + p, nan2)] for k in keys],
                       np.float64).reshape(len(keys), 2 * len(parts))
        out[np.isnan(out).any(axis=1)] = np.nan
        return out

    def _store(self, key: str, values, parts: tuple[str, ...] = ("",)) -> None:
        """Remember a check's values under `key` as _stored reads them back: two values a part."""
        for x, p in enumerate(parts):
            self.checks[key + p] = [float(values[2 * x]), float(values[2 * x + 1])]

    def _read(self, a: int, b: int) -> tuple | None:
        """(the files, (path, content digest) of a and of b, and their Pictures.canvas), what the looks at the
        files take; None where either cannot be read now or no longer holds the content scanned."""
        files = (self.paths[a], self.digests[a]), (self.paths[b], self.digests[b])
        canvases = self.pictures.canvas(*files[0]), self.pictures.canvas(*files[1])
        return None if None in canvases else (files, canvases)

    def _whole(self, ii: np.ndarray, jj: np.ndarray, variants: np.ndarray, keys: list[str]) -> np.ndarray:
        """detail.whole_fractions of pairs of two pictures the thumbnails refused whose trims differ (in the
        order _changed fixed), (m, 4): the whole thumbnails' (changed, strong), then the detail check's; NaN
        where the files cannot be read now (nothing is stored then). Stored in self.checks beside the thumbnail
        verdict: its key with 'whole', their version and the detail check's side and bounds holds the first
        two, that key with ':detail' the others."""
        t = self.t
        keys = [f"{k}:whole{detail_check.WHOLE_VERSION}:{detail_check.DETAIL_SIDE}:{t.detail_changed}:"
                f"{t.detail_strong}" for k in keys]
        out = self._stored(keys, ("", ":detail"))
        todo = np.flatnonzero(np.isnan(out[:, 0])).tolist()

        def one(x: int):
            read = self._read(int(ii[x]), int(jj[x]))
            if read is None:
                return None
            files, canvases = read
            return detail_check.whole_fractions(self.pictures, *files, canvases, int(variants[x]), THUMB_SIDE,
                                                (t.changed, t.strong), (t.detail_changed, t.detail_strong))

        for x, c in zip(todo, _pool_map(one, todo, serial_under=8)):
            if c is not None:
                out[x] = *c[0], *c[1]
                self._store(keys[x], out[x], ("", ":detail"))
        return out

    def _detail(self, ii: np.ndarray, jj: np.ndarray, variants: np.ndarray, keys: list[str]) -> np.ndarray:
        """The detail check of pairs whose thumbnails passed (in the order _changed fixed), (m, 2): NaN where
        the files cannot be read now (the thumbnail verdict stands, and nothing is stored), (0, 0) where the
        check does not apply. Stored in self.checks beside the thumbnail verdict, its key that one's with
        'detail' and the detail check's version and side."""
        t = self.t
        keys = [f"{k}:detail{detail_check.VERSION}:{detail_check.DETAIL_SIDE}:{t.detail_changed}:{t.detail_strong}"
                for k in keys]
        out = self._stored(keys)
        todo = np.flatnonzero(np.isnan(out[:, 0])).tolist()
        thumbs, pictures, facts = self.thumbs, self.pictures, self.f.facts

        def one(x: int) -> list[float] | None:
            a, b, v = int(ii[x]), int(jj[x]), int(variants[x])
            # On the canvases where the warp may only have undone where each trim stopped (detail.py).
            on_canvas, applies = detail_check.looks(thumbs[a], DIHEDRAL[v](thumbs[b]), facts[a].trim, facts[b].trim,
                                                    v, t.changed, t.strong)
            if not (on_canvas or applies):
                return [0.0, 0.0]
            read = self._read(a, b)
            if read is None:
                return None
            files, canvases = read
            if on_canvas:
                added = detail_check.on_one_canvas(pictures, *files, canvases, v, t.detail_changed, t.detail_strong)
                if added is not None:
                    return list(added)
            if not applies:
                return [0.0, 0.0]
            return list(detail_check.detail_fractions(pictures, *files, canvases, v, t.detail_changed,
                                                      t.detail_strong))

        found = _pool_map(one, todo, serial_under=8)
        for x, c in zip(todo, found):
            if c is not None:
                out[x] = c
                self._store(keys[x], c)
        return out


def _pool_map(fn, items: list, serial_under: int = 64) -> list:
    """fn over items, on threads when there are many: the checks' kernels are numba with the GIL released,
    and decoding (Pillow) releases it too, so threads over pairs use every core."""
    if len(items) < serial_under:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(os.cpu_count() or 1) as ex:
        return list(ex.map(fn, items))


_RULES = ("", "exact", "phash", "flip", "confirmed", "embedding", "similar")
# Where PairJudge._overlay stores the six measures, two to a key: the key itself (side, texture), ':extent'
# (rows, cols), ':strokes' (strokes / 2, changed).
_OVERLAY_PARTS = ("", ":extent", ":strokes")
# The inverse of each of the 8 flips and rotations (TRANSFORMS order): only the quarter turns differ.
_INVERSE_VARIANT = np.array([0, 3, 2, 1, 4, 5, 6, 7])


@dataclass(frozen=True)
class PairDecisions:
    """The pair test's decisions over arrays of pairs (PairJudge.decide): one row per pair i[x], j[x], held as
    arrays so that millions of pairs cost bytes, not objects (issue 12); match(x) is row x as a Match, made
    when asked (grouping makes one per grouped file only).

    rule: index into _RULES (0: no match). dihedral: -1 without flips; transform: index into TRANSFORMS.
    cos: None without embeddings. changed: the pixel check, NaN where it did not run, None where it ran on
    no pair at all by an eager decide (a lazy one keeps the array); strong: its strong count, and detail
    the detail check's two fractions (m x 2), alike.
    pending: rows whose duplicate rule still waits for the pixel check (PairJudge.settle); None without
    thumbnails, all False after an eager decide. Pending rows count in `duplicate` until settled, and are
    never made into a Match.
    """

    i: np.ndarray
    j: np.ndarray
    rule: np.ndarray
    phash: np.ndarray
    dihedral: np.ndarray
    transform: np.ndarray
    cos: np.ndarray | None
    changed: np.ndarray | None
    pending: np.ndarray | None = None  # the pixel check not run yet (decide(lazy=True))
    strong: np.ndarray | None = None
    detail: np.ndarray | None = None  # (m, 2): the detail check's (changed, strong), NaN where it did not run
    overlay: np.ndarray | None = None  # rows that passed by the overlay route (Match.overlay), with `changed`

    def __len__(self) -> int:
        return len(self.i)

    @property
    def duplicate(self) -> np.ndarray:
        """Mask of the rows in the duplicate tier (Match.duplicate)."""
        return np.isin(self.rule, _DUPLICATE_CODES)

    def match(self, x: int) -> Match:
        return self.matches([x])[0]

    def matches(self, rows) -> list[Match]:
        """Match of each of `rows` (read out of the arrays together: an element at a time costs more)."""
        t = self.take(np.asarray(rows, np.int64))
        if t.pending is not None and t.pending.any():
            raise RuntimeError("a pair whose pixel check is pending has no decision yet (PairJudge.settle)")
        m = len(t)
        cos = [None] * m if t.cos is None else t.cos.tolist()
        chg = [None] * m if t.changed is None else [None if c != c else c for c in t.changed.tolist()]  # NaN: none
        st = [None] * m if t.strong is None else [None if c != c else c for c in t.strong.tolist()]
        fine = [None] * m if t.detail is None else [None if r[0] != r[0] else tuple(r) for r in t.detail.tolist()]
        over = [False] * m if t.overlay is None else t.overlay.tolist()
        return [Match(_RULES[r], d, e, TRANSFORMS[k], c, x, y, z, o) for r, d, e, k, c, x, y, z, o in
                zip(t.rule.tolist(), t.phash.tolist(), t.dihedral.tolist(), t.transform.tolist(), cos, chg, st,
                    fine, over)]

    def take(self, sel) -> PairDecisions:
        """The rows picked by a mask or index array."""
        return PairDecisions(*(None if a is None else a[sel] for a in self._arrays()))

    def _arrays(self) -> tuple:
        return (self.i, self.j, self.rule, self.phash, self.dihedral, self.transform, self.cos, self.changed,
                self.pending, self.strong, self.detail, self.overlay)

    @staticmethod
    def concat(parts: list[PairDecisions]) -> PairDecisions:
        if not parts:
            z = np.zeros(0, np.int64)
            return PairDecisions(z, z, np.zeros(0, np.int8), np.zeros(0, np.int32), np.zeros(0, np.int32),
                                 np.zeros(0, np.int8), None, None)
        if len(parts) == 1:
            return parts[0]
        cols = list(zip(*(p._arrays() for p in parts)))
        cos = None if cols[6][0] is None else np.concatenate(cols[6])
        changed = pending = strong = fine = over = None
        if any(c is not None for c in cols[7]):
            changed = np.concatenate([np.full(len(p), np.nan) if c is None else c for p, c in zip(parts, cols[7])])
            strong = np.concatenate([np.full(len(p), np.nan) if c is None else c for p, c in zip(parts, cols[9])])
            fine = np.concatenate([np.full((len(p), 2), np.nan) if c is None else c for p, c in zip(parts, cols[10])])
            over = np.concatenate([np.zeros(len(p), bool) if c is None else c for p, c in zip(parts, cols[11])])
        if any(c is not None for c in cols[8]):
            pending = np.concatenate([np.zeros(len(p), bool) if c is None else c for p, c in zip(parts, cols[8])])
        return PairDecisions(*(np.concatenate(c) for c in cols[:6]), cos, changed, pending, strong, fine, over)


_DUPLICATE_CODES = np.array([_RULES.index(r) for r in DUPLICATE_RULES], np.int8)


def _rowdot(a: np.ndarray, ii: np.ndarray, b: np.ndarray, jj: np.ndarray) -> np.ndarray:
    """a[ii] . b[jj] row by row (float32, each row summed alone: the same value in any batch)."""
    return np.einsum("ij,ij->i", a[ii], b[jj], optimize=False) if len(ii) else np.zeros(0, np.float32)


# ------------------------------------------------------------------------------------------------
# Candidate pairs


def hash_pairs(phash8: np.ndarray, radius: int, dihedral_radius: int | None = None,
               chunk_size: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) with pHash within `radius`, or a flip/rotation within `dihedral_radius` (None: none).

    The only all-pairs step over hashes: exact self-joins of HammingIndex (multi-index hashing), one over the
    identity codes and, when flips are wanted, one over all 8 variants of every file (id 8*i + k), where a
    pair counts when one side is an identity code: d(code_i, variant_k(j)).
    """
    phash8 = np.ascontiguousarray(phash8, dtype=np.uint64)
    n, _, words = phash8.shape
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    out_i, out_j = [], []
    # The identity codes at `radius`, and all 8 variants of every file (id 8*i + k) at the flip radius
    # only: one join of the variants at the larger radius (18 bits, the look-alike tier) found mostly
    # variant-variant pairs to throw away, and took 2.1 s of a second run's 6.7 s on the 10k folder.
    index = HammingIndex(bits=64 * words)
    index.add(phash8[:, 0, :], np.arange(n, dtype=np.int64))
    for a, b, _ in index.self_join(radius, chunk_size=chunk_size):
        out_i.append(np.minimum(a, b))
        out_j.append(np.maximum(a, b))
    if dihedral_radius is not None:
        index = HammingIndex(bits=64 * words)
        index.add(phash8.reshape(n * 8, words), np.arange(n * 8, dtype=np.int64))
        for a, b, _ in index.self_join(dihedral_radius, chunk_size=chunk_size):
            ia, ka, ib, kb = a // 8, a % 8, b // 8, b % 8
            # one side an identity code, the other a flip of another file (identity pairs: the join above)
            keep = (ia != ib) & ((ka == 0) != (kb == 0))
            a, b = ia[keep], ib[keep]
            out_i.append(np.minimum(a, b))
            out_j.append(np.maximum(a, b))
    return _unique_pairs(out_i, out_j)


def embedding_pairs(embeddings: np.ndarray, min_cos: float, k: int = 32,
                    centre: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) where j is among i's k nearest embeddings (or i among j's) with cosine >= min_cos.

    A VectorIndex (exact below 10,000 vectors, HNSW above) answers one kNN query per vector; the score cut
    turns it into a range query bounded by k. With `centre` (the centre-crop views), both views of every
    file go into one index (row v*n + i is file i) and are queried, so whole-centre pairs are found too
    (centre-centre ones as well; the pair test decides).
    """
    from imgsim_fast.indexes.vectors import VectorIndex

    n = len(embeddings)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    vecs = embeddings if centre is None else np.concatenate([embeddings, centre])
    m = len(vecs)
    vi = VectorIndex(vecs.shape[1], deterministic=True)  # the same pairs, so the same groups, every run
    vi.add(vecs, np.arange(m, dtype=np.int64))
    views = m // n
    ids, scores = vi.knn(vecs, k=min(views * (k + 1), m))
    rows = np.repeat(np.arange(m) % n, ids.shape[1])
    ids, scores = ids.ravel(), scores.ravel()
    keep = (ids >= 0) & (scores >= min_cos)
    a, b = rows[keep], ids[keep] % n
    keep = a != b
    a, b = a[keep], b[keep]
    return _unique_pairs([np.minimum(a, b)], [np.maximum(a, b)])


def _unique_pairs(ii: list, jj: list) -> tuple[np.ndarray, np.ndarray]:
    if not ii:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i = np.concatenate(ii).astype(np.int64)
    j = np.concatenate(jj).astype(np.int64)
    if not len(i):
        return i, j
    m = int(j.max()) + 1
    key = i * m + j
    # A sort and a mask: np.unique (NumPy 2.4) took 1.8-2.8 s on the 10k folder's 830,000 pairs, this 0.4 s.
    key.sort()
    if len(key) > 1:
        key = key[np.concatenate(([True], key[1:] != key[:-1]))]
    return key // m, key % m


def candidate_pairs(judge: PairJudge) -> tuple[np.ndarray, np.ndarray]:
    """Every pair the method could accept, before the pair test: digests, hashes, embeddings."""
    f, t = judge.f, judge.t
    # Exact copies: a star on the first file with each digest (np.unique's return_index: its first file).
    ids = judge.digest_ids
    first = np.unique(ids, return_index=True)[1][ids] if len(ids) else ids
    copy = np.flatnonzero(first != np.arange(len(ids)))
    parts_i, parts_j = [first[copy]], [copy]
    if judge.method in ("phash", "auto"):
        a, b = hash_pairs(f.phash8, max(t.phash, t.similar_phash), t.dihedral if judge.flips else None)
        parts_i.append(a)
        parts_j.append(b)
    if judge.method in ("embedding", "auto") and f.embeddings is not None:
        a, b = embedding_pairs(f.embeddings, min(t.similar_cos, t.confirm_cos if judge.method == "auto"
                                                 else t.embed_cos), t.knn, f.centre_embeddings)
        parts_i.append(a)
        parts_j.append(b)
    return _unique_pairs(parts_i, parts_j)
