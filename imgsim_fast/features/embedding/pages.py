"""Designed pages or pictures: a linear probe on the CNN embedding that tells screenshots, slides, charts and
documents from photos and illustrations.

A line of text added to a slide (the next step of a build) and a caption or watermark written over a smooth
wallpaper change the pixels the same way: a band or strokes on one side, over flat areas. Which one it is
depends on what the picture is. On a page, words are its content, and other words make another page; on a
picture they are written over it, and the picture stays the same. The pixels at 128 px do not tell the two
apart (`verify.overlay_measures`: the texture under the change is the only cue, and a flat-design wallpaper
is as smooth as a slide), so the overlay route demands texture, and refuses the watermarked smooth
wallpapers with the slides. The backbone's embedding does tell them apart: it was trained to name what a
picture shows, and a web page, a menu or a slide is a thing it names.

The probe: logistic regression (scikit-learn, L2, C = PROBE_C) on the L2-normalised whole-picture embedding
of EfficientNet-Lite0 (1280-d, before the learned head, which keeps what tells one picture from another and
drops what kind of picture it is). Trained by `python -m imgsim_fast.train --pages` on the tune half of the
accuracy corpus and the chained-edit training copies: pages are the look-alike kinds PAGE_KINDS, pictures
the ordinary families (wallpapers and photos with their edits, captions and watermarks included) and
PICTURE_KINDS. Icons are neither: a theme's glyphs are designed but hold no words. Inference is numpy only.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["PAGE_KINDS", "PICTURE_KINDS", "PROBE_C", "PageProbe", "WEIGHTS_PATH", "fit_probe", "load_probe",
           "page_scores"]

WEIGHTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page_probe.npz")
PAGE_KINDS = ("screenshot", "slide", "chart", "build")   # bench/lookalikes.py's kinds made of words and rules
PICTURE_KINDS = ("", "burst", "object")                 # the ordinary families, bursts, objects on white
PROBE_C = 1.0  # inverse L2 strength (scikit-learn's default): 1,280 weights from about 2,100 files


@dataclass(frozen=True)
class PageProbe:
    """w (d,), b: the logistic regression on unit-length embeddings; `meta`: what training recorded (backbone
    model, C, training files, out-of-fold scores per kind)."""

    w: np.ndarray
    b: float
    meta: dict = dataclasses.field(default_factory=dict)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """float32 (n,): each embedding's probability of being a designed page. A zero row (a file without an
        embedding) or one holding NaN or infinity scores 1: nothing is known, so nothing is lifted for it."""
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.w):
            raise ValueError(f"expected embeddings of shape (n, {len(self.w)}), got {x.shape}")
        known = np.isfinite(x).all(axis=1)
        x = np.where(known[:, None], x, 0)
        norm = np.linalg.norm(x, axis=1)
        known &= norm > 0
        z = (x @ self.w) / np.maximum(norm, 1e-12) + np.float32(self.b)
        out = (1.0 / (1.0 + np.exp(-z.astype(np.float64)))).astype(np.float32)
        out[~known] = 1.0
        return out

    def save(self, path: str) -> None:
        """Write the probe as a .npz, atomically (atomic_write.replacing)."""
        from imgsim_fast.io.atomic_write import replacing

        with replacing(path, "wb") as f:
            np.savez(f, w=self.w.astype(np.float32), b=np.array([self.b], np.float32),
                     meta=np.array(json.dumps(self.meta, sort_keys=True)))

    @classmethod
    def load(cls, path: str) -> "PageProbe":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["w"], float(z["b"][0]), json.loads(str(z["meta"])))


def fit_probe(x: np.ndarray, is_page: np.ndarray, meta: dict | None = None) -> PageProbe:
    """The probe fitted on embeddings x (n, d) labelled is_page (n,) bool (deterministic: lbfgs)."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(x, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    m = LogisticRegression(C=PROBE_C, max_iter=5000).fit(x, np.asarray(is_page, bool))
    return PageProbe(m.coef_[0].astype(np.float32), float(m.intercept_[0]), dict(meta or {}, C=PROBE_C))


@lru_cache(maxsize=4)
def load_probe(path: str | None = None) -> PageProbe:
    """The shipped probe (embedding/page_probe.npz) or the one at `path`; loaded once per path."""
    return PageProbe.load(path or WEIGHTS_PATH)


def page_scores(embeddings: np.ndarray | None, model: str | None) -> np.ndarray | None:
    """Each file's page score (PageProbe.scores) from its raw whole-picture embedding, or None where there
    is none or it comes from another backbone than the probe's."""
    if embeddings is None or model is None:
        return None
    probe = load_probe()
    if model != probe.meta.get("model"):
        return None
    return probe.scores(embeddings)
