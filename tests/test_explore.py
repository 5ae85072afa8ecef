"""Exploration on real photos (test_search.py's corpus: 4 scenes x 6 edited copies, a planted noise image,
a truncated JPEG; and a structureless set of distinct photos): density clusters find the 4 scenes with no
k given and say "no clear cluster structure" where there is none; --k still forces k-means; the noise
image is the top outlier; the statistics count what is there; the map keeps neighbours better than PCA;
and the HTML report loads in a real headless browser with every section, every member reachable."""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from imgsim_fast.catalog.store import Catalog
from imgsim_fast.jobs.explore import NO_STRUCTURE, explore
from imgsim_fast.jobs.explore_clusters import (core_distances, density_clusters, kmeans, mutual_reachability_mst,
                                               pca, persistence)
from conftest import CHROMIUM, needs_browser, sync_api
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


def _blobs(seed=5, k=5, per=40, dim=16, spread=10.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * spread
    x = np.concatenate([c + rng.normal(size=(per, dim)) for c in centres])
    return x, np.repeat(np.arange(k), per)


def test_kmeans_finds_separated_blobs():
    x, truth = _blobs()
    labels, c, inertia = kmeans(x.astype(np.float32), 5, seed=1)
    assert adjusted_rand_index(truth, labels) == 1.0
    labels, _, inertia = kmeans(x[:7].astype(np.float32), 7, seed=0)  # k = n: every point its own cluster
    assert sorted(labels) == list(range(7)) and inertia == pytest.approx(0, abs=1e-3)


def test_density_clusters_find_blobs_and_nothing_in_noise():
    x, truth = _blobs()
    found = density_clusters(x)
    assert adjusted_rand_index(truth, found.labels) == 1.0 and len(found.persistence) == 5
    assert min(found.persistence.values()) > 2  # blobs 10 sigma apart: far past PERSISTENCE_MIN (1.2)
    # Gaussian noise in 32 dimensions: HDBSCAN itself still returns clusters (so the test is not vacuous),
    # but none persists (measured ratios 1.00-1.01): nothing is kept.
    noise = np.random.default_rng(0).normal(size=(500, 32))
    none = density_clusters(noise)
    assert none.rejected and max(none.rejected) < 1.1
    assert (none.labels == -1).all() and none.persistence == {}
    # Too few points for a cluster of 5.
    assert (density_clusters(x[:4]).labels == -1).all()


def test_mutual_reachability_mst_equals_brute_force():
    from scipy.sparse.csgraph import minimum_spanning_tree

    rng = np.random.default_rng(1)
    for n in (1, 2, 7, 63, 65):
        x = rng.normal(size=(n, 5))
        core = core_distances(x, 3)
        src, dst, w = mutual_reachability_mst(x, core)
        assert len(w) == n - 1 and np.all(np.diff(w) >= 0)
        if n < 2:
            continue
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        mr = np.maximum(d, np.maximum(core[:, None], core[None, :]))
        # core distances: the 3rd nearest counting the point itself, as HDBSCAN's min_samples
        assert np.allclose(core, np.sort(d, axis=1)[:, min(3, n) - 1])
        np.fill_diagonal(mr, 0)
        assert w.sum() == pytest.approx(minimum_spanning_tree(mr).sum(), rel=1e-9)
        assert np.allclose(mr[src, dst], w)


def test_persistence_of_two_groups_is_their_gap_over_their_width():
    # Two groups of 5 points on a line, 0.1 apart inside, 10 apart between: with min_samples 2, each is
    # whole at 0.1 and meets the other (5 outside points) at 10 - 0.4 = 9.6: ratio 96.
    x = np.concatenate([np.arange(5) * 0.1, 10 + np.arange(5) * 0.1])[:, None]
    labels = np.repeat([0, 1], 5)
    spans = persistence(x, labels, min_samples=2)
    assert spans[0] == pytest.approx((0.1, 9.6)) and spans[1] == pytest.approx((0.1, 9.6))
    # One group and stragglers ever farther apart, each joining alone: the group dies when the 2nd one
    # joins (at 12 - 5 = 7; the 1st came at 5 - 0.4 = 4.6), although it never meets a group of 2.
    x = np.concatenate([np.arange(5) * 0.1, [5, 12, 25, 45, 80]])[:, None]
    spans = persistence(x, np.array([0] * 5 + [-1] * 5), min_samples=2)
    assert spans[0] == pytest.approx((0.1, 7.0))


def test_pca_matches_the_dominant_axes():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 8)) * [10, 3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    xy, explained = pca(x, 2)
    assert abs(np.corrcoef(xy[:, 0], x[:, 0])[0, 1]) > 0.99 and abs(np.corrcoef(xy[:, 1], x[:, 1])[0, 1]) > 0.99
    assert explained[0] > 0.85 and explained[0] + explained[1] > 0.99
    xy2, _ = pca(x[:5], 2)  # n < d: the SVD branch, same signs rule
    assert xy2.shape == (5, 2)


def test_umap_map_keeps_neighbours_better_than_pca():
    from imgsim_fast.jobs.explore_map import layout_2d, trustworthiness

    # 20 groups in 64 dimensions: PCA's two axes overlap most of them. Measured: UMAP 0.986, PCA 0.899
    # (5 neighbours); a layout no better than PCA fails.
    x, _ = _blobs(seed=3, k=20, per=30, dim=64, spread=3.0)
    xy, how = layout_2d(x, "umap", seed=0)
    assert how.startswith("UMAP")
    t_umap, t_pca = trustworthiness(x, xy), trustworthiness(x, pca(x, 2)[0])
    assert t_umap > 0.97 and t_umap > t_pca + 0.05, (t_umap, t_pca)
    assert np.array_equal(layout_2d(x, "umap", seed=0)[0], xy)  # seeded: the same map every time
    xy_small, how = layout_2d(x[:10], "umap")
    assert how.startswith("PCA") and "fewer than" in how and xy_small.shape == (10, 2)
    with pytest.raises(ValueError, match="map method"):
        layout_2d(x, "tsne")


# ---------------------------------------------------------------------------------------------------
# Real photos


@pytest.fixture(scope="module")
def exp_auto(corpus):
    with Catalog(corpus["catalog"]) as cat:
        return explore(cat, seed=0, map_method="pca")


def test_density_clusters_find_the_four_scenes_with_embeddings(corpus, exp_auto):
    truth = corpus["truth"]
    assert exp_auto.features == "embed:efficientnet-lite0"
    # No k given: exactly the 4 scenes, each cluster one whole scene (ARI 1), the noise image in none.
    assert exp_auto.k == 4 and exp_auto.structure and [c.size for c in exp_auto.clusters] == [6, 6, 6, 6]
    scenes, labels = _scene_partition(exp_auto, truth)
    assert adjusted_rand_index(scenes, labels) == 1.0
    assert [exp_auto.paths[i] for i in exp_auto.unclustered] == [corpus["noise"]]
    assert all(c.persistence >= 1.2 for c in exp_auto.clusters)
    assert exp_auto.verdict.startswith("4 clear clusters")
    # Representatives come from their own cluster, nearest the centre first.
    for c in exp_auto.clusters:
        assert set(c.representatives) <= set(c.members) and c.members[:len(c.representatives)] == c.representatives


def test_k_given_still_forces_kmeans(corpus):
    with Catalog(corpus["catalog"]) as cat:
        given = explore(cat, k=4, seed=3, map_method="pca")
    assert given.k == 4 and given.k_rule.startswith("given") and given.unclustered == []  # every file placed
    assert adjusted_rand_index(*_scene_partition(given, corpus["truth"])) == 1.0
    assert all(c.persistence is None for c in given.clusters)


def test_clusters_fall_back_to_hashes(corpus):
    with Catalog(corpus["hash_catalog"]) as cat:
        exp = explore(cat, seed=0, map_method="pca")
        forced = explore(cat, k=5, seed=0, map_method="pca")
    assert exp.features == "hash:phash-8-fast"
    assert exp.k == 4 and adjusted_rand_index(*_scene_partition(exp, corpus["truth"])) == 1.0
    # k = 5 by hand: the four scenes and the noise image, ~32 bits from everything, in a cluster of its own.
    assert [c.size for c in forced.clusters] == [6, 6, 6, 6, 1]


@pytest.fixture(scope="module")
def distinct(photos, tmp_path_factory):
    """The real photos (distinct wallpapers, one per picture), small, indexed with pHash and embeddings."""
    from PIL import Image

    from imgsim_fast.catalog.indexer import index

    base = tmp_path_factory.mktemp("distinct")
    root = base / "photos"
    root.mkdir()
    for p in photos:
        im = Image.open(p).convert("RGB")
        im.thumbnail((320, 320))
        im.save(root / (os.path.splitext(os.path.basename(p))[0] + ".jpg"), quality=90)
    cat = str(base / "cat.sqlite")
    index([str(root)], cat, kinds=("phash",), embed_model="efficientnet-lite0", workers=1)
    return cat


@pytest.mark.parametrize("features", ["auto", "phash"])
def test_structureless_photos_say_so(distinct, features):
    with Catalog(distinct) as cat:
        exp = explore(cat, features=features, map_method="pca")
        assert len(exp.paths) >= 5
        # With k forced, k-means still cuts them into groups: the density rule is what says "none".
        assert explore(cat, features=features, k=3, map_method="pca").k == 3
    assert exp.k == 0 and not exp.structure and exp.clusters == []
    assert exp.verdict.startswith(NO_STRUCTURE) and len(exp.unclustered) == len(exp.paths)


def test_planted_odd_image_is_the_top_outlier(corpus, exp_auto):
    top = [exp_auto.paths[i] for i, _ in exp_auto.outliers]
    assert top[0] == corpus["noise"]
    scores = [s for _, s in exp_auto.outliers]
    assert scores == sorted(scores, reverse=True) and scores[0] > 2 * scores[1]
    with Catalog(corpus["hash_catalog"]) as cat:
        hexp = explore(cat, k=4, map_method="pca")
    assert hexp.paths[hexp.outliers[0][0]] == corpus["noise"]


def test_statistics(corpus, exp_auto):
    s = exp_auto.stats
    assert s["files"] == 26 and s["readable"] == 25 and s["corrupt"] == 1
    assert s["corrupt_files"][0]["path"] == corpus["corrupt"]
    assert s["formats"] == {"JPEG": 16, "PNG": 9}
    assert s["orientation"]["landscape"] == 25
    # 24 photos each have 5 near-copies; the noise image has none (dedup's pHash rule on the catalog's
    # pHash: this catalog holds no dedup features).
    nd = s["near_duplicates"]
    assert nd["files_with_a_duplicate"] == 24 and nd["rate"] == pytest.approx(24 / 25, abs=1e-3)
    assert nd["test"].startswith("dedup's pHash rule")
    assert s["bytes"]["total"] == sum(os.path.getsize(os.path.join(corpus["root"], f))
                                      for f in os.listdir(corpus["root"]))
    d = exp_auto.to_dict()
    json.dumps(d)  # JSON-ready
    assert len(d["files"]) == 25 and sum(c["size"] for c in d["clusters"]) + len(d["unclustered"]) == 25


# ---------------------------------------------------------------------------------------------------
# The HTML report


@pytest.fixture(scope="module")
def exp_few_shown(corpus):
    """Two representatives per cluster, so each cluster's "all 6" list is drawn by the page's script."""
    with Catalog(corpus["catalog"]) as cat:
        return explore(cat, seed=0, map_method="pca", n_representatives=2)


@pytest.fixture(scope="module")
def report(exp_few_shown, tmp_path_factory):
    from imgsim_fast.reports.explore_html import write_report

    out = tmp_path_factory.mktemp("report") / "report.html"
    return write_report(exp_few_shown, str(out), workers=1)


def test_report_thumbnails_are_files_beside_it(report, exp_few_shown):
    html_path, json_path = report
    with open(html_path, encoding="utf-8") as f:
        page = f.read()
    for sec in ("stats", "clusters", "outliers", "map"):
        assert f'<section id="{sec}">' in page
    # Nothing fetched from elsewhere, nothing inline: images are files in report_files/, one per file.
    srcs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert srcs and all(s.startswith(("report_files/", "#", "report.json")) for s in srcs), srcs[:5]
    assert "base64" not in page
    folder = os.path.join(os.path.dirname(html_path), "report_files")
    assert sorted(f for f in os.listdir(folder) if f.endswith(".jpg")) == sorted(
        f"{i}.jpg" for i in range(len(exp_few_shown.paths)))
    assert "Sizes: 6, 6, 6, 6." in page and "1 image in no clear cluster" in page
    with open(json_path, encoding="utf-8") as f:
        doc = json.load(f)
    assert doc["clusters"] == json.loads(json.dumps(exp_few_shown.to_dict()))["clusters"]
    assert doc["thumbnails"] == "report_files"


def _synthetic(n: int, k: int):
    """An Exploration of n files in k clusters, without images (for the page's size and paging)."""
    from imgsim_fast.jobs.explore import Cluster, Exploration

    labels = np.arange(n) % (k + 1) - 1  # every (k+1)th file in no cluster
    clusters = [Cluster(j, int((labels == j).sum()), np.flatnonzero(labels == j).tolist(),
                        np.flatnonzero(labels == j)[:6].tolist(), 0.1, 1.5) for j in range(k)]
    xy = np.random.default_rng(0).normal(size=(n, 2))
    return Exploration([f"/photos/2024/holiday/IMG_{i:05d}.jpg" for i in range(n)], list(range(n)), "embed:x", k,
                       "rule", True, "verdict", labels, clusters, [(0, 1.0)], "rule", xy, "UMAP", {}, [], {}, {})


def test_report_of_ten_thousand_files_stays_small():
    from imgsim_fast.reports.explore_html import render_html

    exp = _synthetic(10_000, 40)
    page = render_html(exp, thumbs="r_files", missing=[False] * 10_000)
    # Every file is in the page's data (members, map), but as one short row, not a figure: measured
    # 0.74 MB; a figure per file (~250 bytes of HTML each, or a base64 thumbnail) would pass 2.5 MB.
    assert len(page.encode()) < 1.2e6
    assert page.count("<img") == 40 * 6 + 1  # representatives and the outlier; the rest drawn when asked
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S).group(1))
    listed = sorted(i for v in data["lists"].values() for i in v)
    assert listed == list(range(10_000)) and len(data["files"]) == 10_000  # every file reachable


