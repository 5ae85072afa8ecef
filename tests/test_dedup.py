"""Dedup detection: candidate pairs against brute force, the anti-chaining rule, keep-best order, border
trimming, and end to end on real photos (every edit kind, the CLI, the HTML report)."""
import hashlib
import html.parser
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

from imgsim_fast.bench.corpus import apply_edit
from imgsim_fast.cli.main import main
from imgsim_fast.jobs.dedup import DEFAULTS, LEARNED, DedupResult, Thresholds, find_duplicates, group_features
from imgsim_fast.jobs.dedup.detect import PairJudge, embedding_pairs, hash_pairs
from imgsim_fast.jobs.dedup.grouping import group_pairs
from imgsim_fast.features.extract import EMBED_CROP, Features, FileFacts, compute_features, trim_box
from imgsim_fast.jobs.dedup.keep import keep_ranks, parse_order
from lookalike_pictures import rgb as _rgb, save_build, save_build_crop, save_burst, save_slides


def _bits(codes8):
    n = len(codes8)
    return np.unpackbits(codes8.view(np.uint8).reshape(n, 8, 8 * codes8.shape[2]), axis=2).astype(bool)


@pytest.mark.parametrize("n", [0, 1, 7, 65])
def test_hash_pairs_equal_brute_force(n):
    rng = np.random.default_rng(n)
    base = rng.integers(0, 2**63, size=(max(n, 1), 1), dtype=np.uint64)[:n]
    codes8 = np.empty((n, 8, 1), np.uint64)
    for i in range(n):  # variants: the code with a few bits flipped each, like a flipped image's pHash
        for k in range(8):
            x = int(base[i, 0]) if k == 0 else int(rng.integers(0, 2**63))
            codes8[i, k, 0] = x
    # Plant near-duplicates: identity pairs at 0..12 bits and flip pairs (j's variant 4 near i's code).
    for i in range(1, n, 3):
        flips = int(rng.integers(0, 13))
        x = int(codes8[i - 1, 0, 0])
        for b in rng.choice(64, flips, replace=False):
            x ^= 1 << int(b)
        codes8[i, 0 if i % 2 else 4, 0] = x
    bits = _bits(codes8)
    for r, rd in ((0, 0), (6, 4), (10, 8), (10, None)):
        got = set(zip(*(a.tolist() for a in hash_pairs(codes8, r, rd))))
        want = set()
        for i in range(n):
            for j in range(i + 1, n):
                if (bits[i, 0] != bits[j, 0]).sum() <= r:
                    want.add((i, j))
                elif rd is not None:
                    d1 = (bits[i, 0][None] != bits[j, 1:]).sum(axis=1).min()
                    d2 = (bits[j, 0][None] != bits[i, 1:]).sum(axis=1).min()
                    if min(d1, d2) <= rd:
                        want.add((i, j))
        assert got == want, (r, rd)


def test_embedding_pairs_equal_brute_force():
    rng = np.random.default_rng(3)
    e = rng.normal(size=(40, 16)).astype(np.float32)
    e[20:] = e[:20] + 0.3 * rng.normal(size=(20, 16))  # 20 planted near pairs
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    c = e @ e.T
    got = set(zip(*(a.tolist() for a in embedding_pairs(e, 0.8, k=39))))
    want = {(i, j) for i in range(40) for j in range(i + 1, 40) if c[i, j] >= 0.8}
    assert got == want and len(want) >= 15  # the planted pairs are there: a no-op would fail


def _facts(i, **kw):
    d = dict(path=f"/x/f{i}.jpg", size=1000, mtime=100.0, width=100, height=100, format="JPEG",
             content_pixels=10000, digest=f"d{i}")
    d.update(kw)
    return FileFacts(**d)


def _chain_features(n=5, step=6):
    """Codes on a chain: neighbours `step` bits apart, so two apart is 2*step > DEFAULTS.phash bits."""
    codes = np.zeros((n, 8, 1), np.uint64)
    for i in range(n):
        x = (1 << (step * i)) - 1  # the first step*i bits set: d(i, j) = step * |i - j|
        codes[i, :, 0] = x
        codes[i, 1:, 0] = np.uint64(0xAAAAAAAAAAAAAAAA) ^ np.uint64(i)  # variants far from every code
    return Features([_facts(i) for i in range(n)], codes)


def _ranker(facts, order=None):
    return lambda members: keep_ranks(facts, members, parse_order(order))


def _assert_stars(groups, judge):
    """Every member of every group matches its keeper directly, by the tier's own test; no file is in two
    groups of a tier, and a look-alike group holds no file a duplicate group may remove."""
    seen = {"duplicate": set(), "similar": set()}
    removable = {m for g in groups if g.tier == "duplicate" for m in g.members[1:]}
    for g in groups:
        assert g.matches[0].rule == "keeper"
        for m, mt in zip(g.members[1:], g.matches[1:]):
            direct = judge.match(g.members[0], m)
            assert direct == mt and (direct.duplicate if g.tier == "duplicate" else direct.rule), (g, m)
            assert mt.describe() and mt.describe() != "no match"
        assert not seen[g.tier] & set(g.members)
        seen[g.tier] |= set(g.members)
        assert g.tier == "duplicate" or not removable & set(g.members)


def test_chain_never_groups_files_that_do_not_match_the_keeper():
    f = _chain_features()
    judge = PairJudge(f, "phash", DEFAULTS)
    groups = group_pairs(len(f), hash_pairs(f.phash8, DEFAULTS.similar_phash, DEFAULTS.dihedral), judge,
                         _ranker(f.facts))
    dup = [g for g in groups if g.tier == "duplicate"]
    # Plain union-find would return one group of 5 (0~1~2~3~4, 6 bits a step); a star around the keeper
    # holds only files within DEFAULTS.phash of it: {0, 1} then {2, 3} (ties rank by path).
    assert [g.members for g in dup] == [[0, 1], [2, 3]]
    _assert_stars(groups, judge)


