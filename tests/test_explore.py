"""Exploration on real photos (test_search.py's corpus: 4 scenes x 6 edited copies, a planted noise image,
a truncated JPEG): clusters recover the scenes, the noise image is the top outlier, the statistics count
what is there, and the HTML report loads in a real headless browser with every section and no errors."""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from imgsim_fast.catalog.store import Catalog
from imgsim_fast.jobs.explore import choose_k, explore, kmeans, pca_2d, silhouette
from test_search import corpus_or_skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return corpus_or_skip(tmp_path_factory)


def adjusted_rand_index(a, b) -> float:
    """Hubert & Arabie (1985): 1 for the same partition, ~0 for a random one."""
    a, b = np.unique(a, return_inverse=True)[1], np.unique(b, return_inverse=True)[1]
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)

    def comb2(x):
        return (x * (x - 1) / 2).sum()

    sum_ij, sum_a, sum_b = comb2(table), comb2(table.sum(1)), comb2(table.sum(0))
    expected = sum_a * sum_b / comb2(np.array([len(a)]))
    return float((sum_ij - expected) / (0.5 * (sum_a + sum_b) - expected))


def _scene_partition(exp, truth):
    photos = [i for i, p in enumerate(exp.paths) if p in truth]
    return [truth[exp.paths[i]] for i in photos], [int(exp.labels[i]) for i in photos]


# ---------------------------------------------------------------------------------------------------
# Building blocks on synthetic data (seeded)


def test_kmeans_and_silhouette_find_separated_blobs():
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(5, 16)) * 10
    x = np.concatenate([c + rng.normal(size=(40, 16)) for c in centres]).astype(np.float32)
    truth = np.repeat(np.arange(5), 40)
    labels, c, inertia = kmeans(x, 5, seed=1)
    assert adjusted_rand_index(truth, labels) == 1.0
    k, scores = choose_k(x, seed=0)
    assert k == 5, scores  # a wrong k scores lower: 4 merges two blobs, 6 splits one
    assert silhouette(x, truth) > 0.7 > silhouette(x, rng.permutation(truth))
    # Sizes 1 and 2 and k = n: no crash, every point its own cluster.
    assert choose_k(x[:2]) == (1, {})
    labels, _, inertia = kmeans(x[:7], 7, seed=0)
    assert sorted(labels) == list(range(7)) and inertia == pytest.approx(0, abs=1e-3)