def _load_in_browser(path: str) -> tuple[str, list[str]]:
    """(DOM after load, console messages) from headless Chromium."""
    r = subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
                        "--virtual-time-budget=5000", "--dump-dom", "file://" + os.path.abspath(path)],
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    console = [ln for ln in r.stderr.splitlines() if ":CONSOLE" in ln]
    return r.stdout, console


@pytest.mark.skipif(CHROMIUM is None, reason="headless browser check needs Chromium: apt-get install -y chromium "
                                             "(scripts/setup.sh --test installs it)")
def test_report_loads_in_headless_chromium(report, exp_few_shown, tmp_path):
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
    n_imgs = sum(len(c.representatives) for c in exp_few_shown.clusters) + len(exp_few_shown.outliers)
    assert int(attrs["images"]) == n_imgs and int(attrs["map-items"]) == len(exp_few_shown.paths)


@needs_browser
def test_every_member_is_reachable_in_the_page(report, exp_few_shown, tmp_path):
    from imgsim_fast.reports.explore_html import write_report

    big = tmp_path / "big.html"
    exp = _synthetic(1_200, 1)
    exp.labels[:] = 0  # one cluster of all 1,200 (no images: placeholders)
    exp.clusters[0].size, exp.clusters[0].members = 1200, list(range(1200))
    write_report(exp, str(big), workers=1)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        page = b.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        def shows(selector, n):  # the toggle event runs after the click returns: wait for its figures
            page.wait_for_function("([s, n]) => document.querySelectorAll(s).length === n", arg=[selector, n])
            return True

        page.goto("file://" + os.path.abspath(report[0]))
        for c in exp_few_shown.clusters:  # each cluster's "all 6" lists all of its members
            page.click(f'details[data-list="c{c.id}"] summary')
            assert shows(f'details[data-list="c{c.id}"] figure', c.size)
            names = page.eval_on_selector_all(f'details[data-list="c{c.id}"] figcaption', "e => e.map(x => x.title)")
            assert names == [exp_few_shown.paths[i] for i in c.members]
        page.click('details[data-list="u"] summary')
        assert shows('details[data-list="u"] figure', 1)
        page.goto("file://" + str(big))  # paged: 500 at a time, then the rest on request
        page.click('details[data-list="c0"] summary')
        count = 'details[data-list="c0"] figure'
        assert shows(count, 500)
        page.click('details[data-list="c0"] button.more')
        assert shows(count, 1000)
        page.click('details[data-list="c0"] button.more')
        assert shows(count, 1200)
        assert not page.query_selector('details[data-list="c0"] button.more')
        b.close()
    assert errors == []