def _star_features(n_spokes=6):
    """A hub code and spokes 9 bits from the hub in disjoint bits: each spoke is a duplicate of the hub
    (9 <= phash) but 18 bits from every other spoke (a look-alike of it, not a duplicate)."""
    codes = np.zeros((n_spokes + 1, 8, 1), np.uint64)
    for i in range(1, n_spokes + 1):
        codes[i, 0, 0] = np.uint64(((1 << 9) - 1) << (9 * (i - 1)))
    for i in range(n_spokes + 1):
        codes[i, 1:, 0] = np.uint64(0xAAAAAAAAAAAAAAAA) ^ np.uint64(i)
    return codes


def test_star_of_lookalikes_the_keeper_is_the_hub_or_spokes_stay():
    codes = _star_features()
    n = len(codes)
    # The hub ranks first: every spoke is removable, each a duplicate of the kept hub.
    big = dict(width=141, height=142, content_pixels=20022)  # files of one pixel size tie on content (keep.py)
    facts = [_facts(i, **(big if i == 0 else {})) for i in range(n)]
    f = Features(facts, codes)
    judge = PairJudge(f, "phash", DEFAULTS)
    groups = group_pairs(n, hash_pairs(codes, DEFAULTS.similar_phash, DEFAULTS.dihedral), judge, _ranker(facts))
    assert [(g.tier, g.members) for g in groups] == [("duplicate", list(range(n)))]
    _assert_stars(groups, judge)
    # A spoke ranks first (the biggest file): it keeps only the hub; the other spokes are not duplicates of
    # it, so they are never removable in its place; they are look-alikes of each other and of the keeper,
    # reported in the similar tier.
    facts = [_facts(i, **(big if i == 1 else {})) for i in range(n)]
    f = Features(facts, codes)
    judge = PairJudge(f, "phash", DEFAULTS)
    groups = group_pairs(n, hash_pairs(codes, DEFAULTS.similar_phash, DEFAULTS.dihedral), judge, _ranker(facts))
    dup = [g for g in groups if g.tier == "duplicate"]
    assert [g.members for g in dup] == [[1, 0]]
    sim = [g for g in groups if g.tier == "similar"]
    assert sorted(m for g in sim for m in g.members) == [1, 2, 3, 4, 5, 6]
    _assert_stars(groups, judge)
    res = DedupResult(f, groups, "phash", DEFAULTS, [False] * n)
    assert [m for g in res.groups for m in res.removable(g)] == [0]  # only the hub, a duplicate of the keeper
    doc = res.to_dict()
    assert all(not m["removable"] for g in doc["groups"] if g["tier"] == "similar" for m in g["members"])


def test_keep_ranks_prefer_the_original():
    # On facts alone. A lossless re-save of the original (framed, letterboxed, noisy or not) is told by its
    # pixels (keep.derived_from; tests/test_keep.py, and the noisy PNG of
    # test_the_original_is_kept_over_upscaled_resaved_noisy_and_bordered_copies), not here: a block grid in a
    # PNG's pixels ranks nothing, and a file's noise is measured against its own or earlier generations only.
    orig = _facts(0, format="JPEG", jpeg_quality=95, content_pixels=10000, mtime=5.0, noise=2.0)
    squashed = _facts(1, format="JPEG", jpeg_quality=95, width=120, content_pixels=12000, noise=2.0)
    noisy = _facts(2, format="JPEG", jpeg_quality=95, content_pixels=10000, noise=6.0)
    recompressed = _facts(3, format="JPEG", jpeg_quality=70, content_pixels=10000, noise=1.5)
    smaller = _facts(4, format="PNG", width=50, height=50, content_pixels=2500, noise=1.0)
    grey = _facts(5, format="JPEG", jpeg_quality=95, content_pixels=10000, colour=False, noise=2.0)
    facts = [orig, squashed, noisy, recompressed, smaller, grey]
    rank = keep_ranks(facts, list(range(len(facts))))
    assert min(rank, key=rank.get) == 0
    for i in range(1, len(facts)):  # and against each copy alone
        r = keep_ranks(facts, [0, i])
        assert r[0] < r[i], facts[i]
    # the tie-breakers: camera EXIF, then the older file
    a, b = _facts(0, mtime=9.0, camera=True), _facts(1, mtime=1.0)
    r = keep_ranks([a, b], [0, 1])
    assert r[0] < r[1]
    r = keep_ranks([a, b], [0, 1], parse_order("oldest"))
    assert r[1] < r[0]
    # a reference file always ranks first
    r = keep_ranks(facts, [0, 4], reference=[False] * 4 + [True, False])
    assert r[4] < r[0]
    assert parse_order("pixels,lossless") == ("content", "quality")
    with pytest.raises(ValueError):
        parse_order("content,biggest")


def test_trim_box_finds_letterbox_and_leaves_photos():
    rng = np.random.default_rng(0)
    pic = rng.integers(0, 256, size=(60, 100), dtype=np.uint8)
    assert trim_box(pic) == (0, 0, 100, 60)
    boxed = np.zeros((100, 100), np.uint8)
    boxed[20:80] = pic
    left, top, right, bottom = trim_box(boxed)
    assert (left, right) == (0, 100) and 20 <= top <= 21 and 79 <= bottom <= 80
    assert trim_box(np.full((50, 50), 128, np.uint8)) == (0, 0, 50, 50)  # flat: left whole


