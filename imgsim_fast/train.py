"""Train the learned pair similarity (embedding/siamese.py) and compare it with the hand-written rule.

`python -m imgsim_fast.train [--out PATH] [--seed N] [--epochs N] [--eval]`:
1. builds (or reuses) the accuracy corpus and takes its TUNE half only, plus extra training pictures made
   by chaining the corpus's edits on tune-half originals (never a test-half picture);
2. computes their features with dedup's own compute_features (so a change of the embedding input is
   picked up by retraining, nothing here repeats the preprocessing);
3. trains the head with a batch-hard triplet loss (Hermans et al. 2017) on the crosswise similarity
   dedup uses (whole-whole, or whole-centre less a discount): positives are copies of one picture, the
   hardest negative of each anchor among all other pictures, look-alike negatives included;
4. tunes the pair-decision thresholds for the learned score out-of-fold (heads trained on 2/3 of the tune
   families score the other third), so the thresholds are not fitted to scores of the head's own
   training pictures;
5. with --eval, compares on the held-out TEST half: dedup's rule as shipped (accuracy.our_pairs 'auto')
   against the same rule run on the head's projections with the thresholds of step 4.
Seeded and deterministic: torch.manual_seed, deterministic algorithms, one thread while training.

`python -m imgsim_fast.train --pages [--out PATH]` fits the page probe instead (embedding/pages.py: designed
pages or pictures, logistic regression on the raw embedding) on the same tune-half files and chained-edit
copies, prints its out-of-fold scores per kind, and writes it (default: the shipped page_probe.npz).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import os
import pickle
import shutil
import sys
import time

import numpy as np

from imgsim_fast.io.atomic_write import replacing
from imgsim_fast.bench.corpus import CorpusFile

__all__ = ["train_head", "triplet_loss", "tune_thresholds", "pair_matrix", "fit", "compare_heldout", "main"]

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# Edits under which the embedding is not expected to stay close: dedup's flip/rotation rule matches
# those on the dihedral pHash alone (detect.PairJudge.match), so they are neither positives nor anchors.
NOT_EMBEDDING_POSITIVE = ("rot90", "mirror")
# The Thresholds fields tuned for the learned score (stored in the weights file); every other field is
# dedup's default, so the stored set survives new fields in detect.Thresholds.
TUNED = ("confirm_phash", "confirm_cos", "confirm_slope", "embed_cos", "centre_discount")
CENTRE_DISCOUNT = 0.05   # as detect.DEFAULTS.centre_discount: the crosswise rule the head is trained for
EXTRA_PER_SOURCE = 6     # chained-edit training copies per tune-half original
FOLDS = 3


# ------------------------------------------------------------------------------------------------
# Training data


def extra_pictures(files: list[CorpusFile], cache_dir: str, seed: int) -> list[CorpusFile]:
    """Training copies made by chaining 2-3 of the corpus's edits on each tune-half original (cached).

    Real edits mix several at once (the corpus applies one each); these widen the positives the head sees.
    Only tune-half originals are used, so no test-half picture ever reaches training.
    """
    from PIL import Image

    from imgsim_fast.bench.corpus import EDITS, apply_edit

    origs = [f for f in files if f.split == "tune" and f.kind == "original"]
    root = os.path.join(cache_dir, "siamese_extra")
    labels = os.path.join(root, "labels.json")
    key = {"seed": seed, "per": EXTRA_PER_SOURCE, "sources": [(f.path, os.path.getsize(f.path)) for f in origs]}
    if os.path.exists(labels):
        with open(labels, encoding="utf-8") as fh:
            doc = json.load(fh)
        if doc.get("key") == key:
            return [CorpusFile(**r) for r in doc["files"]]
    shutil.rmtree(root, ignore_errors=True)  # our own cache folder: no copy of an older key lingers
    os.makedirs(root)
    rng = np.random.default_rng(seed)
    kinds = [k for k in EDITS if k[0] not in NOT_EMBEDDING_POSITIVE]
    out = []
    for n, f in enumerate(origs):
        with Image.open(f.path) as im:
            im = im.convert("RGB")
        for e in range(EXTRA_PER_SOURCE):
            x, save = im, {}
            steps = [kinds[int(k)] for k in rng.choice(len(kinds), int(rng.integers(2, 4)), replace=False)]
            for kind, level in steps:
                x, save = apply_edit(x.convert("RGB"), kind, level, rng)
            path = os.path.join(root, f"x{n:03d}_{e}" + (".png" if save["format"] == "PNG" else ".jpg"))
            x.save(path, **save)
            out.append(CorpusFile(path, f.family, "+".join(k for k, _ in steps), "chain", "tune"))
    with replacing(labels) as fh:
        json.dump({"key": key, "files": [dataclasses.asdict(f) for f in out]}, fh)
    return out


def _code_fingerprint() -> str:
    """Hash of the code that computes features: a cached feature set is reused only while it is unchanged."""
    h = hashlib.sha256()
    pkg = os.path.dirname(os.path.abspath(__file__))
    for rel in ("features/extract.py", "features/hashing.py", "io/loading.py", "features/embedding/models.py",
                "features/embedding/efficientnet_lite.py", "features/embedding/preprocess.py",
                "features/embedding/batching.py"):
        with open(os.path.join(pkg, rel), "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


def features_of(files: list[CorpusFile], cache_dir: str | None):
    """(dedup Features with embeddings, the files in feature-row order); cached under cache_dir/siamese_features.

    The cache key is the files (path, size, mtime) and the source of the feature code, so a change to the
    preprocessing or the model recomputes them.
    """
    from imgsim_fast.features.extract import compute_features

    key = hashlib.sha256(json.dumps([_code_fingerprint()] + [
        (f.path, os.path.getsize(f.path), os.path.getmtime(f.path)) for f in files]).encode()).hexdigest()[:24]
    path = os.path.join(cache_dir, "siamese_features", key + ".pkl") if cache_dir else None
    if path and os.path.exists(path):
        with open(path, "rb") as fh:
            feats = pickle.load(fh)
    else:
        feats = compute_features([f.path for f in files], embed=True, progress=False)
        if feats.failures:
            raise RuntimeError(f"{len(feats.failures)} training files failed to load: {feats.failures[:3]}")
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with replacing(path, "wb") as fh:
                pickle.dump(feats, fh)
    by_path = {os.path.abspath(f.path): f for f in files}
    return feats, [by_path[os.path.abspath(p)] for p in feats.paths]


def subset(feats, rows: np.ndarray):
    """Rows of a dedup Features set (a new Features)."""
    rows = np.asarray(rows, dtype=np.int64)
    pick = (lambda a: None if a is None else a[rows])
    return dataclasses.replace(feats, facts=[feats.facts[i] for i in rows], phash8=feats.phash8[rows],
                               embeddings=pick(feats.embeddings), centre_embeddings=pick(feats.centre_embeddings),
                               page_scores=pick(feats.page_scores), thumbs=pick(feats.thumbs), failures=[])


# ------------------------------------------------------------------------------------------------
# The head and its loss


def train_head(whole: np.ndarray, centre: np.ndarray | None, labels: np.ndarray, *, seed: int = 0,
               epochs: int = 40, dim: int = 128, hidden: int = 0, margin: float = 0.2, lr: float = 3e-3,
               weight_decay: float = 1e-4, batch: int = 128, residual: int = 0, anchor_ok: np.ndarray | None = None,
               centre_discount: float = CENTRE_DISCOUNT, history: list | None = None):
    """Train a SiameseHead on backbone embeddings (n, d) of labelled files; returns it.

    labels: (n,) ints, equal for copies of one picture. anchor_ok: files allowed in positive pairs (the
    others are negatives only). The head starts as the principal axes of the centred embeddings (so it
    begins at a centred, truncated cosine, not at noise); each step takes `batch` anchors, scores them
    against every file, and applies the batch-hard triplet loss relu(margin + s(a, n*) - s(a, p*)) with p*
    the least similar copy and n* the most similar non-copy. history, if a list, receives each epoch's mean
    loss. Deterministic for a seed: one thread, deterministic algorithms, a seeded generator.
    """
    import torch

    from imgsim_fast.features.embedding.siamese import SiameseHead

    n, d_in = whole.shape
    labels = np.asarray(labels)
    anchor_ok = np.ones(n, bool) if anchor_ok is None else np.asarray(anchor_ok, bool)
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        xw = torch.from_numpy(np.ascontiguousarray(whole, np.float32))
        xc = None if centre is None else torch.from_numpy(np.ascontiguousarray(centre, np.float32))
        mean = xw.mean(dim=0)
        if residual:
            # y = x + relu(x A + a) B + b with B = 0 at the start: the head begins exactly at the centred
            # backbone cosine and learns a correction of rank `residual` (LoRA-like: Hu et al. 2021).
            a0 = torch.empty(d_in, residual)
            torch.nn.init.orthogonal_(a0, generator=gen)
            params = [a0.requires_grad_(True), torch.zeros(residual, requires_grad=True),
                      torch.zeros(residual, d_in, requires_grad=True), torch.zeros(d_in, requires_grad=True)]
        else:
            # Principal axes by an SVD in float64 (deterministic; signs do not matter to a cosine).
            _, _, vt = np.linalg.svd((whole - mean.numpy()).astype(np.float64), full_matrices=False)
            k = hidden or dim
            w0 = np.zeros((d_in, k), np.float32)
            m = min(k, vt.shape[0])
            w0[:, :m] = vt[:m].T
            params = [torch.tensor(w0, requires_grad=True), torch.zeros(k, requires_grad=True)]
            if hidden:
                w1 = torch.empty(hidden, dim)
                torch.nn.init.orthogonal_(w1, generator=gen)
                params += [w1.requires_grad_(True), torch.zeros(dim, requires_grad=True)]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        lab = torch.from_numpy(labels)
        same = lab[:, None] == lab[None, :]
        ok = torch.from_numpy(anchor_ok)
        pos_mask = same & ok[:, None] & ok[None, :] & ~torch.eye(n, dtype=torch.bool)
        neg_mask = ~same
        anchors = torch.nonzero(pos_mask.any(dim=1)).ravel()
        if len(anchors) == 0:
            raise ValueError("no file has a positive (two files with one label): nothing to train on")

        def proj(x):
            x = x - mean
            y = x @ params[0] + params[1]
            if len(params) > 2:
                y = torch.relu(y) @ params[2] + params[3]
            return torch.nn.functional.normalize(x + y if residual else y, dim=1)

        for _ in range(epochs):
            order = anchors[torch.randperm(len(anchors), generator=gen)]
            total, steps = 0.0, 0
            for s in range(0, len(order), batch):
                a = order[s:s + batch]
                yw = proj(xw)
                sim = yw[a] @ yw.T
                if xc is not None:
                    yc = proj(xc)
                    cross = torch.maximum(yw[a] @ yc.T, yc[a] @ yw.T) - centre_discount
                    sim = torch.maximum(sim, cross)
                hp = torch.where(pos_mask[a], sim, torch.full_like(sim, 2.0)).min(dim=1).values
                hn = torch.where(neg_mask[a], sim, torch.full_like(sim, -2.0)).max(dim=1).values
                loss = torch.relu(margin + hn - hp).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach())
                steps += 1
            if history is not None:
                history.append(total / steps)
        layers = tuple((params[k].detach().numpy().copy(), params[k + 1].detach().numpy().copy())
                       for k in range(0, len(params), 2))
        meta = {"centre_discount": centre_discount, "seed": seed, "epochs": epochs, "dim": dim, "hidden": hidden,
                "residual": residual,
                "margin": margin, "lr": lr, "weight_decay": weight_decay, "batch": batch}
        return SiameseHead(mean.numpy().copy(), layers, meta)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)


def triplet_loss(head, whole, centre, labels, margin: float = 0.2, anchor_ok=None) -> float:
    """Mean batch-hard triplet loss of a head over a whole labelled set (numpy; for reports and tests)."""
    labels = np.asarray(labels)
    n = len(labels)
    ok = np.ones(n, bool) if anchor_ok is None else np.asarray(anchor_ok, bool)
    s = _sim_matrix(head.project(whole), None if centre is None else head.project(centre), head.centre_discount)
    same = labels[:, None] == labels[None, :]
    pos = same & ok[:, None] & ok[None, :] & ~np.eye(n, dtype=bool)
    a = pos.any(axis=1)
    hp = np.where(pos, s, 2.0).min(axis=1)
    hn = np.where(~same, s, -2.0).max(axis=1)
    return float(np.maximum(0.0, margin + hn - hp)[a].mean())


def _sim_matrix(w: np.ndarray, c: np.ndarray | None, discount: float) -> np.ndarray:
    s = w @ w.T
    if c is not None:
        x = w @ c.T
        s = np.maximum(s, np.maximum(x, x.T) - discount)
    return s


# ------------------------------------------------------------------------------------------------
# Decision thresholds


def pair_matrix(feats) -> tuple[np.ndarray, np.ndarray]:
    """(identity pHash distance, smallest flip/rotation distance) for every pair, (n, n) each."""
    n = len(feats)
    bits = np.unpackbits(np.ascontiguousarray(feats.phash8).view(np.uint8).reshape(n, 8, -1), axis=2).astype(bool)
    d = np.stack([(bits[:, None, 0, :] != bits[None, :, k, :]).sum(axis=2) for k in range(8)])
    dk = d[1:].min(axis=0)
    return d[0], np.minimum(dk, dk.T)


def tune_thresholds(cos: np.ndarray, d0: np.ndarray, dk: np.ndarray, same: np.ndarray, valid: np.ndarray,
                    min_precision: float = 0.995):
    """Thresholds of dedup's auto rule for a similarity matrix: the grid point with the best F1 at
    precision >= min_precision over the `valid` pairs (pair test only, as accuracy.tune does).

    Returns (Thresholds, {"f1", "precision", "recall"}). pHash-only thresholds stay at detect.DEFAULTS:
    the learned score only changes the embedding rules.
    """
    from imgsim_fast.jobs.dedup.detect import DEFAULTS

    iu = np.triu(valid, k=1)
    c, h0, hk, y = cos[iu], d0[iu], dk[iu], same[iu]
    hash_only = (h0 <= DEFAULTS.phash) | (hk <= DEFAULTS.dihedral)
    n_true = int(y.sum())
    ecs = np.round(np.arange(0.5, 0.99, 0.01), 3)
    best = None
    for cp, cc, sl in itertools.product((20, 24, 28, 32), np.round(np.arange(0.20, 0.91, 0.025), 3),
                                        (0.0, 0.005, 0.01, 0.015, 0.02, 0.025)):
        conf = hash_only | ((h0 <= cp) & (c >= cc + sl * np.maximum(0, h0 - DEFAULTS.phash)))
        tp0, np0 = int((conf & y).sum()), int(conf.sum())
        # Pairs the embedding-alone rule adds, for every embed_cos at once: counts at or above each cut.
        rest_t, rest_f = np.sort(c[~conf & y]), np.sort(c[~conf & ~y])
        tp = tp0 + len(rest_t) - np.searchsorted(rest_t, ecs, side="left")
        npred = np0 + len(rest_t) + len(rest_f) - np.searchsorted(rest_t, ecs) - np.searchsorted(rest_f, ecs)
        p = np.where(npred > 0, tp / np.maximum(npred, 1), 1.0)
        r = tp / n_true if n_true else np.ones(len(ecs))
        f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
        for e in range(len(ecs)):
            score = (bool(p[e] >= min_precision), float(f1[e]), float(p[e]))
            if best is None or score > best[0]:
                best = (score, (cp, float(cc), sl, float(ecs[e])),
                        {"f1": float(f1[e]), "precision": float(p[e]), "recall": float(r[e])})
    cp, cc, sl, ec = best[1]
    t = dataclasses.replace(DEFAULTS, confirm_phash=cp, confirm_cos=cc, confirm_slope=sl, embed_cos=ec,
                            centre_discount=CENTRE_DISCOUNT)
    return t, best[2]


def _labels(files: list[CorpusFile]) -> tuple[np.ndarray, np.ndarray]:
    fams = {f: i for i, f in enumerate(sorted({f.family for f in files}))}
    lab = np.array([fams[f.family] for f in files], np.int64)
    ok = np.array([f.kind not in NOT_EMBEDDING_POSITIVE for f in files], bool)
    return lab, ok


def _folds(families: list[str], seed: int) -> dict[str, int]:
    fams = sorted(set(families))
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(fams))
    return {fams[p]: k % FOLDS for k, p in enumerate(perm)}


def fit(tune_feats, tune_files, extra_feats, extra_files, seed: int, **kw):
    """The shipped head (trained on everything) and its thresholds (tuned out-of-fold on the tune corpus)."""
    n = len(tune_files)
    folds = _folds([f.family for f in tune_files], seed)
    fold = np.array([folds[f.family] for f in tune_files])
    fold_x = np.array([folds[f.family] for f in extra_files])
    all_files = tune_files + extra_files
    lab, ok = _labels(all_files)
    w = np.concatenate([tune_feats.embeddings, extra_feats.embeddings])
    c = np.concatenate([tune_feats.centre_embeddings, extra_feats.centre_embeddings])
    oof = np.full((n, n), -2.0, np.float32)
    valid = np.zeros((n, n), bool)
    for k in range(FOLDS):
        train = np.concatenate([fold != k, fold_x != k])
        head = train_head(w[train], c[train], lab[train], anchor_ok=ok[train], seed=seed, **kw)
        rows = np.flatnonzero(fold == k)
        s = _sim_matrix(head.project(tune_feats.embeddings[rows]), head.project(tune_feats.centre_embeddings[rows]),
                        head.centre_discount)
        oof[np.ix_(rows, rows)] = s
        valid[np.ix_(rows, rows)] = True
    d0, dk = pair_matrix(tune_feats)
    same = lab[:n, None] == lab[None, :n]
    thresholds, oof_metrics = tune_thresholds(oof, d0, dk, same, valid)
    # The same grid on the raw crosswise cosine over the same pairs: the yardstick for the learned one.
    raw = _sim_matrix(tune_feats.embeddings, tune_feats.centre_embeddings, CENTRE_DISCOUNT)
    raw_t, raw_metrics = tune_thresholds(raw, d0, dk, same, valid)
    history: list = []
    head = train_head(w, c, lab, anchor_ok=ok, seed=seed, history=history, **kw)
    meta = dict(head.meta, thresholds={k: getattr(thresholds, k) for k in TUNED}, oof_tune=oof_metrics,
                raw_tune_same_grid={"thresholds": {k: getattr(raw_t, k) for k in TUNED}, **raw_metrics},
                loss_first_last=[history[0], history[-1]], model=tune_feats.model,
                train_files=len(all_files), train_families=int(len(set(lab.tolist()))))
    return dataclasses.replace(head, meta=meta)


def fit_pages(tune_feats, tune_files, extra_feats, extra_files, seed: int):
    """The page probe (embedding/pages.py) fitted on the tune half and the chained-edit copies, with its
    out-of-fold scores per kind recorded (family folds, as for the head's thresholds)."""
    from imgsim_fast.features.embedding.pages import PAGE_KINDS, PICTURE_KINDS, fit_probe

    files = tune_files + extra_files
    x = np.concatenate([tune_feats.embeddings, extra_feats.embeddings])
    # A chained-edit copy does not carry its original's look-alike kind: its family does.
    kind_of = {f.family: f.negative for f in tune_files}
    kinds = [kind_of[f.family] for f in files]
    used = np.array([k in PAGE_KINDS + PICTURE_KINDS for k in kinds])
    is_page = np.array([k in PAGE_KINDS for k in kinds])
    folds = _folds([f.family for f in files], seed)
    fold = np.array([folds[f.family] for f in files])
    oof = np.full(len(files), np.nan)
    for k in range(FOLDS):
        fit_rows, score_rows = used & (fold != k), used & (fold == k)
        oof[score_rows] = fit_probe(x[fit_rows], is_page[fit_rows]).scores(x[score_rows])
    chained = np.arange(len(files)) >= len(tune_files)
    per_kind = {}
    for kind in dict.fromkeys(PAGE_KINDS + PICTURE_KINDS):
        for where, rows in (("corpus", ~chained), ("chained", chained)):
            v = oof[np.array([k == kind for k in kinds]) & used & rows]
            if len(v):
                per_kind[f"{kind or 'ordinary'} ({where})"] = {
                    "files": len(v), "min": round(float(v.min()), 4), "median": round(float(np.median(v)), 4),
                    "max": round(float(v.max()), 4)}
    return fit_probe(x[used], is_page[used], {"model": tune_feats.model, "train_files": int(used.sum()),
                                              "oof_tune": per_kind, "seed": seed})


# ------------------------------------------------------------------------------------------------
# Held-out comparison


def compare_heldout(head, all_feats, all_files) -> dict:
    """Held-out (test half) metrics of the shipped rule and of the rule on the learned score."""
    from imgsim_fast.bench.accuracy import evaluate, our_pairs
    from imgsim_fast.jobs.dedup import head_thresholds
    from imgsim_fast.features.embedding.siamese import learned_features

    rows = np.array([i for i, f in enumerate(all_files) if f.split == "test"])
    feats = subset(all_feats, rows)
    files = [all_files[i] for i in rows]
    # The thresholds dedup would use with this head (its own, then dedup.LEARNED's: the learned pHash floor
    # and the overlay route), so the comparison scores the rule as it would ship.
    t = head_thresholds(head)
    out = {}
    for name, pred in (("hand rule (auto)", our_pairs(feats, "auto", learned=False)),
                       ("learned score", our_pairs(learned_features(feats, head), "auto", t))):
        out[name] = evaluate(pred, files, "test")
    a, b = out["hand rule (auto)"], out["learned score"]
    # "Beats": a higher held-out F1 with no more false pairs; a tie keeps the hand-written rule.
    out["learned_wins"] = bool(b["f1"] > a["f1"] and b["false_pairs"] <= a["false_pairs"])
    out["files"] = len(files)
    return out


def _print_comparison(res: dict) -> None:
    names = ("hand rule (auto)", "learned score")
    print(f"\nheld-out (test) half, {res['files']} files, duplicate groups as dedup forms them:")
    for name in names:
        r = res[name]
        print(f"  {name:17} P={r['precision']:.4f} R={r['recall']:.4f} F1={r['f1']:.4f} "
              f"false pairs {r['false_pairs']} of {r['pairs']} ({r['false_per_1k_files']:.2f} per 1,000 files)")
    print("  look-alike kind: false pairs per 1,000 files (count), copy recall; hand | learned")
    for k in res[names[0]]["per_lookalike"]:
        a, b = (res[n]["per_lookalike"][k] for n in names)
        print(f"    {k:11} {a['false_per_1k_files']:7.2f} ({a['false_pairs']:3}) {a['copy_recall'] or 0:.3f} | "
              f"{b['false_per_1k_files']:7.2f} ({b['false_pairs']:3}) {b['copy_recall'] or 0:.3f}")
    print("  recall per edit kind (hand | learned):")
    for k in res[names[0]]["per_kind"]:
        print(f"    {k:18} {res[names[0]]['per_kind'][k]:.3f} | {res[names[1]]['per_kind'][k]:.3f}")
    print(f"\n  verdict: {'the learned score WINS' if res['learned_wins'] else 'the hand-written rule stays'}"
          " (the learned score wins only with a higher F1 and no more false pairs)")


def main(argv=None) -> int:
    from imgsim_fast.features.embedding.siamese import WEIGHTS_PATH

    p = argparse.ArgumentParser(prog="python -m imgsim_fast.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", help="weights file to write (default: the shipped one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--hidden", type=int, default=0, help="hidden width of a 2-layer head (0: linear)")
    p.add_argument("--margin", type=float, default=0.2)
    p.add_argument("--eval", action="store_true", help="compare with the hand-written rule on the held-out half")
    p.add_argument("--pages", action="store_true",
                   help="fit the page probe (embedding/pages.py) instead of the head; --out defaults to its file")
    p.add_argument("--photos", default=os.path.join(REPO, ".cache", "photos"))
    p.add_argument("--cache", default=os.path.join(REPO, ".cache"))
    args = p.parse_args(argv)
    if args.out is None:
        from imgsim_fast.features.embedding.pages import WEIGHTS_PATH as PAGES_PATH

        args.out = PAGES_PATH if args.pages else WEIGHTS_PATH
    if args.pages and args.eval:
        print("error: --eval compares the head; the page probe is judged by dedup's accuracy bench", file=sys.stderr)
        return 2
    if args.epochs < 1 or args.dim < 1 or args.hidden < 0:
        print("error: --epochs and --dim must be >= 1, --hidden >= 0", file=sys.stderr)
        return 2
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):  # checked now, not after minutes of training
        print(f"error: --out: no such folder {out_dir}", file=sys.stderr)
        return 2
    from imgsim_fast.bench.corpus import build_corpus

    t0 = time.perf_counter()
    try:
        files = build_corpus(args.photos, args.cache)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    extra = extra_pictures(files, args.cache, args.seed)
    # One feature pass over what is needed: the test half only with --eval, where it is only scored.
    corpus = files if args.eval else [f for f in files if f.split == "tune"]
    feats, rows = features_of(corpus + extra, args.cache)
    is_extra = np.array([r.level == "chain" for r in rows])
    is_tune = np.array([r.split == "tune" for r in rows]) & ~is_extra
    tune_feats, tune = subset(feats, np.flatnonzero(is_tune)), [r for r, k in zip(rows, is_tune) if k]
    extra_feats, extra = subset(feats, np.flatnonzero(is_extra)), [r for r, k in zip(rows, is_extra) if k]
    t1 = time.perf_counter()
    print(f"training data: {len(tune)} tune-half corpus files, {len(extra)} chained-edit copies; "
          f"features {t1 - t0:.0f} s")
    if args.pages:
        probe = fit_pages(tune_feats, tune, extra_feats, extra, args.seed)
        print(f"page probe fitted on {probe.meta['train_files']} files; out-of-fold page scores on the tune half:")
        for kind, v in probe.meta["oof_tune"].items():
            print(f"  {kind:20} {v['files']:5} files  min {v['min']:.3f}  median {v['median']:.3f}  max {v['max']:.3f}")
        probe.save(args.out)
        print(f"wrote {args.out} ({os.path.getsize(args.out) // 1024} KiB)")
        return 0
    head = fit(tune_feats, tune, extra_feats, extra, args.seed, epochs=args.epochs, dim=args.dim,
               hidden=args.hidden, margin=args.margin)
    m = head.meta
    print(f"trained in {time.perf_counter() - t1:.0f} s: loss {m['loss_first_last'][0]:.4f} -> "
          f"{m['loss_first_last'][1]:.4f}")
    print(f"out-of-fold pair test on the tune half: learned F1={m['oof_tune']['f1']:.4f} "
          f"P={m['oof_tune']['precision']:.4f} R={m['oof_tune']['recall']:.4f}; raw cosine, same grid: "
          f"F1={m['raw_tune_same_grid']['f1']:.4f} P={m['raw_tune_same_grid']['precision']:.4f} "
          f"R={m['raw_tune_same_grid']['recall']:.4f}")
    print(f"thresholds for the learned score: {m['thresholds']}")
    if args.eval:
        keep = np.flatnonzero(~is_extra)
        res = compare_heldout(head, subset(feats, keep), [rows[i] for i in keep])
        _print_comparison(res)
        head = dataclasses.replace(head, meta=dict(m, heldout={
            k: {x: v[x] for x in ("precision", "recall", "f1", "false_pairs", "pairs", "false_per_1k_files")}
            if isinstance(v, dict) else v for k, v in res.items()}))
    head.save(args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