def test_pca_map_matches_the_dominant_axes():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 8)) * [10, 3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    xy, explained = pca_2d(x)
    assert abs(np.corrcoef(xy[:, 0], x[:, 0])[0, 1]) > 0.99 and abs(np.corrcoef(xy[:, 1], x[:, 1])[0, 1]) > 0.99
    assert explained[0] > 0.85 and explained[0] + explained[1] > 0.99
    xy2, _ = pca_2d(x[:5])  # n < d: the SVD branch, same signs rule
    assert xy2.shape == (5, 2)


# ---------------------------------------------------------------------------------------------------
# Real photos


@pytest.fixture(scope="module")
def exp_auto(corpus):
    with Catalog(corpus["catalog"]) as cat:
        return explore(cat, seed=0)


def test_clusters_recover_the_scenes_with_embeddings(corpus, exp_auto):
    truth = corpus["truth"]
    assert exp_auto.features == "embed:efficientnet-lite0"
    scenes, labels = _scene_partition(exp_auto, truth)
    # k chosen by silhouette: the scenes, nearly. Measured: k = 6, the noise image alone and one scene's two
    # most degraded copies (JPEG q40, blur) split from its other four: ARI 0.91. Merging two scenes gives
    # ~0.7, k = 2 ~0.4, a random labelling ~0: 0.85 fails each of those.
    assert adjusted_rand_index(scenes, labels) >= 0.85, (exp_auto.k, exp_auto.silhouettes)
    assert 4 <= exp_auto.k <= 7
    # No cluster mixes two scenes.
    for c in exp_auto.clusters:
        assert len({truth.get(exp_auto.paths[i], "odd") for i in c.members}) == 1
    with Catalog(corpus["catalog"]) as cat:
        given = explore(cat, k=4, seed=3)
    assert given.k == 4 and given.k_rule == "given"
    assert adjusted_rand_index(*_scene_partition(given, truth)) == 1.0
    # Representatives come from their own cluster, nearest the centre first.
    for c in given.clusters:
        assert set(c.representatives) <= set(c.members) and c.members[:len(c.representatives)] == c.representatives


def test_clusters_fall_back_to_hashes(corpus):
    with Catalog(corpus["hash_catalog"]) as cat:
        exp = explore(cat, k=5, seed=0)
    assert exp.features == "hash:phash-8-fast"
    # k = 5: the four scenes and the noise image, which under Hamming distance is ~32 bits from
    # everything and so takes a cluster of its own (k = 4 then merges two scenes, as k-means should).
    assert adjusted_rand_index(*_scene_partition(exp, corpus["truth"])) == 1.0
    assert [c.size for c in exp.clusters] == [6, 6, 6, 6, 1]


def test_planted_odd_image_is_the_top_outlier(corpus, exp_auto):
    top = [exp_auto.paths[i] for i, _ in exp_auto.outliers]
    assert top[0] == corpus["noise"]
    scores = [s for _, s in exp_auto.outliers]
    assert scores == sorted(scores, reverse=True) and scores[0] > 2 * scores[1]
    with Catalog(corpus["hash_catalog"]) as cat:
        hexp = explore(cat, k=4)
    assert hexp.paths[hexp.outliers[0][0]] == corpus["noise"]


def test_statistics(corpus, exp_auto):
    s = exp_auto.stats
    assert s["files"] == 26 and s["readable"] == 25 and s["corrupt"] == 1
    assert s["corrupt_files"][0]["path"] == corpus["corrupt"]
    assert s["formats"] == {"JPEG": 16, "PNG": 9}
    assert s["orientation"]["landscape"] == 25
    # 24 photos each have 5 near-copies; the noise image has none.
    nd = s["near_duplicates"]
    assert nd["files_with_a_near_duplicate"] == 24 and nd["rate"] == pytest.approx(24 / 25, abs=1e-3)
    assert s["bytes"]["total"] == sum(os.path.getsize(os.path.join(corpus["root"], f))
                                      for f in os.listdir(corpus["root"]))
    d = exp_auto.to_dict()
    json.dumps(d)  # JSON-ready
    assert len(d["files"]) == 25 and sum(c["size"] for c in d["clusters"]) == 25


# ---------------------------------------------------------------------------------------------------
# The HTML report


@pytest.fixture(scope="module")
def report(corpus, exp_auto, tmp_path_factory):
    from imgsim_fast.reports.explore_html import write_report

    out = tmp_path_factory.mktemp("report") / "report.html"
    return write_report(exp_auto, str(out), workers=1)


def test_report_is_self_contained(report, exp_auto):
    html_path, json_path = report
    with open(html_path, encoding="utf-8") as f:
        page = f.read()
    for sec in ("stats", "clusters", "outliers", "map"):
        assert f'<section id="{sec}">' in page
    # Nothing fetched from elsewhere: every image is a data: URI, no external scripts or styles.
    srcs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert srcs and all(s.startswith(("data:image/jpeg;base64,", "#", "report.json")) for s in srcs), srcs[:5]
    assert page.count("data:image/jpeg;base64,") >= 25 + len(exp_auto.outliers)  # the map has every file
    with open(json_path, encoding="utf-8") as f:
        assert json.load(f) == json.loads(json.dumps(exp_auto.to_dict()))


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _load_in_browser(path: str) -> tuple[str, list[str]]:
    """(DOM after load, console messages) from headless Chromium."""
    exe = _chromium()
    r = subprocess.run([exe, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
                        "--virtual-time-budget=5000", "--dump-dom", "file://" + os.path.abspath(path)],
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    console = [ln for ln in r.stderr.splitlines() if ":CONSOLE" in ln]
    return r.stdout, console


@pytest.mark.skipif(not _chromium(), reason="headless browser check needs Chromium: apt-get install -y chromium "
                                             "(scripts/setup.sh --test installs it)")
def test_report_loads_in_headless_chromium(report, exp_auto, tmp_path):
    # The check is not vacuous: a page with a script error does show up as a console message.
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>")
    _, console = _load_in_browser(str(bad))
    assert any("undefinedFunction" in ln for ln in console)

    dom, console = _load_in_browser(report[0])
    assert console == []
    body = re.search(r"<body([^>]*)>", dom).group(1)
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body))
    # Set by the page's own script on load: it ran, found every section, every <img> decoded.
    assert attrs.get("checked") == "yes", body
    assert attrs["sections"] == "stats clusters outliers map"
    assert attrs["errors"] == "0" and attrs["broken"] == "0"
    n_imgs = sum(len(c.representatives) for c in exp_auto.clusters) + len(exp_auto.outliers)
    assert int(attrs["images"]) == n_imgs and int(attrs["map-items"]) == len(exp_auto.paths)


def test_cli_explore(corpus, tmp_path, capsys):
    from imgsim_fast.cli.main import main

    out = tmp_path / "r.html"
    assert main(["explore", "--catalog", corpus["hash_catalog"], "--k", "5", "--out", str(out), "--workers", "1"]) == 0
    assert "25 images, 5 clusters (6, 6, 6, 6, 1)" in capsys.readouterr().out
    with open(tmp_path / "r.json") as f:
        assert json.load(f)["k"] == 5