def test_a_border_inside_a_border_is_trimmed_as_the_picture_alone_is():
    # A picture with a flat grey margin on its left, and a letterboxed copy (black bars above and below): the
    # copy's content box must be the picture's, margin trimmed, not the bars' inside (one pass took only the
    # bars, and the copy hashed apart from its original and outranked it on content).
    rng = np.random.default_rng(1)
    pic = rng.integers(0, 256, size=(90, 160), dtype=np.uint8)
    pic[:, :16] = 200  # the margin: a tenth of the width
    boxed = np.zeros((130, 160), np.uint8)
    boxed[20:110] = pic
    left, top, right, bottom = trim_box(pic)
    assert 16 <= left <= 17 and (top, right, bottom) == (0, 160, 90), (left, top, right, bottom)
    bl, bt, br, bb = trim_box(boxed)
    assert (bl, br) == (left, right) and 20 <= bt <= 21 and 109 <= bb <= 110, (bl, bt, br, bb)
    # Never more than TRIM_MAX of a side in all: the pass that would take the third border is not made.
    nested = np.zeros((100, 100), np.uint8)
    nested[10:90, 10:90] = 100
    nested[20:80, 20:80] = 200
    nested[45:55, 45:55] = rng.integers(0, 256, size=(10, 10), dtype=np.uint8)
    assert trim_box(nested) == (21, 21, 79, 79)


def test_trim_follows_contrast_not_grey_levels():
    # A picture whose top fades smoothly into its content (a wallpaper's sky), and a darker, flatter copy
    # (brightness x0.6 then contrast x0.6, the corpus's strong "bright" edit). With a fixed 10-level
    # tolerance the flat copy lost 30% of its height as "border" and the original none; the tolerance
    # follows the picture's contrast, so both keep the same box.
    rng = np.random.default_rng(5)
    pic = np.empty((120, 160), np.float64)
    pic[:40] = np.linspace(20, 60, 40)[:, None]  # the gradient: 1 level per row
    pic[40:] = rng.integers(0, 256, size=(80, 160))
    flat = 0.6 * pic
    flat = flat.mean() + 0.6 * (flat - flat.mean())
    a, b = trim_box(pic.round().astype(np.uint8)), trim_box(flat.round().astype(np.uint8))
    assert abs(a[1] - b[1]) <= 1 and a[0] == b[0] and a[2:] == b[2:], (a, b)


def test_a_large_picture_reduces_trims_and_hashes_as_its_flips_do(tmp_path, request):
    # A picture over twice FEATURE_SIDE is reduced before it is trimmed and hashed. Image.reduce averaged
    # blocks from the top left corner and left a part block at the bottom and right, so a flipped copy whose
    # sides are not multiples of the factor was averaged on shifted blocks: this wallpaper at 3840 x 2400
    # (factor 9) as a PNG, mirrored top to bottom, trimmed 2% more on the left and hashed 12 bits from its
    # original, and the mirror was lost. Lossless flips must reduce, trim and hash as the original does, and
    # quarter turns reduce to within a grey level (the box filter's two passes round in the other order).
    # Bit-exact flips depend on how Pillow places and rounds the box's weights (checked with 12.1).
    from imgsim_fast.features.extract import reduce_to_feature_side

    T = Image.Transpose
    noise = np.random.default_rng(3).integers(0, 256, (300, 480, 3), dtype=np.uint8)  # every edge a hard one
    # Factors 9, 6 (whole blocks), 11 and 2; at 1801 x 600 one box edge in 900 falls on a pixel's centre, where
    # Pillow's box takes the pixel on one side only: that column may differ, no other.
    for size in ((3840, 2400), (2304, 1536), (4032, 3024), (1801, 600)):
        pic = Image.fromarray(noise).resize(size, Image.Resampling.NEAREST)
        small = np.asarray(reduce_to_feature_side(pic), np.int16)
        assert min(small.shape[:2]) >= 256
        factor = min(size) // 256
        whole = size[0] % factor == 0 and size[1] % factor == 0
        before = []
        for turn, undo in ((T.FLIP_TOP_BOTTOM, T.FLIP_TOP_BOTTOM), (T.ROTATE_180, T.ROTATE_180),
                           (T.ROTATE_90, T.ROTATE_270)):
            back = np.asarray(reduce_to_feature_side(pic.transpose(turn)).transpose(undo), np.int16)
            assert back.shape == small.shape, (size, turn)
            columns = (np.abs(back - small) > (0 if whole or turn != T.ROTATE_90 else 1)).any(axis=(0, 2))
            assert columns.sum() <= (1 if size == (1801, 600) else 0), (size, turn, np.flatnonzero(columns))
            old = np.asarray(pic.transpose(turn).reduce(factor).transpose(undo), np.int16)
            before.append(np.abs(old - np.asarray(pic.reduce(factor), np.int16)).mean())
        # Image.reduce alone: a turn that moves a part block shifts the grid (20 grey levels apart on average).
        assert whole or max(before) > 5, (size, before)
    src = [p for p in request.getfixturevalue("photos") if p.endswith("the-mouse.jpg")]  # skips without photos
    if not src:
        pytest.skip("ukui-wallpapers' the-mouse.jpg not fetched")
    im = _rgb(src[0], side=3840).resize((3840, 2400), Image.Resampling.BICUBIC)
    copies = {"original": (im, 0), "mirror-tb": (im.transpose(T.FLIP_TOP_BOTTOM), 5),
              "rot180": (im.transpose(T.ROTATE_180), 2)}
    for name, (pic, _) in copies.items():
        pic.save(tmp_path / f"{name}.png", compress_level=1)
    feats = compute_features([str(tmp_path)], workers=1, progress=False)
    by = {os.path.splitext(os.path.basename(f.path))[0]: i for i, f in enumerate(feats.facts)}
    o = by["original"]
    l, t, r, b = feats.facts[o].trim
    assert r - l < 0.9, "the wallpaper's dark margins must be trimmed, or this tests nothing"
    expect = {"mirror-tb": (l, 1 - b, r, 1 - t), "rot180": (1 - r, 1 - b, 1 - l, 1 - t)}
    for name, (_, v) in copies.items():
        if name != "original":
            assert np.allclose(feats.facts[by[name]].trim, expect[name]), (name, feats.facts[by[name]].trim)
            # DIHEDRAL's variant v of the original's pHash is the copy's own.
            assert feats.phash8[by[name], 0, 0] == feats.phash8[o, v, 0], name


# ------------------------------------------------------------------------------------------------
# Real photos