def test_cli_explore(corpus, tmp_path, capsys):
    from imgsim_fast.cli.main import main

    out = tmp_path / "r.html"
    assert main(["explore", "--catalog", corpus["hash_catalog"], "--out", str(out), "--workers", "1", "--map", "pca",
                 "--no-progress"]) == 0
    assert "25 images, features hash:phash-8-fast: 4 clear clusters" in capsys.readouterr().out
    assert main(["explore", "--catalog", corpus["hash_catalog"], "--k", "5", "--out", str(out), "--workers", "1",
                 "--map", "pca", "--no-progress"]) == 0
    assert "5 clusters (k given) (sizes 6, 6, 6, 6, 1)" in capsys.readouterr().out
    with open(tmp_path / "r.json") as f:
        assert json.load(f)["k"] == 5
    # More clusters asked than the files can make: the count said is the count listed.
    assert main(["explore", "--catalog", corpus["hash_catalog"], "--k", "100", "--out", str(out), "--workers", "1",
                 "--map", "pca", "--no-progress"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    said = int(line.split(": ", 1)[1].split()[0])
    assert "(k 100 given;" in line and said == line.split("(sizes ")[1].count(",") + 1 and said <= 25, line


def test_cli_explore_leaves_a_data_file_of_the_users_alone(corpus, tmp_path, capsys):
    # The report's data goes beside it (notes.html -> notes.json) unless --json-out names it: a notes.json of
    # the user's own is refused before any work, in one line, and left as it was (a report's own is replaced,
    # test_cli_explore).
    from imgsim_fast.cli.main import main

    mine = tmp_path / "notes.json"
    mine.write_text('{"shopping": ["milk"]}')
    argv = ["explore", "--catalog", corpus["hash_catalog"], "--out", str(tmp_path / "notes.html"), "--workers", "1",
            "--map", "pca", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was not written by imgsim explore" in err, err
    assert mine.read_text() == '{"shopping": ["milk"]}' and not (tmp_path / "notes.html").exists()
    assert main(argv + ["--json-out", str(tmp_path / "data.json")]) == 0
    assert mine.read_text() == '{"shopping": ["milk"]}' and (tmp_path / "data.json").exists()


@pytest.mark.parametrize("ext", ["csv", "parquet", "json"])
def test_cli_explore_out_table(corpus, tmp_path, capsys, ext):
    """--out with .csv, .parquet or .json: one row per file, the same rows as Exploration.to_rows()."""
    import csv

    from imgsim_fast.catalog.store import Catalog
    from imgsim_fast.cli.main import main
    from imgsim_fast.jobs.explore import ROW_COLUMNS, explore

    out = tmp_path / f"files.{ext}"
    assert main(["explore", "--catalog", corpus["hash_catalog"], "--out", str(out), "--workers", "1", "--map", "pca",
                 "--no-progress"]) == 0
    assert f"table:  {out}" in capsys.readouterr().out
    with Catalog(corpus["hash_catalog"]) as cat:
        rows = explore(cat, map_method="pca").to_rows()
    if ext == "parquet":
        import pyarrow.parquet as pq

        got = pq.read_table(out).to_pylist()
    elif ext == "json":
        with open(out) as f:
            got = json.load(f)
    else:
        with open(out, newline="") as f:
            got = list(csv.DictReader(f))
        rows = [{c: "" if r[c] is None else str(int(r[c]) if isinstance(r[c], bool) else r[c]) for c in ROW_COLUMNS}
                for r in rows]  # flags as 1/0, as every CSV of the project writes them
    assert len(got) == 25 and [r["path"] for r in got] == [r["path"] for r in rows]
    assert [(r["cluster"], r["representative"]) for r in got] == [(r["cluster"], r["representative"]) for r in rows]


def test_cli_explore_writes_nothing_in_the_photo_folder(corpus, tmp_path, capsys, xdg_data_home, monkeypatch):
    """DIR's catalog is found in the data folder, and the report goes beside it there by default."""
    from imgsim_fast.catalog.indexer import index
    from imgsim_fast.catalog.store import default_catalog_path
    from imgsim_fast.cli.main import main

    root = tmp_path / "photos"
    shutil.copytree(corpus["root"], root)
    index([str(root)], None, kinds=("phash",), workers=1)
    before = sorted(os.listdir(root))
    monkeypatch.chdir(root)  # run from inside the photo folder: still nothing written there
    assert main(["explore", "--workers", "1", "--map", "pca", "--no-progress"]) == 0
    report = os.path.join(os.path.dirname(default_catalog_path(str(root))), "explore.html")
    assert f"report: {report}" in capsys.readouterr().out
    assert os.path.exists(report) and str(xdg_data_home) in report
    assert sorted(os.listdir(root)) == before
    monkeypatch.chdir(tmp_path)
    assert main(["explore", str(root), "--workers", "1", "--map", "pca", "--no-progress"]) == 0  # DIR named
    assert main(["explore", str(tmp_path / "nothing"), "--no-progress"]) == 2
    assert "no such folder" in capsys.readouterr().err
