"""The page probe (features/embedding/pages.py): the shipped weights, its arithmetic against scikit-learn's,
and the page scores travelling with the features they belong to."""
import dataclasses

import numpy as np
import pytest

from imgsim_fast.features.embedding import pages
from imgsim_fast.features.embedding.pages import PageProbe, fit_probe, load_probe, page_scores
from imgsim_fast.features.extract import THUMB_SIDE, Features


def test_the_shipped_probe_is_for_the_default_backbone():
    probe = load_probe()
    assert probe.meta["model"] == "efficientnet-lite0" and probe.w.shape == (1280,), probe.meta
    # Trained on pages and pictures of the tune half, both present.
    assert {f"{k} ({w})" for k in ("screenshot", "slide", "chart", "build", "ordinary")
            for w in ("corpus", "chained")} <= probe.meta["oof_tune"].keys()


def test_scores_are_scikit_learns_probabilities_on_unit_vectors(tmp_path):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16)).astype(np.float32)
    y = x[:, 0] + 0.3 * rng.normal(size=200) > 0
    probe = fit_probe(x, y, {"model": "m"})
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    want = LogisticRegression(C=pages.PROBE_C, max_iter=5000).fit(unit, y).predict_proba(unit)[:, 1]
    np.testing.assert_allclose(probe.scores(x), want, atol=1e-5)
    np.testing.assert_allclose(probe.scores(3 * x), probe.scores(x), atol=1e-6)  # a vector's length says nothing
    # A file without an embedding (a zero row), or with a broken one, is not known to be a picture: it scores
    # as a page.
    assert probe.scores(np.zeros((1, 16), np.float32))[0] == 1.0
    broken = x[:3].copy()
    broken[0, 2], broken[1, 5] = np.nan, np.inf
    got = probe.scores(broken)
    assert got[:2].tolist() == [1.0, 1.0] and got[2] == probe.scores(x[2:3])[0]
    path = str(tmp_path / "p.npz")
    probe.save(path)
    back = PageProbe.load(path)
    assert np.array_equal(back.scores(x), probe.scores(x)) and back.meta == probe.meta
    with pytest.raises(ValueError, match="shape"):
        probe.scores(np.zeros((2, 15), np.float32))


def test_page_scores_only_for_the_probes_backbone():
    x = np.random.default_rng(1).normal(size=(3, 1280)).astype(np.float32)
    assert page_scores(x, "efficientnet-lite0").shape == (3,)
    assert page_scores(x, "clip-vit-b32") is None and page_scores(None, "efficientnet-lite0") is None


def test_a_subset_of_features_keeps_each_rows_thumbnail_and_page_score():
    # train.subset once left the thumbnails whole: the held-out comparison checked pairs against other rows'.
    from imgsim_fast.features.extract import FileFacts
    from imgsim_fast.train import subset

    n = 4
    facts = [FileFacts(f"f{k}.png", 1, 0.0, 8, 8, "PNG", 64, f"d{k}") for k in range(n)]
    thumbs = np.arange(n, dtype=np.uint8)[:, None, None] * np.ones((1, THUMB_SIDE, THUMB_SIDE), np.uint8)
    f = Features(facts, np.zeros((n, 8, 1), np.uint64), np.eye(n, dtype=np.float32), model="m",
                 centre_embeddings=np.eye(n, dtype=np.float32), thumbs=thumbs,
                 page_scores=np.arange(n, dtype=np.float32) / 10)
    s = subset(f, np.array([2, 0]))
    assert [x.path for x in s.facts] == ["f2.png", "f0.png"]
    assert s.thumbs[:, 0, 0].tolist() == [2, 0] and s.page_scores.tolist() == pytest.approx([0.2, 0.0])
    assert s.embeddings.argmax(axis=1).tolist() == [2, 0]


def test_the_floors_are_lifted_only_where_both_files_are_pictures():
    from imgsim_fast.features.extract import FileFacts
    from imgsim_fast.jobs.dedup.detect import PairJudge

    n = 3
    facts = [FileFacts(f"f{k}.png", 1, 0.0, 8, 8, "PNG", 64, f"d{k}") for k in range(n)]
    f = Features(facts, np.zeros((n, 8, 1), np.uint64), thumbs=np.zeros((n, THUMB_SIDE, THUMB_SIDE), np.uint8),
                 page_scores=np.array([0.1, 0.2, 0.9], np.float32))
    judge = PairJudge(f, "phash")
    # Two pictures; a picture and a page (a slide made from a photo beside the photo), either way round.
    assert judge._two_pictures(np.array([0, 0, 2]), np.array([1, 2, 1])).tolist() == [True, False, False]
    assert not PairJudge(dataclasses.replace(f, page_scores=None), "phash")._two_pictures(
        np.array([0]), np.array([1])).any()
    # Scores that do not line up with the rows are refused, not used for other files.
    with pytest.raises(ValueError, match="page scores"):
        PairJudge(dataclasses.replace(f, page_scores=f.page_scores[:2]), "phash")