@pytest.fixture(scope="module")
def edited_album(tmp_path_factory, photos):
    """Two real photos, every edit kind of the first at the strong setting (mild for crop), and a third
    unrelated photo: the robustness set."""
    d = tmp_path_factory.mktemp("edits")
    jpgs = [p for p in photos if p.endswith(".jpg")]
    src = _rgb(jpgs[0])
    src.save(d / "original.png")
    _rgb(jpgs[1]).save(d / "other1.jpg", quality=90)
    _rgb(jpgs[2]).save(d / "other2.jpg", quality=90)
    rng = np.random.default_rng(0)
    kinds = ["jpeg", "resize", "rotate", "mirror", "rot90", "letterbox", "crop", "bright", "grey", "text"]
    for k in kinds:
        for level in ("mild", "strong"):
            im, save = apply_edit(src, k, level, rng)
            im.save(d / f"{k}_{level}.{'png' if save['format'] == 'PNG' else 'jpg'}",
                    **{x: v for x, v in save.items() if x != "format"})
    return d


def test_every_edit_kind_found_unrelated_not(edited_album):
    res = find_duplicates([str(edited_album)], workers=1, progress=False)
    tiers = {t: [sorted(os.path.basename(res.paths[m]) for m in g.members) for g in res.groups if g.tier == t]
             for t in ("duplicate", "similar")}
    assert len(tiers["duplicate"]) == 1, tiers
    dup = set(tiers["duplicate"][0])
    found = dup | {n for g in tiers["similar"] for n in g}
    assert not found & {"other1.jpg", "other2.jpg"}
    # Every copy is found; the duplicate tier (the one actions touch) holds every copy whose pixels line up
    # with the original, and crops and strong rotations, which the pixel check cannot line up, are reported
    # as look-alikes of the original for a person to decide, as are copies with a caption written over them
    # (the detail check sees the words at 384 px: new content, not copying).
    copies = {f for f in os.listdir(edited_album) if f.endswith((".png", ".jpg"))} - {"other1.jpg", "other2.jpg"}
    assert copies - found <= {"text_strong.jpg"}, copies - found
    assert copies - dup <= {"crop_mild.jpg", "crop_strong.jpg", "rotate_strong.jpg", "text_mild.jpg",
                            "text_strong.jpg"}, copies - dup
    for must in ("original.png", "mirror_mild.png", "mirror_strong.png", "rot90_mild.jpg", "rot90_strong.jpg",
                 "letterbox_mild.png", "letterbox_strong.png", "jpeg_strong.jpg", "resize_strong.jpg"):
        assert must in dup
    assert all("original.png" in g for g in tiers["similar"])


def test_corner_crops_match_through_the_centre_view(tmp_path, photos):
    # Four 80% crops of a real photo, each halfway between the centre and a corner (a random 80% crop is
    # that far off on average), are grouped with it; two unrelated photos join no group. calla is a photo
    # where whole-vs-whole cosines alone match only two of the four crops directly (their hashes are 30+
    # bits apart): the centre view (features.EMBED_CROP) matches all four.
    src = _rgb(next(p for p in photos if "calla" in p))
    src.save(tmp_path / "original.png")
    for k, other in enumerate(p for p in photos if "city" in p or "desert" in p):
        _rgb(other).save(tmp_path / f"other{k}.jpg", quality=90)
    w, h = src.size
    cw, ch = int(w * EMBED_CROP), int(h * EMBED_CROP)
    a, b = (w - cw) // 4, (h - ch) // 4
    for name, (x, y) in {"tl": (a, b), "tr": (3 * a, b), "bl": (a, 3 * b), "br": (3 * a, 3 * b)}.items():
        src.crop((x, y, x + cw, y + ch)).save(tmp_path / f"crop_{name}.jpg", quality=90)
    res = find_duplicates([str(tmp_path)], workers=1, progress=False)
    # Every crop is found with the original as keeper; those whose crop window the pixel check lines up are
    # duplicates, the rest are reported as look-alikes of it (a person decides), never the other photos.
    found = {os.path.basename(res.paths[m]) for g in res.groups for m in g.members}
    assert found == {"crop_bl.jpg", "crop_br.jpg", "crop_tl.jpg", "crop_tr.jpg", "original.png"}, res.groups
    assert all(os.path.basename(res.paths[g.members[0]]) == "original.png" for g in res.groups)
    assert sum(len(g.members) - 1 for g in res.groups if g.tier == "duplicate") >= 2
    # The centre view, in the raw embedding space (the hand rule's; res.features hold the learned projection).
    f = compute_features([str(tmp_path)], embed=True, workers=1, progress=False)
    o = f.paths.index(str(tmp_path / "original.png"))
    crops = [f.paths.index(str(tmp_path / f"crop_{n}.jpg")) for n in ("tl", "tr", "bl", "br")]
    judge = PairJudge(f, "auto")
    whole_only = PairJudge(Features(f.facts, f.phash8, f.embeddings), "auto")
    assert all(judge.cosine(o, c) >= whole_only.cosine(o, c) for c in crops)
    assert all(judge.match(o, c).duplicate or judge.match(o, c).similar for c in crops)
    assert not all(whole_only.match(o, c) for c in crops)
    for k in range(2):
        x = f.paths.index(str(tmp_path / f"other{k}.jpg"))
        assert not judge.match(o, x) and judge.cosine(o, x) < DEFAULTS.embed_cos - 0.05


def test_embedding_pairs_with_centre_views_equal_brute_force():
    rng = np.random.default_rng(4)
    e = rng.normal(size=(30, 16)).astype(np.float32)
    c = rng.normal(size=(30, 16)).astype(np.float32)
    c[10:20] = e[:10] + 0.3 * rng.normal(size=(10, 16))  # file 10+i's centre view is near file i's whole
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    cos = np.maximum(np.maximum(e @ e.T, c @ c.T), np.maximum(e @ c.T, c @ e.T))
    got = set(zip(*(a.tolist() for a in embedding_pairs(e, 0.8, k=29, centre=c))))
    want = {(i, j) for i in range(30) for j in range(i + 1, 30) if cos[i, j] >= 0.8}
    assert got == want and len(want) >= 8  # the planted whole-centre pairs are there


