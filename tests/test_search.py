"""Similar-image search on real photos: edited copies come first, for hashes and embeddings, by one query
or a batch; filters apply before ranking; text queries through a tiny CLIP; the contact sheet.

The corpus (built once per session, shared with test_explore.py): 4 distinct wallpapers, each as 6 mildly
edited small copies (JPEG quality, brightness, contrast, crop, blur, size), one planted noise image and
one truncated JPEG, indexed with pHash and EfficientNet-Lite0 embeddings.
"""
import functools
import json
import os

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from conftest import PHOTO_DIR
from imgsim_fast.catalog.store import Catalog, embedding_array_name

SCENES = {  # four visibly different pictures (a flower, a fish, a creature on black, a desert)
    "calla": "ukui-wallpapers/usr_share_backgrounds_calla.png",
    "goldfish": "ukui-wallpapers/usr_share_backgrounds_goldfish.png",
    "mouse": "ukui-wallpapers/usr_share_backgrounds_the-mouse.jpg",
    "desert": "ukui-wallpapers/usr_share_backgrounds_desert.png",
}
WIDTH = 320


def _variants(im: Image.Image) -> dict:
    """Six copies of one picture with the edits a collection accumulates; all stay within a few pHash
    bits of each other (dedup.py's measurements), and look alike to a CNN."""
    w, h = im.size
    c = int(0.04 * w)
    return {
        "orig.jpg": (im, 92),
        "q40.jpg": (im, 40),
        "bright.png": (ImageEnhance.Brightness(im).enhance(1.15), None),
        "contrast.jpg": (ImageEnhance.Contrast(im).enhance(0.85), 85),
        "crop.jpg": (im.crop((c, c, w - c, h - c)).resize((w, h), Image.Resampling.LANCZOS), 88),
        "blur.png": (im.filter(ImageFilter.GaussianBlur(1.2)).resize((w * 3 // 4, h * 3 // 4)), None),
    }


def _save(im, path, q):
    if q is None:
        im.save(path)
    else:
        im.save(path, quality=q)


@functools.lru_cache(maxsize=None)
def build_corpus(base: str) -> dict:
    """Files under base/corpus, an indexed catalog, and held-out queries (not in the catalog)."""
    from imgsim_fast.catalog.indexer import index
    from imgsim_fast.io.loading import load_image

    root = os.path.join(base, "corpus")
    qdir = os.path.join(base, "queries")
    os.makedirs(root)
    os.makedirs(qdir)
    truth, queries = {}, {}
    for scene, rel in SCENES.items():
        im = load_image(os.path.join(PHOTO_DIR, rel), min_size=(WIDTH, WIDTH)).convert("RGB")
        im = im.resize((WIDTH, round(im.height * WIDTH / im.width)), Image.Resampling.LANCZOS)
        for name, (v, q) in _variants(im).items():
            p = os.path.join(root, f"{scene}-{name}")
            _save(v, p, q)
            truth[p] = scene
        # A held-out edit: darker, smaller, recompressed; never indexed.
        qp = os.path.join(qdir, f"{scene}-query.jpg")
        ImageEnhance.Brightness(im).enhance(0.9).resize((256, round(im.height * 256 / im.width))).save(qp, quality=70)
        queries[scene] = qp
    rng = np.random.default_rng(7)
    noise = os.path.join(root, "zz-noise.png")  # the planted odd one: like no other file
    Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(noise)
    corrupt = os.path.join(root, "broken.jpg")
    with open(os.path.join(root, "calla-orig.jpg"), "rb") as f:
        data = f.read()
    with open(corrupt, "wb") as f:
        f.write(data[:200])  # header only: a per-file error, counted in the statistics
    cat = os.path.join(base, "cat.sqlite")
    index([root], cat, kinds=("phash",), embed_model="efficientnet-lite0", workers=1)
    hcat = os.path.join(base, "hash-only.sqlite")  # the same files without embeddings
    index([root], hcat, kinds=("phash",), workers=1, pixel_digests=False)
    return {"root": root, "catalog": cat, "hash_catalog": hcat, "truth": truth, "queries": queries,
            "noise": noise, "corrupt": corrupt}


def corpus_or_skip(tmp_path_factory) -> dict:
    missing = [r for r in SCENES.values() if not os.path.exists(os.path.join(PHOTO_DIR, r))]
    if missing:
        pytest.skip(f"real photos missing ({missing[0]} under {PHOTO_DIR}): run scripts/fetch_photos.sh")
    return build_corpus(str(tmp_path_factory.getbasetemp() / "imgsim-search-corpus"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return corpus_or_skip(tmp_path_factory)


@pytest.fixture
def cat(corpus):
    with Catalog(corpus["catalog"]) as c:
        yield c


def _scene_files(corpus, scene):
    return {p for p, s in corpus["truth"].items() if s == scene}


# ---------------------------------------------------------------------------------------------------
# Edited copies first


@pytest.mark.parametrize("method", ["phash", "cnn"])
def test_held_out_query_returns_its_edited_copies_first(corpus, cat, method):
    from imgsim_fast.jobs.search import search

    for scene, q in corpus["queries"].items():
        assert cat.get(q) is None  # the query is not in the catalog
        res = search(cat, q, method=method, k=10)
        top = [h.path for h in res.hits]
        # All six copies before any other file: a do-nothing or random ranking fails this for 4 scenes.
        assert set(top[:6]) == _scene_files(corpus, scene), (method, scene, top)
        scores = [h.score for h in res.hits]
        assert scores == sorted(scores, reverse=True)
        assert [h.rank for h in res.hits] == list(range(1, len(top) + 1))
        if method == "phash":
            assert all(h.distance is not None and h.score == pytest.approx(1 - h.distance / 64) for h in res.hits)


def test_indexed_query_finds_itself_or_excludes_itself(corpus, cat):
    from imgsim_fast.jobs.search import search

    q = next(p for p, s in corpus["truth"].items() if s == "goldfish" and p.endswith("crop.jpg"))
    res = search(cat, q, method="cnn", k=6)
    assert res.hits[0].path == q and res.hits[0].score == pytest.approx(1.0, abs=1e-5)
    res = search(cat, q, method="cnn", k=5, exclude_self=True)
    assert q not in [h.path for h in res.hits] and len(res.hits) == 5
    assert {h.path for h in res.hits} == _scene_files(corpus, "goldfish") - {q}


def test_filters_apply_before_ranking(corpus, cat):
    """A filter that excludes the query's own scene but for PNGs still returns k results: filter first."""
    from imgsim_fast.catalog.query import Field
    from imgsim_fast.jobs.search import search

    res = search(cat, corpus["queries"]["desert"], method="phash", k=5, where=Field("format", "=", "PNG"))
    assert len(res.hits) == 5
    pngs = {r.path for r in cat.files("format = 'PNG'")}
    assert {h.path for h in res.hits} <= pngs
    assert {h.path for h in res.hits[:2]} == {p for p in _scene_files(corpus, "desert") if p.endswith(".png")}


def test_batch_equals_single_queries_and_writes_json(corpus, cat, tmp_path):
    from imgsim_fast.jobs.search import search, write_results

    qs = list(corpus["queries"].values()) + [corpus["corrupt"], os.path.join(corpus["root"], "calla-q40.jpg")]
    batch = search(cat, qs, method="cnn", k=8)  # a list: a batch
    assert [r.query for r in batch] == qs
    assert batch[4].error and not batch[4].hits  # the truncated JPEG: an error, the batch goes on
    for q, r in zip(qs, batch):
        if q == corpus["corrupt"]:
            continue
        one = search(cat, q, method="cnn", k=8)
        assert [h.path for h in r.hits] == [h.path for h in one.hits]
        np.testing.assert_allclose([h.score for h in r.hits], [h.score for h in one.hits], atol=1e-5)
    out = write_results(batch, str(tmp_path / "r.json"))
    with open(out) as f:
        doc = json.load(f)
    assert len(doc) == 6 and doc[0]["hits"][0]["path"] in _scene_files(corpus, "calla")


def test_parquet_needs_pyarrow(corpus, cat, tmp_path):
    from imgsim_fast.jobs.search import search, write_results

    res = search(cat, [corpus["queries"]["mouse"]], k=3)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        with pytest.raises(ValueError, match="pyarrow"):
            write_results(res, str(tmp_path / "r.parquet"))
        return
    t = pq.read_table(write_results(res, str(tmp_path / "r.parquet")))
    assert t.num_rows == 3


def test_missing_array_is_a_clear_error(corpus):
    from imgsim_fast.jobs.search import search

    with Catalog(corpus["hash_catalog"]) as c:
        with pytest.raises(ValueError, match="--embed efficientnet-lite0"):
            search(c, corpus["queries"]["calla"], method="cnn")
        with pytest.raises(ValueError, match="--method clip needs --model"):
            search(c, corpus["queries"]["calla"], method="clip")


# ---------------------------------------------------------------------------------------------------
# Text queries (a tiny random CLIP: the ranking is meaningless, the plumbing is not)


def test_text_query_ranks_by_clip_text_tower(corpus, tiny_clip, tmp_path):
    from imgsim_fast.features.embedding import embed_text
    from imgsim_fast.catalog.indexer import index
    from imgsim_fast.jobs.search import search

    catp = str(tmp_path / "clip.sqlite")
    index([corpus["root"]], catp, kinds=("phash",), embed_model=tiny_clip, workers=1, pixel_digests=False)
    with Catalog(catp) as c:
        res = search(c, text="a red car", k=30)  # method and model found from the catalog's one CLIP array
        assert res.method == "embed:" + tiny_clip
        fids, _, vecs = c.vectors(embedding_array_name(tiny_clip))
        t = embed_text("a red car", tiny_clip)[0]
        ref = {c.files(f"id = {int(f)}")[0].path: float(v @ t) for f, v in zip(fids, vecs)}
    assert len(res.hits) == len(ref) == 25  # every readable file, the broken one has no vector
    scores = [h.score for h in res.hits]
    assert scores == sorted(scores, reverse=True)
    # Brute force agrees (a ranking by anything but the text vector would not; ties within float noise).
    np.testing.assert_allclose(scores, [ref[h.path] for h in res.hits], atol=1e-5)
    np.testing.assert_allclose(scores, sorted(ref.values(), reverse=True), atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Contact sheet and CLI


def test_contact_sheet_layout(corpus, cat, tmp_path):
    from imgsim_fast.jobs.search import search
    from imgsim_fast.reports.sheet import contact_sheet, thumbnail

    q = corpus["queries"]["goldfish"]
    res = search(cat, q, method="cnn", k=7)
    out = str(tmp_path / "s.png")
    sheet = contact_sheet(q, res.hits, out, thumb=100, columns=4)
    im = Image.open(out)
    assert im.size == sheet.size == (4 * 112, 2 * (112 + 2 * 16))  # 1 query + 7 results in 2 rows of 4
    a = np.asarray(im.convert("RGB")).astype(int)
    # Top left holds the query's thumbnail (framed red), each cell a picture over a caption with dark text.
    qt = np.asarray(thumbnail(q, 100)).astype(int)
    h, w = qt.shape[:2]
    y, x = 6 + (100 - h) // 2, 6 + (100 - w) // 2
    assert np.abs(a[y:y + h, x:x + w] - qt).mean() < 1  # the query itself, pixel for pixel
    assert (a[3, 3:109] == [220, 40, 40]).all()
    for cell in range(8):
        x0, y0 = (cell % 4) * 112, (cell // 4) * 144
        caption = a[y0 + 108:y0 + 144, x0:x0 + 112]
        assert (caption.sum(2) < 200).sum() > 20, f"cell {cell} has no caption text"


def test_cli_search_single_batch_and_sheet(corpus, tmp_path, capsys):
    from imgsim_fast.cli.main import main

    q = corpus["queries"]["mouse"]
    assert main([ "search", q, "--catalog", corpus["catalog"], "--top", "6", "--method", "cnn", "--json",
                 "--sheet", str(tmp_path / "s.png")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {h["path"] for h in doc["hits"]} == _scene_files(corpus, "mouse")
    assert os.path.getsize(tmp_path / "s.png") > 1000
    qlist = tmp_path / "qs.txt"
    qlist.write_text("\n".join(corpus["queries"].values()) + "\n")
    assert main(["search", str(qlist), "--catalog", corpus["catalog"], "--top", "6", "--out",
                 str(tmp_path / "b.json"), "--where", "width=1..10000"]) == 0
    with open(tmp_path / "b.json") as f:
        doc = json.load(f)
    assert [d["query"] for d in doc] == list(corpus["queries"].values())
    for d, scene in zip(doc, corpus["queries"]):
        assert {h["path"] for h in d["hits"]} == _scene_files(corpus, scene)


def test_hnsw_path_equals_exact_and_is_cached(corpus, cat, monkeypatch):
    """Above HNSW_MIN_CANDIDATES the catalog's embeddings go through a cached VectorIndex, over-fetched
    for the filter; at this size HNSW is exact, so both paths must agree."""
    import imgsim_fast.jobs.search as S
    from imgsim_fast.catalog.query import Field

    qs = list(corpus["queries"].values())
    where = Field("format", "=", "JPEG")
    exact = S.search(cat, qs, method="cnn", k=7, where=where)
    monkeypatch.setattr(S, "HNSW_MIN_CANDIDATES", 1)
    for _ in range(2):  # build, then load from <catalog>.arrays/<array>.hnsw
        got = S.search(cat, qs, method="cnn", k=7, where=where)
        assert [[h.path for h in r.hits] for r in got] == [[h.path for h in r.hits] for r in exact]
        np.testing.assert_allclose([h.score for r in got for h in r.hits],
                                   [h.score for r in exact for h in r.hits], atol=1e-5)
    assert os.path.exists(os.path.join(cat.arrays_dir, embedding_array_name("efficientnet-lite0") + ".hnsw.json"))


def test_the_query_heads_the_hits_it_ties_with(tmp_path):
    # A half-size copy is 0 bits from its original too, and its path sorted first: the query itself was
    # listed second at an equal distance (a user trial).
    from imgsim_fast.cli.main import main
    from imgsim_fast.jobs.search import search

    with Image.open(os.path.join(PHOTO_DIR, SCENES["calla"])) as im:
        im = im.convert("RGB")
    im.thumbnail((640, 640))
    im.save(tmp_path / "b_original.png")
    im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS).save(tmp_path / "a_half.png")
    cat = str(tmp_path / "c.sqlite")
    assert main(["index", str(tmp_path), "--catalog", cat, "--workers", "1", "--no-progress"]) == 0
    with Catalog(cat) as c:
        res = search(c, str(tmp_path / "b_original.png"), k=2)
    assert [h.distance for h in res.hits] == [0, 0], res.hits  # the tie the order is about
    assert [h.path for h in res.hits] == [str(tmp_path / "b_original.png"), str(tmp_path / "a_half.png")]
    assert [h.rank for h in res.hits] == [1, 2]
