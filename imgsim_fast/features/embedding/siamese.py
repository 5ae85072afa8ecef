"""The learned pair similarity: a small head over frozen CNN embeddings, trained with a triplet loss.

The head maps an L2-normalised backbone embedding x (EfficientNet-Lite0, 1280-d) to
y = normalise((x - mean) @ w1 ...) (a linear projection or a 2-layer MLP, chosen by the weights file),
trained by `python -m imgsim_fast.train` on the tune half of the accuracy corpus: positives are edited
copies of one picture, negatives every other picture, look-alike non-duplicates included (Schroff et al.,
FaceNet, CVPR 2015; batch-hard mining after Hermans et al., "In Defense of the Triplet Loss", 2017).
Inference is numpy only, so using it never imports torch. The weights file also carries the pair-decision
thresholds that were tuned for it (out-of-fold on the tune half) and the held-out verdict of the training
run, because a retrain changes both.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["SiameseHead", "WEIGHTS_PATH", "load_head", "learned_cosine", "learned_features"]

WEIGHTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "siamese_head.npz")


@dataclass(frozen=True)
class SiameseHead:
    """mean (d_in,), layers [(w (d_in, h), b (h,)), ...] with ReLU between them; `meta` is what training
    recorded: backbone model, centre_discount, thresholds, held-out numbers."""

    mean: np.ndarray
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def dim_in(self) -> int:
        return int(self.mean.shape[0])

    @property
    def dim(self) -> int:
        return int(self.layers[-1][0].shape[1])

    @property
    def centre_discount(self) -> float:
        """What a whole-vs-centre cosine counts less than a whole-vs-whole one (as in PairJudge.cosine)."""
        return float(self.meta.get("centre_discount", 0.0))

    def project(self, x: np.ndarray) -> np.ndarray:
        """Backbone embeddings (n, dim_in) -> float32 (n, dim), unit L2 norm."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim_in:
            raise ValueError(f"expected embeddings of shape (n, {self.dim_in}), got {x.shape}")
        x = x - self.mean
        y = x
        for k, (w, b) in enumerate(self.layers):
            y = y @ w + b
            if k < len(self.layers) - 1:
                y = np.maximum(y, 0.0)
        if self.meta.get("residual"):
            y = x + y
        norm = np.linalg.norm(y, axis=1, keepdims=True)
        return (y / np.maximum(norm, 1e-12)).astype(np.float32)

    def save(self, path: str) -> None:
        """Write the head as a .npz, atomically (atomic_write.replacing)."""
        from imgsim_fast.io.atomic_write import replacing

        arrays = {"mean": self.mean.astype(np.float32), "meta": np.array(json.dumps(self.meta, sort_keys=True))}
        for k, (w, b) in enumerate(self.layers):
            arrays[f"w{k}"] = w.astype(np.float32)
            arrays[f"b{k}"] = b.astype(np.float32)
        with replacing(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str) -> "SiameseHead":
        with np.load(path, allow_pickle=False) as z:
            n = sum(1 for k in z.files if k.startswith("w"))
            layers = tuple((z[f"w{k}"], z[f"b{k}"]) for k in range(n))
            return cls(z["mean"], layers, json.loads(str(z["meta"])))


@lru_cache(maxsize=4)
def load_head(path: str | None = None) -> SiameseHead:
    """The shipped head (embedding/siamese_head.npz) or the one at `path`; loaded once per path."""
    return SiameseHead.load(path or WEIGHTS_PATH)


def _check_backbone(features, head: SiameseHead) -> None:
    if features.embeddings is None:
        raise ValueError("the learned similarity needs embeddings (compute_features(embed=True))")
    want = head.meta.get("model")
    if want and features.model and features.model != want:
        raise ValueError(f"the head was trained on {want!r} embeddings, these are {features.model!r}")


def learned_features(features, head: SiameseHead | None = None):
    """A copy of dedup Features whose two embedding views are the head's projections, with each file's page
    score (pages.py) from the raw embeddings, which the projection no longer tells.

    dedup's pair test and candidate search then run unchanged in the learned space, with the thresholds
    tuned for it: PairJudge(learned_features(f), "auto", dataclasses.replace(DEFAULTS, **head.meta["thresholds"])).
    """
    from imgsim_fast.features.embedding.pages import page_scores

    head = head or load_head()
    _check_backbone(features, head)
    centre = None if features.centre_embeddings is None else head.project(features.centre_embeddings)
    return dataclasses.replace(features, embeddings=head.project(features.embeddings), centre_embeddings=centre,
                               model=f"{features.model}+siamese",
                               page_scores=page_scores(features.embeddings, features.model))


def learned_cosine(features, i: np.ndarray, j: np.ndarray, head: SiameseHead | None = None) -> np.ndarray:
    """Learned similarity of pairs (i[k], j[k]) of rows of dedup Features, float32 (len(i),).

    The cosine of the projected whole pictures, or the best projected whole-vs-centre cosine (either way)
    less head.centre_discount if that is higher: the same crosswise rule as PairJudge.cosine, so a
    cropped copy can match its original's centre. Symmetric in i and j.
    """
    head = head or load_head()
    _check_backbone(features, head)
    i = np.asarray(i, dtype=np.int64).ravel()
    j = np.asarray(j, dtype=np.int64).ravel()
    if i.shape != j.shape:
        raise ValueError(f"i and j must have the same length, got {i.shape} and {j.shape}")
    rows, inv = np.unique(np.concatenate([i, j]), return_inverse=True)
    whole = head.project(features.embeddings[rows])
    a, b = inv[:len(i)], inv[len(i):]
    c = np.einsum("kd,kd->k", whole[a], whole[b])
    if features.centre_embeddings is not None:
        centre = head.project(features.centre_embeddings[rows])
        x = np.maximum(np.einsum("kd,kd->k", whole[a], centre[b]), np.einsum("kd,kd->k", centre[a], whole[b]))
        c = np.maximum(c, x - np.float32(head.centre_discount))
    return c.astype(np.float32)