def test_phash_method_finds_flips_without_embeddings(edited_album):
    res = find_duplicates([str(edited_album)], method="phash", workers=1, progress=False)
    assert res.features.embeddings is None
    names = {os.path.basename(res.paths[m]) for g in res.groups for m in g.members}
    assert {"original.png", "mirror_mild.png", "rot90_mild.jpg", "rot90_strong.jpg"} <= names
    assert "other1.jpg" not in names and "other2.jpg" not in names
    res2 = find_duplicates([str(edited_album)], method="phash", flips=False, workers=1, progress=False)
    names2 = {os.path.basename(res2.paths[m]) for g in res2.groups for m in g.members}
    assert "rot90_mild.jpg" not in names2  # the flips come from the dihedral codes, not from luck


def test_the_flip_rule_gives_one_verdict_whichever_file_comes_first():
    # pHash variants are hashes of flipped pixels, not flipped codes, so d(a, mirror(b)) and d(b, mirror(a))
    # can differ (8 and 12 bits on a mirrored letterboxed copy). The test takes the better of the two, so a
    # pair's verdict does not depend on walk order or on which file the service stored first.
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 2**63, (2, 8, 1), dtype=np.int64).astype(np.uint64)  # other variants: ~32 bits off
    a = codes[0, 0, 0]
    codes[1, 0, 0] = a ^ np.uint64(0xFFFF_FFFF)  # identities 32 bits apart: only the flip rule can match
    codes[0, 4, 0] = codes[1, 0, 0]              # b against a's mirror-lr variant: 0 bits
    codes[1, 4, 0] = a ^ np.uint64(0xFFF)        # a against b's mirror-lr variant: 12 bits (beyond dihedral 8)
    facts = [FileFacts(f"{k}.png", 1, 0.0, 64, 64, "PNG", 64 * 64, f"{k:064x}") for k in range(2)]
    judge = PairJudge(Features(facts, codes), "phash", DEFAULTS)
    ab, ba = judge.match(0, 1), judge.match(1, 0)
    assert ab.rule == ba.rule == "flip" and ab.dihedral == ba.dihedral == 0
    assert ab.transform == ba.transform == "mirror-lr"  # its own inverse
    assert judge.distances(0, 1)[1] == judge.distances(1, 0)[1]


def _snapshot(root):
    out = {}
    for dp, _, fs in os.walk(root):
        for f in fs:
            p = os.path.join(dp, f)
            st = os.stat(p)
            with open(p, "rb") as fh:
                out[p] = (st.st_size, st.st_mtime_ns, hashlib.sha256(fh.read()).hexdigest())
    return out


class _HTMLCheck(html.parser.HTMLParser):
    VOID = {"meta", "img", "br", "link", "input", "hr"}

    def __init__(self):
        super().__init__()
        self.stack, self.sections, self.imgs, self.keeps, self.errors = [], 0, 0, 0, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections += 1
        if tag == "img":
            self.imgs += 1
            assert a["src"].startswith("data:image/jpeg;base64,")
        if tag == "figure" and "keep" in (a.get("class") or "").split():
            self.keeps += 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()


