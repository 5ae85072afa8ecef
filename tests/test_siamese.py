"""The learned pair similarity: shipped weights, deterministic training that learns, the vectorised score."""
import dataclasses
import inspect
import os

import numpy as np
import pytest

from imgsim_fast.features.embedding.siamese import SiameseHead, learned_cosine, learned_features, load_head
from imgsim_fast.train import train_head, triplet_loss


def test_shipped_weights_load_and_give_unit_vectors():
    head = load_head()
    assert head.dim_in == 1280 and head.meta["model"] == "efficientnet-lite0"
    x = np.random.default_rng(0).normal(size=(7, 1280)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = head.project(x)
    assert y.shape == (7, head.dim) and y.dtype == np.float32
    assert np.allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
    from imgsim_fast.jobs.dedup.detect import DEFAULTS

    t = dataclasses.replace(DEFAULTS, **head.meta["thresholds"])  # the tuned thresholds are Thresholds fields
    assert 0 < t.confirm_cos <= 1 and 0 < t.embed_cos <= 1
    with pytest.raises(ValueError):
        head.project(x[:, :100])


def _nuisance_set(seed=3, classes=8, per=4):
    """Labels live in 4 low-variance dimensions; 12 dimensions of large per-sample noise dominate both the
    raw cosine and the principal axes the head starts from, so an untrained head confuses the classes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, 4))
    labels = np.repeat(np.arange(classes), per)
    x = np.concatenate([centres[labels] + 0.05 * rng.normal(size=(len(labels), 4)),
                        2.0 * rng.normal(size=(len(labels), 12))], axis=1).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def test_training_is_deterministic_and_reduces_the_triplet_loss():
    x, labels = _nuisance_set()
    kw = dict(seed=5, dim=4, batch=16, lr=0.02, centre_discount=0.0)
    a = train_head(x, None, labels, epochs=30, **kw)
    b = train_head(x, None, labels, epochs=30, **kw)
    for (wa, ba), (wb, bb) in zip(a.layers, b.layers, strict=True):
        assert np.array_equal(wa, wb) and np.array_equal(ba, bb)
    start = train_head(x, None, labels, epochs=0, **kw)
    before, after = triplet_loss(start, x, None, labels), triplet_loss(a, x, None, labels)
    # The start is near chance on this set; a head that does not learn stays there.
    assert before > 0.3 and after < 0.25 * before, (before, after)
    c = train_head(x, None, labels, epochs=30, **dict(kw, seed=6))
    assert not np.array_equal(c.layers[-1][0], a.layers[-1][0])  # the seed is used


def _features(n=9, seed=0):
    from imgsim_fast.features.extract import Features

    rng = np.random.default_rng(seed)
    e, c = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in rng.normal(size=(2, n, 1280)).astype(np.float32))
    c[3] = e[4]  # a pair whose best view is whole-vs-centre
    return Features([], np.zeros((n, 8, 1), np.uint64), e, model="efficientnet-lite0", centre_embeddings=c)


def _project_brute(head: SiameseHead, v: np.ndarray) -> np.ndarray:
    x = v.astype(np.float64) - head.mean
    y = x
    for k, (w, b) in enumerate(head.layers):
        y = y @ w + b
        y = np.maximum(y, 0) if k < len(head.layers) - 1 else y
    y = x + y if head.meta.get("residual") else y
    return y / np.linalg.norm(y)


def test_learned_cosine_is_symmetric_and_matches_brute_force():
    head = load_head()
    f = _features()
    i = np.array([0, 3, 4, 2, 8, 5, 5])
    j = np.array([1, 4, 3, 2, 0, 7, 6])
    got = learned_cosine(f, i, j)
    assert got.shape == (7,) and np.array_equal(got, learned_cosine(f, j, i))
    d = head.centre_discount
    for k, (a, b) in enumerate(zip(i, j)):
        wa, wb = _project_brute(head, f.embeddings[a]), _project_brute(head, f.embeddings[b])
        ca, cb = _project_brute(head, f.centre_embeddings[a]), _project_brute(head, f.centre_embeddings[b])
        want = max(wa @ wb, max(wa @ cb, ca @ wb) - d)
        assert got[k] == pytest.approx(want, abs=1e-5)
    assert got[3] == pytest.approx(1.0, abs=1e-5)  # a file with itself
    with pytest.raises(ValueError):
        learned_cosine(dataclasses.replace(f, model="clip"), i, j)


def test_learned_features_give_dedups_pair_test_the_same_score():
    from imgsim_fast.jobs.dedup.detect import DEFAULTS, PairJudge
    from imgsim_fast.features.extract import FileFacts

    head = load_head()
    f = _features()
    facts = [FileFacts(f"/x/{k}.jpg", 1000, 0.0, 100, 100, "JPEG", 10000, f"d{k}") for k in range(len(f.embeddings))]
    f = dataclasses.replace(f, facts=facts)
    judge = PairJudge(learned_features(f, head), "auto", dataclasses.replace(DEFAULTS, **head.meta["thresholds"]))
    want = learned_cosine(f, np.array([3, 0]), np.array([4, 5]), head)
    assert [judge.cosine(3, 4), judge.cosine(0, 5)] == pytest.approx(want.tolist(), abs=1e-6)


def test_the_feature_cache_key_reads_the_feature_code():
    # python -m imgsim_fast.train keys its cached features by the source of the code that computes them; a
    # path left behind by a move made training stop before it began (FileNotFoundError).
    from imgsim_fast import train
    from imgsim_fast.features import extract

    assert len(train._code_fingerprint()) == 64
    assert "features/extract.py" in inspect.getsource(train._code_fingerprint) and extract.__file__.endswith(
        os.path.join("features", "extract.py"))