def test_cli_dedup_on_real_photos(tmp_path, photos, capsys):
    # Four distinct photos; copies of two of them as users make them; a byte-identical copy; a mirrored and
    # a rotated copy; a bad file.
    src = [p for p in photos if p.endswith(".jpg")][:4]
    assert len(src) == 4
    d = tmp_path / "album"
    (d / "sub").mkdir(parents=True)
    for i, p in enumerate(src):
        im = _rgb(p, 800)
        im.save(d / f"photo{i}.jpg", quality=90)
        if i == 0:
            im.resize((im.width // 2, im.height // 2)).save(d / "sub" / "photo0_small.jpg", quality=60)
            ImageEnhance.Brightness(im).enhance(1.1).save(d / "sub" / "photo0_bright.png")
        if i == 1:
            im.save(d / "sub" / "photo1_q30.jpg", quality=30)
            im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(d / "sub" / "photo1_mirror.jpg", quality=85)
        if i == 3:
            im.transpose(Image.Transpose.ROTATE_90).save(d / "sub" / "photo3_rot90.jpg", quality=85)
    shutil.copy(d / "photo2.jpg", d / "sub" / "photo2_copy.jpg")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    before = _snapshot(d)

    out = tmp_path / "out"
    rc = main(["dedup", str(d), "--workers", "1", "--no-progress", "--json", f"{out}.json", "--csv", f"{out}.csv",
               "--html", f"{out}.html"])
    assert rc == 1  # done, but broken.jpg failed (README, "Exit status")
    assert _snapshot(d) == before  # report only: nothing moved, changed or deleted
    doc = json.loads((tmp_path / "out.json").read_text())
    groups = sorted(sorted(os.path.relpath(f, d) for f in g["files"]) for g in doc["groups"])
    assert groups == [
        ["photo0.jpg", "sub/photo0_bright.png", "sub/photo0_small.jpg"],
        ["photo1.jpg", "sub/photo1_mirror.jpg", "sub/photo1_q30.jpg"],
        ["photo2.jpg", "sub/photo2_copy.jpg"],
        ["photo3.jpg", "sub/photo3_rot90.jpg"],
    ]
    for g in doc["groups"]:
        assert g["members"][0]["keep"] and sum(m["keep"] for m in g["members"]) == 1
        assert g["keep"] == g["files"][0]
    g0 = next(g for g in doc["groups"] if "photo0.jpg" in g["keep"] or "photo0_bright" in g["keep"])
    # keep-best: the bright PNG has the same pixels as photo0.jpg and is lossless, so it is kept
    assert g0["keep"].endswith("photo0_bright.png")
    flip = next(m for g in doc["groups"] for m in g["members"] if m["path"].endswith("photo3_rot90.jpg"))
    assert flip["rule"] in ("flip", "confirmed") and flip["flip"] in ("rot90", "rot270")
    exact = [g for g in doc["groups"] if g["exact"]]
    assert len(exact) == 1 and all(f.endswith(("photo2.jpg", "photo2_copy.jpg")) for f in exact[0]["files"])
    assert [e["path"] for e in doc["errors"]] == [str(d / "broken.jpg")]
    assert "broken.jpg" in capsys.readouterr().err
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert rows[0].startswith("group,keep,reference,path") and len(rows) == 1 + 10
    chk = _HTMLCheck()
    chk.feed((tmp_path / "out.html").read_text())
    chk.close()
    assert not chk.errors and not chk.stack, (chk.errors, chk.stack)
    # The review page draws its groups from its JSON block (tests/test_review_page.py drives it in chromium);
    # thumbnails are files beside it.
    text = (tmp_path / "out.html").read_text()
    data = json.loads(text.split('<script id="plan-data" type="application/json">')[1].split("</script>")[0])
    assert len(data["groups"]) == 4
    assert [f[0] for f in data["files"]] == [m["path"] for g in doc["groups"] for m in g["members"]]
    assert sorted(os.listdir(tmp_path / "out_files")) == sorted([".imgsim-review"] + [f"{i}.jpg" for i in range(10)])
    for g in doc["groups"]:
        for f in g["files"]:
            assert f in text


def test_reference_folder_files_are_kept(tmp_path, photos):
    ref = tmp_path / "ref"
    new = tmp_path / "new"
    ref.mkdir()
    new.mkdir()
    im = _rgb([p for p in photos if p.endswith(".jpg")][0], 600)
    im.resize((300, 200)).save(ref / "small.jpg", quality=80)  # fewer pixels, but in the reference folder
    im.save(new / "big.png")
    res = find_duplicates([str(new)], method="phash", reference=[str(ref)], workers=1, progress=False)
    assert len(res.groups) == 1
    g = res.groups[0]
    assert res.paths[g.members[0]].endswith("small.jpg")
    assert [res.paths[m] for m in res.removable(g)] == [str(new / "big.png")]


def test_method_errors():
    f = Features([_facts(0)], np.zeros((1, 8, 1), np.uint64))
    with pytest.raises(ValueError):
        group_features(f, method="nope")
    with pytest.raises(ValueError):
        group_features(f, method="embedding")  # no embeddings
    assert group_features(Features([], np.zeros((0, 8, 1), np.uint64)), method="phash").groups == []
    assert Thresholds().confirm_needed(DEFAULTS.phash) == DEFAULTS.confirm_cos


def _crashing_prepare(items, embed_size):
    """A decoder that kills its worker process on one file (as a segfaulting codec would)."""
    if any(p.endswith("crash.png") for _, p in items):
        os._exit(3)
    from imgsim_fast.features import extract as features

    return features._prepare_chunk(items, embed_size)


def test_feature_worker_crash_costs_only_its_file(tmp_path):
    from imgsim_fast.features import extract as features
    from imgsim_fast.runtime.pool import run_pool

    rng = np.random.default_rng(11)
    paths = []
    for i in range(6):
        p = tmp_path / ("crash.png" if i == 2 else f"ok{i}.png")
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    items = list(enumerate(paths))
    chunks = [items[i:i + 2] for i in range(0, len(items), 2)]
    results = run_pool(_crashing_prepare, chunks, None, 2, lambda n: None, features.extract_failed)
    out = dict(x for res in results for x in res)
    assert sorted(out) == list(range(6))
    assert out[2].kind == "worker_crash" and out[2].path == paths[2]
    for i in (0, 1, 3, 4, 5):  # the crash's chunk-mate and every other file still get their features
        assert out[i][0].path == paths[i]


def test_byte_identical_copies_all_join_whichever_is_kept():
    # Candidates for identical files are a star on the first of them; when another copy ranks first (here
    # the oldest), every copy must still be grouped with it (a copy once went missing from the report).
    codes = np.zeros((4, 8, 1), np.uint64)
    codes[3, :, 0] = np.uint64(0xF0F0F0F0F0F0F0F0)  # an unrelated file
    facts = [_facts(i, digest="same" if i < 3 else "other", mtime=50.0 if i == 1 else 100.0) for i in range(4)]
    f = Features(facts, codes)
    judge = PairJudge(f, "exact", DEFAULTS)
    from imgsim_fast.jobs.dedup.detect import candidate_pairs

    groups = group_pairs(4, candidate_pairs(judge), judge, _ranker(facts))
    assert [(g.tier, g.members) for g in groups] == [("duplicate", [1, 0, 2])]
    assert all(m.rule == "exact" for m in groups[0].matches[1:])


def test_the_original_is_kept_over_upscaled_resaved_noisy_and_bordered_copies(tmp_path, photos):
    # A JPEG original and the copies that used to win keep-best on "more pixels" or "lossless": each is
    # found derived (or out-ranked) by its pixels, whatever the modification times say.
    src = _rgb([p for p in photos if p.endswith(".jpg")][3], side=900)
    src.save(tmp_path / "original.jpg", quality=95)
    with Image.open(tmp_path / "original.jpg") as im:
        decoded = im.convert("RGB")
    decoded.resize((decoded.width * 3 // 2, decoded.height * 3 // 2), Image.Resampling.BICUBIC).save(
        tmp_path / "upscaled.jpg", quality=95)
    decoded.save(tmp_path / "resaved.png")
    noise = np.random.default_rng(3).normal(0, 6, (decoded.height, decoded.width, 1))
    Image.fromarray(np.clip(np.asarray(decoded, np.float32) + noise, 0, 255).astype(np.uint8)).save(tmp_path / "noisy.png")
    bars = Image.new("RGB", (decoded.width, decoded.height * 3 // 2))
    bars.paste(decoded, (0, decoded.height // 4))
    bars.save(tmp_path / "letterboxed.jpg", quality=90)
    decoded.resize((decoded.width * 6 // 5, decoded.height), Image.Resampling.BICUBIC).save(
        tmp_path / "squashed.jpg", quality=95)
    for k, name in enumerate(sorted(os.listdir(tmp_path))):  # the original is not the oldest file
        t = 1_700_000_000 + (100 if name == "original.jpg" else k)
        os.utime(tmp_path / name, (t, t))
    res = find_duplicates([str(tmp_path)], workers=1, progress=False)
    dup = [g for g in res.groups if g.tier == "duplicate"]
    assert len(dup) == 1 and len(dup[0].members) == 6, [[res.paths[m] for m in g.members] for g in res.groups]
    assert os.path.basename(res.paths[dup[0].members[0]]) == "original.jpg"


def test_pixel_check_passes_copies_and_stops_lookalikes(tmp_path, photos):
    # The pixel check (verify.py) of the pair test, on real thumbnails. Copies: a JPEG at quality 30, a
    # darker low-contrast copy, an off-centre 80% crop and a 4-degree rotation cropped inside (both need the
    # affine alignment). Look-alikes: two bar charts of one style with other data, two slides of one
    # template with other words, and two frames of a "burst" (one object pasted a little further along on
    # the same photo): hashes call several of these close, the check must not.
    from PIL import ImageDraw, ImageEnhance

    rng = np.random.default_rng(7)
    for name in ("a", "b"):
        im = Image.new("RGB", (640, 400), "white")
        d = ImageDraw.Draw(im)
        d.line([(60, 20), (60, 360), (620, 360)], fill="black", width=3)
        for k, v in enumerate(rng.integers(40, 320, size=8)):
            d.rectangle([80 + 65 * k, 360 - int(v), 120 + 65 * k, 360], fill=(40, 90, 200))
        im.save(tmp_path / f"chart_{name}.png")
    save_slides(tmp_path)
    photo = _rgb(photos[0])
    w, h = photo.size
    photo.save(tmp_path / "photo.png")
    photo.save(tmp_path / "photo_q30.jpg", quality=30)
    ImageEnhance.Contrast(ImageEnhance.Brightness(photo).enhance(0.7)).enhance(0.7).save(tmp_path / "photo_dark.jpg")
    photo.crop((w // 10, h // 6, w // 10 + w * 4 // 5, h // 6 + h * 4 // 5)).save(tmp_path / "photo_crop.jpg")
    rot = photo.rotate(4, resample=Image.Resampling.BICUBIC)
    rot.crop((w // 12, h // 12, w - w // 12, h - h // 12)).save(tmp_path / "photo_rotated.jpg")
    save_burst(tmp_path, photos[2], photos[1], 640, (w, h))
    f = compute_features([str(tmp_path)], embed=False, workers=1, progress=False)
    idx = {os.path.basename(p): i for i, p in enumerate(f.paths)}
    judge = PairJudge(f, "phash", DEFAULTS)
    for copy in ("photo_q30.jpg", "photo_dark.jpg", "photo_crop.jpg", "photo_rotated.jpg"):
        assert judge.passes(idx["photo.png"], idx[copy]), copy  # both bounds
    for kind in ("chart", "slide", "burst"):
        assert judge.changed(idx[f"{kind}_a.png"], idx[f"{kind}_b.png"]) > DEFAULTS.changed, kind
        assert judge.match(idx[f"{kind}_a.png"], idx[f"{kind}_b.png"]).rule != "phash", kind


def test_a_line_added_on_one_canvas_is_no_crop(tmp_path, photos):
    # The steps of a slide build share a canvas, and the border trim stops at each one's last line: the
    # earlier step trims to a part of the later one, which the warp aligned as a crop (the accuracy corpus's
    # builds: 9 false pairs on the tune half). On their canvas the added line is content over what the other
    # trimmed as border. So are a line under a narrow column (a small share of the canvas, a large one of the
    # trimmed picture) and a light grey footer. Copies still pass: a half-size JPEG (trims alike), a crop into
    # the title enlarged back to the canvas's size (the warp is needed and the trims differ, but the content
    # moved on the canvas) and a photo with a frame painted over its edges (the part only one trim kept
    # differs nearly all over: painted over, not added to).
    save_build(tmp_path)
    with Image.open(tmp_path / "build_2.png") as im:
        im.resize((400, 225), Image.Resampling.LANCZOS).save(tmp_path / "build_2_half.jpg", quality=90)
    save_build_crop(tmp_path)
    with Image.open(tmp_path / "build_3.png") as im:
        im = im.convert("RGB")
        ImageDraw.Draw(im).text((400, 330), "Confidential, internal use only", fill=(200, 200, 200),
                                font=ImageFont.load_default(size=18), anchor="mm")
        im.save(tmp_path / "build_3_footer.png")
    for name, extra in (("column_1.png", False), ("column_2.png", True)):
        im = Image.new("RGB", (1200, 675), "white")
        d = ImageDraw.Draw(im)
        for k, line in enumerate(("Budget review 2024", "Hiring plan for Q3", "Office move in June")):
            d.text((600, 250 + 56 * k), line, font=ImageFont.load_default(size=40), fill=(20, 20, 20), anchor="mm")
        if extra:
            d.text((600, 392), "Draft, not for circulation", font=ImageFont.load_default(size=20),
                   fill=(20, 20, 20), anchor="mm")
        im.save(tmp_path / name)
    photo = _rgb(photos[0]).resize((800, 450), Image.Resampling.LANCZOS)
    photo.save(tmp_path / "photo.png")
    ImageDraw.Draw(photo).rectangle((0, 0, 799, 449), outline="white", width=30)
    photo.save(tmp_path / "photo_framed.jpg", quality=90)
    f = compute_features([str(tmp_path)], embed=False, workers=1, progress=False)
    idx = {os.path.basename(p): i for i, p in enumerate(f.paths)}
    judge = PairJudge(f, "phash", DEFAULTS)
    for a, b in (("build_1.png", "build_2.png"), ("build_2.png", "build_3.png"), ("build_2_half.jpg", "build_3.png"),
                 ("build_3.png", "build_3_footer.png"), ("column_1.png", "column_2.png")):
        assert not judge.passes(idx[a], idx[b]) and not judge.passes(idx[b], idx[a]), (a, b)
    for a, b in (("build_2.png", "build_2_half.jpg"), ("build_3.png", "build_3_crop.png"),
                 ("photo.png", "photo_framed.jpg")):
        assert judge.passes(idx[a], idx[b]) and judge.passes(idx[b], idx[a]), (a, b)


def test_a_symlink_is_never_kept_nor_removed(tmp_path, photos):
    # tree/a.jpg and tree/b_link.jpg -> ../outside/o1.jpg hold the same picture; b_link sorts and ranks
    # like a real file. A link is a pointer, not a copy: it must never be kept in place of a.jpg (which an
    # action would then remove), nor removed itself; a file reached only through a linked folder is outside
    # the scanned root and takes no part either.
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    tree.mkdir()
    outside.mkdir()
    src = _rgb(photos[0])
    src.save(outside / "o1.jpg", quality=95)
    src.save(tree / "a.jpg", quality=80)  # smaller file, lower quality: the link target would win on facts
    os.symlink("../outside/o1.jpg", tree / "b_link.jpg")
    os.symlink("../outside", tree / "linked_dir")
    res = find_duplicates([str(tree)], workers=1, progress=False)
    touched = {os.path.basename(res.paths[m]) for g in res.groups for m in g.members}
    assert "b_link.jpg" not in touched and "o1.jpg" not in touched
    assert not [m for g in res.groups for m in res.removable(g)]


def test_auto_compares_embeddings_by_the_learned_similarity(edited_album):
    # The shipped head won on the held-out half, so `auto` projects the backbone's embeddings by it and uses
    # the thresholds tuned for it; learned=False is the hand rule on the raw cosine.
    raw = compute_features([str(edited_album)], embed=True, workers=1, progress=False)
    learned = group_features(raw, "auto")
    assert learned.features.model == raw.model + "+siamese"
    assert learned.features.embeddings.shape[1] < raw.embeddings.shape[1]
    assert learned.thresholds.embed_cos != DEFAULTS.embed_cos
    assert learned.thresholds.phash_cos == LEARNED["phash_cos"] > DEFAULTS.phash_cos
    hand = group_features(raw, "auto", learned=False)
    assert hand.features.model == raw.model and hand.thresholds == DEFAULTS


def test_progress_shows_the_embedding_phase_on_a_terminal(tmp_path, photos):
    # On a terminal (a pty here) dedup shows a bar per phase: decoding, then embedding, which on CPU is the
    # longer one; a bar that stopped after decoding sat at 100% for most of a run.
    import pty
    import subprocess
    import sys

    for i, p in enumerate(photos[:3]):
        _rgb(p, 320).save(tmp_path / f"p{i}.jpg", quality=90)
    import fcntl
    import struct
    import termios

    parent, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a size
    proc = subprocess.Popen([sys.executable, "-m", "imgsim_fast", "dedup", str(tmp_path), "--workers", "1"],
                            stdin=child, stdout=child, stderr=child, close_fds=True)
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(parent, 4096)
        except OSError:  # the child closed the pty
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=120) == 0
    os.close(parent)
    text = out.decode(errors="replace")
    assert "decoding" in text and "embedding views" in text, text
    assert "6/6" in text  # both views of the three files went through the embedding bar
    assert "finding pairs" in text and "grouping" in text  # the phases after them say they are running


def test_thresholds_set_on_purpose_survive_the_learned_space(edited_album, tmp_path):
    # --min-cosine 0.88 typed by a user equals the raw-cosine default; it must stay 0.88, not become the
    # learned default. And a quarantine inside the scanned folder is refused before anything happens.
    raw = compute_features([str(edited_album)], embed=True, workers=1, progress=False)
    t = Thresholds(embed_cos=DEFAULTS.embed_cos)
    assert group_features(raw, "auto", t, fixed=("embed_cos",)).thresholds.embed_cos == DEFAULTS.embed_cos
    assert group_features(raw, "auto", t).thresholds.embed_cos == _learned_embed_cos()
    before = {p: os.path.getmtime(p) for p in map(str, edited_album.iterdir())}
    assert main(["dedup", str(edited_album), "--move-to", str(edited_album / "q"), "--no-progress"]) == 2
    assert not (edited_album / "q").exists()
    assert {p: os.path.getmtime(p) for p in map(str, edited_album.iterdir())} == before


def _learned_embed_cos():
    from imgsim_fast.features.embedding.siamese import load_head

    return load_head().meta["thresholds"]["embed_cos"]


def test_pixel_check_is_the_same_either_way_round_and_for_byte_identical_files(tmp_path, photos):
    # The check maps one picture's grey levels onto the other's, so its two orders can differ; the judge
    # fixes the order by content, so a byte-identical twin of a member gets the member's verdict.
    import shutil

    from PIL import ImageDraw

    photo = _rgb(photos[2])  # with this disc, the two orders read 1.3% and 2.5%: either side of the limit
    photo.save(tmp_path / "a.png")
    edited = photo.copy()
    ImageDraw.Draw(edited).ellipse([100, 80, 160, 140], fill=(20, 20, 20))
    edited.save(tmp_path / "b.jpg", quality=80)
    shutil.copyfile(tmp_path / "b.jpg", tmp_path / "b_twin.jpg")
    f = compute_features([str(tmp_path)], embed=False, workers=1, progress=False)
    idx = {os.path.basename(p): i for i, p in enumerate(f.paths)}
    judge = PairJudge(f, "phash", DEFAULTS)
    a, b, t = idx["a.png"], idx["b.jpg"], idx["b_twin.jpg"]
    assert judge.changed(a, b) == judge.changed(b, a) == judge.changed(a, t) == judge.changed(t, a)
