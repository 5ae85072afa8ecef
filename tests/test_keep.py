"""Keep-best's pixel inspection (jobs/dedup/keep.py): the original is kept over the copies that outrank it
on facts alone (an upscale, a PNG re-save, a framed PNG, a squashed copy, a copy whose trim took a band
less), and a native larger file is never taken for an upscale of its own smaller copy."""
import io
import os

import numpy as np
import pytest
from PIL import Image, ImageOps

from imgsim_fast.features.extract import _header_facts, compute_features
from imgsim_fast.jobs.dedup import keep as K
from imgsim_fast.jobs.dedup.keep import keep_ranks


def _rgb(path, side):
    with Image.open(path) as im:
        im = im.convert("RGB")
    im.thumbnail((side, side))
    return im


def _smooth(w=960, h=540):
    """A wallpaper-like picture with no fine detail: soft gradients and one blurred disc."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.clip(60 + 120 * x / w, 0, 255)
    g = np.clip(40 + 140 * y / h, 0, 255)
    b = 160 - 80 * np.exp(-((x - w * 0.6) ** 2 + (y - h * 0.4) ** 2) / (2 * (h / 5) ** 2))
    return Image.fromarray(np.stack([r, g, b], -1).astype(np.uint8))


def _copies(d, src: Image.Image) -> dict[str, str]:
    """The original as a quality-95 JPEG, and its copies made from the decoded file, as people make them."""
    paths = {"original": str(d / "original.jpg")}
    src.save(paths["original"], quality=95)
    with Image.open(paths["original"]) as im:
        o = im.convert("RGB")
    w, h = o.size
    made = {
        "upscale.jpg": (o.resize((w * 3 // 2, h * 3 // 2), Image.Resampling.BICUBIC), {"quality": 92}),
        "resave.png": (o, {}),
        "frame.png": (ImageOps.expand(o, border=w // 10, fill=(255, 255, 255)), {}),
        "squash.jpg": (o.resize((w * 6 // 5, h), Image.Resampling.BICUBIC), {"quality": 92}),
        "half.jpg": (o.resize((w // 2, h // 2), Image.Resampling.LANCZOS), {"quality": 92}),
    }
    for name, (im, kw) in made.items():
        im.save(d / name, **kw)
        paths[name.split(".")[0]] = str(d / name)
    return paths


@pytest.fixture(scope="module", params=["photo", "smooth"])
def family(request, tmp_path_factory, photos):
    # A real photo (its detail tells an upscale from a native file) and a smooth wallpaper (no detail to
    # tell by: the earlier encode decides).
    d = tmp_path_factory.mktemp(request.param)
    src = _rgb([p for p in photos if p.endswith(".jpg")][2], 960) if request.param == "photo" else _smooth()
    paths = _copies(d, src)
    f = compute_features(list(paths.values()), embed=False, workers=1, progress=False)
    idx = {os.path.basename(p).split(".")[0]: i for i, p in enumerate(f.paths)}
    return f.facts, idx


@pytest.mark.parametrize("copy", ["upscale", "resave", "frame", "squash"])
def test_the_original_outranks_each_copy_that_wins_on_facts(family, copy):
    facts, idx = family
    o, c = idx["original"], idx[copy]
    if copy in ("upscale", "resave"):
        # The facts alone prefer these copies (more pixels; lossless): what the inspection must undo. A
        # ranking that never looked at pixels fails below for them.
        plain = keep_ranks(facts, [o, c])
        assert plain[c] < plain[o]
    r = keep_ranks(facts, [o, c], inspect=True)
    assert r[o] < r[c], (copy, r)


def test_in_a_group_of_all_the_copies_the_original_is_kept(family):
    facts, idx = family
    members = list(idx.values())
    for mtime_first in members:  # whatever file is the oldest
        fs = [K.FileFacts(**{**f.__dict__, "mtime": 0.0 if i == mtime_first else 1.0}) for i, f in enumerate(facts)]
        r = keep_ranks(fs, members, inspect=True)
        assert min(members, key=r.__getitem__) == idx["original"]


def test_a_native_file_is_not_an_upscale_of_its_half_size_copy(family):
    facts, idx = family
    o, h = idx["original"], idx["half"]
    r = keep_ranks(facts, [o, h], inspect=True)
    assert r[o] < r[h]
    assert K.derived_from(facts, o, [h]) is None


def test_a_colour_original_is_no_resave_of_its_greyscale_jpeg(tmp_path):
    # On a smooth picture a grey JPEG's pixels are the colour original's grey levels to within its encoding
    # noise: what the re-save test looks for. A colour file is never made from a grey one, so it is not asked.
    src = _smooth()
    src.save(tmp_path / "original.png")
    src.convert("L").save(tmp_path / "grey.jpg", quality=95)
    f = compute_features([str(tmp_path / "original.png"), str(tmp_path / "grey.jpg")], embed=False, workers=1,
                         progress=False)
    o, g = (f.paths.index(str(tmp_path / n)) for n in ("original.png", "grey.jpg"))
    assert K.derived_from(f.facts, o, [g]) is None
    a, b = (K._full_grey(f.facts[x].path, f.facts[x].digest) for x in (o, g))
    assert K._derived(a, b, f.facts[o], f.facts[g], "resave")  # what the pixels alone would say
    assert list(K._looked_at_file_by_file(f.facts, o, [g])) == []
    assert K._looked_at_over_columns(K.FactTable(f.facts).columns(), o, [g]) == []  # big components' way
    r = keep_ranks(f.facts, [o, g], inspect=True)
    assert r[o] < r[g], r


def test_a_smooth_upscale_at_the_originals_quality_is_not_demoted(tmp_path):
    # No detail to tell by and no earlier encode: nothing shows the larger file is a copy, so the pixels
    # count (a half-size copy is never kept over a native file for want of detail).
    src = _smooth()
    src.save(tmp_path / "small.jpg", quality=92)
    with Image.open(tmp_path / "small.jpg") as im:
        im.convert("RGB").resize((1440, 810), Image.Resampling.BICUBIC).save(tmp_path / "big.jpg", quality=92)
    f = compute_features([str(tmp_path / "small.jpg"), str(tmp_path / "big.jpg")], embed=False, workers=1,
                         progress=False)
    r = keep_ranks(f.facts, [0, 1], inspect=True)
    assert r[1] < r[0]


def test_verdicts_are_cached_under_their_version(family):
    facts, idx = family
    verdicts: dict = {}
    r = keep_ranks(facts, list(idx.values()), inspect=True, verdicts=verdicts)
    assert verdicts and all(k.startswith(f"{K.VERDICT_VERSION}:") for k in verdicts)
    # A second ranking reads only the verdicts: no file is decoded.
    gone = [K.FileFacts(**{**f.__dict__, "path": f.path + ".missing"}) for f in facts]
    assert keep_ranks(gone, list(idx.values()), inspect=True, verdicts=verdicts) == {
        m: k[:-1] + (k[-1] + ".missing",) for m, k in r.items()}
    # An old verdict (no version) is not trusted: with the files gone, nothing is judged derived.
    old = {k.split(":", 1)[1]: v for k, v in verdicts.items()}
    r_old = keep_ranks(gone, list(idx.values()), inspect=True, verdicts=old)
    assert all(k[1] == 0 for k in r_old.values())


def test_a_file_changed_since_the_scan_is_not_looked_at(tmp_path):
    """Verdicts are stored by the two files' contents: one made on pixels written after the scan would be
    stored under contents it never saw. A file that no longer holds its scanned content is not read; its
    rank stays the facts' alone, and no verdict is stored."""
    paths = _copies(tmp_path, _smooth())
    f = compute_features([paths["original"], paths["resave"]], embed=False, workers=1, progress=False)
    o, c = (f.paths.index(paths[n]) for n in ("original", "resave"))
    verdicts: dict = {}
    r = keep_ranks(f.facts, [o, c], inspect=True, verdicts=verdicts)
    assert r[o] < r[c] and list(verdicts.values()) == [True]  # unchanged: the re-save is found by its pixels
    with Image.open(paths["resave"]) as im:
        ImageOps.mirror(im).save(paths["resave"])  # rewritten after the scan
    verdicts = {}
    r = keep_ranks(f.facts, [o, c], inspect=True, verdicts=verdicts)
    assert verdicts == {} and r[c] < r[o]
    assert K._full_grey(paths["resave"], f.facts[c].digest) is None


def test_found_inside_finds_a_shifted_picture_and_not_another():
    rng = np.random.default_rng(5)
    b = rng.integers(0, 256, (90, 120)).astype(np.float32)
    a = np.full((130, 170), 255, np.float32)
    a[23:113, 31:151] = b
    trim = (29 / 170, 21 / 130, 153 / 170, 115 / 130)  # the box off by two pixels on every side
    assert K._found_inside(a, b, trim, K.RESAVE_DIFF, tones=False)
    assert K._found_inside(a * 0.8 + 20, b, trim, K.RECODE_DIFF, tones=True)  # a tone-mapped copy
    other = rng.integers(0, 256, (90, 120)).astype(np.float32)
    assert not K._found_inside(a, other, trim, K.RECODE_DIFF, tones=True)


def test_a_copy_turned_a_quarter_ranks_after_the_upright_ones():
    # Facts alone: the upright original is a lower-quality JPEG than its copies (ranked after them on
    # generation), so a quarter-turned copy would win on quality; most of the group is landscape, so it is
    # the turned one. With no majority (one of each), orientation decides nothing.
    from imgsim_fast.features.extract import FileFacts

    def facts(name, w, h, fmt="JPEG", q=92, t=0.0):
        return FileFacts(f"/p/{name}", 100_000, 1_700_000_000 + t, w, h, fmt, w * h, name, jpeg_quality=q)

    group = [facts("original.jpg", 1600, 900, q=80), facts("turned.jpg", 900, 1600, t=1),
             facts("small.jpg", 800, 450, t=2), facts("crop.jpg", 1280, 720, t=3)]
    rank = keep_ranks(group, [0, 1, 2, 3])
    assert rank[1] > max(rank[0], rank[2], rank[3])
    assert min(range(4), key=rank.__getitem__) == 0
    pair = keep_ranks(group, [0, 1])
    assert min(pair, key=pair.__getitem__) == 1  # no majority: the JPEG wins on generation as before
    # A camera file is upright by its EXIF orientation: copies that lost the tag can outnumber it.
    camera = facts("IMG_0001.jpg", 900, 1600, q=95)
    camera = FileFacts(**{**camera.__dict__, "camera": True})
    web = [facts("web1.jpg", 1600, 900, q=85, t=5), facts("web2.jpg", 1600, 900, q=80, t=6)]
    rank = keep_ranks([camera] + web, [0, 1, 2])
    assert min(rank, key=rank.__getitem__) == 0


def test_a_lossless_original_is_not_noisy_next_to_its_own_smoother_jpegs():
    # Compression (and dimming) lowers the noise estimate: a PNG original measured noisier than its own JPEG
    # copies of its size, so it ranked last on quality and a letterboxed PNG copy (a size of its own, never
    # measured against them) was kept (accuracy corpus, tune half: 15 of 34 groups). A file is measured only
    # against its own or earlier generations. A noisy PNG next to a clean PNG of its size still ranks last.
    from imgsim_fast.features.extract import FileFacts

    def facts(name, w, h, fmt, noise, q=None, t=0.0):
        return FileFacts(f"/p/{name}", 100_000, 1_700_000_000 + t, w, h, fmt, 512 * 512, name,
                         (0.0, 0.0, 1.0, 1.0) if h == 512 else (0.0, 0.07, 1.0, 0.93), q, noise=noise)

    group = [facts("original.png", 512, 512, "PNG", 2.0), facts("dim.jpg", 512, 512, "JPEG", 0.6, q=90, t=1),
             facts("q20.jpg", 512, 512, "JPEG", 0.7, q=20, t=2), facts("letterbox.png", 512, 593, "PNG", 2.0, t=3)]
    noisy = [facts("clean.png", 512, 512, "PNG", 2.0), facts("noisy.png", 512, 512, "PNG", 4.0, t=-1)]
    table = K.FactTable(group + noisy)
    for members, kept, last in (([0, 1, 2, 3], 0, 2), ([4, 5, 1], 4, 5)):
        by_file = K._ranks_file_by_file(table.facts, members, K.DEFAULT_ORDER, None)
        assert by_file == K._ranks_over_columns(table.columns(), members, K.DEFAULT_ORDER, None)
        assert min(members, key=by_file.__getitem__) == kept
        assert max(members, key=by_file.__getitem__) == last


@pytest.fixture(scope="module")
def grain_family(tmp_path_factory, photos):
    # A grainy lossless original (a photo with grain of sigma 4) and its plain q90 re-encode (which the
    # quality estimate from its table puts at 91); a clean JPEG original (q90) with two noisy copies (sigma 8):
    # a PNG, and a JPEG saved at q98, an earlier generation than its source by its tables.
    d = tmp_path_factory.mktemp("grain")
    rng = np.random.default_rng(0)
    a = np.asarray(_rgb([p for p in photos if p.endswith(".jpg")][0], 800), np.float32)
    grainy = Image.fromarray(np.clip(np.rint(a + rng.normal(0, 4, a.shape[:2] + (1,))), 0, 255).astype(np.uint8))
    grainy.save(d / "grainy.png")
    grainy.save(d / "grainy_q90.jpg", quality=90)
    Image.fromarray(a.astype(np.uint8)).save(d / "original.jpg", quality=90)
    with Image.open(d / "original.jpg") as im:
        o = np.asarray(im.convert("RGB"), np.float32)
    noisy = Image.fromarray(np.clip(np.rint(o + rng.normal(0, 8, o.shape[:2] + (1,))), 0, 255).astype(np.uint8))
    noisy.save(d / "noisy.png")
    noisy.save(d / "noisy_q98.jpg", quality=98)
    names = ("grainy.png", "grainy_q90.jpg", "original.jpg", "noisy.png", "noisy_q98.jpg")
    f = compute_features([str(d / n) for n in names], embed=False, workers=1, progress=False)
    return f.facts, {n.split(".")[0]: f.paths.index(str(d / n)) for n in names}


def test_a_grainy_original_is_no_noisy_copy_of_its_own_reencode(grain_family):
    # Grain that a re-encode smoothed away passes the noise test as if added to the re-encode (white, and
    # independent of the picture's detail): the re-encode is told by encoding the original again with its
    # quantisation table, which lands next to it. A noisy copy of a JPEG is still found.
    facts, i = grain_family
    a, b = (K._full_grey(facts[i[n]].path, facts[i[n]].digest) for n in ("grainy", "grainy_q90"))
    assert K._noise_added(a, b)  # what the noise test alone says
    assert K._reencode_of(b, a, K._luma_table(facts[i["grainy_q90"]]))
    assert K.derived_from(facts, i["grainy"], [i["grainy_q90"]]) is None
    r = keep_ranks(facts, [i["grainy"], i["grainy_q90"]], inspect=True)
    assert r[i["grainy"]] < r[i["grainy_q90"]]
    assert K.derived_from(facts, i["noisy"], [i["original"]]) == i["original"]
    r = keep_ranks(facts, [i["original"], i["noisy"]], inspect=True)
    assert r[i["original"]] < r[i["noisy"]]


def test_an_original_is_no_reencode_of_its_own_noisy_copy(grain_family):
    # A noisy copy saved at a higher quality is an earlier generation than its source, and its pixels hold
    # the source's picture within RECODE_DIFF: the source looked like its re-encode. It is not when the
    # copy is it with noise added and it is no plain re-encode of the copy. (The noisy copy itself, first on
    # generation, is not looked at: README, limits.)
    facts, i = grain_family
    o, c = i["original"], i["noisy_q98"]
    assert list(K._looked_at_file_by_file(facts, o, [c])) == [(c, "recode")]
    assert K._looked_at_over_columns(K.FactTable(facts).columns(), o, [c]) == [(c, "recode")]
    a, b = (K._full_grey(facts[x].path, facts[x].digest) for x in (o, c))
    assert K._resaved_inside(a, b, facts[o], facts[c], K.RECODE_DIFF, tones=True)  # what the test alone says
    assert K.derived_from(facts, o, [c]) is None


def test_a_picture_cut_past_its_reach_resizes_to_the_same_floats():
    # _upscale_verdict hands PIL only the rows and columns a resize reads (keep._reach); a cut that took
    # one column too few would clamp the filter at a new edge and change the last outputs. Shapes: the
    # window smaller than the picture, the peer larger than it on one axis (a downscale, a wider filter),
    # odd scales; arrays whole (rows cut) and trimmed views (both axes cut).
    from PIL import Image

    rng = np.random.default_rng(7)
    for bh, bw, ky, kx in [(900, 1200, 0.5, 0.5), (1000, 817, 0.37, 1.21), (801, 1601, 1.3, 0.66),
                           (40, 1500, 0.9, 0.25), (300, 1203, 0.8, 3.1)]:
        big = rng.random((bh + 3, bw + 5)).astype(np.float32) * 255
        small = rng.random((max(16, round(bh * ky)) + 3, max(16, round(bw * kx)) + 5)).astype(np.float32) * 255
        for B, small in ((big, small), (big[2:-1, 1:-4], small[1:-2, 4:-1])):
            (bh2, bw2), (sh, sw) = B.shape, small.shape
            h, w = min(bh2, K.UPSCALE_WINDOW), min(bw2, K.UPSCALE_WINDOW)
            y0, x0 = (bh2 - h) // 2, (bw2 - w) // 2
            sy, sx = sh / bh2, sw / bw2
            lw, lh = max(1, round(w * sx)), max(1, round(h * sy))
            box = (x0 * sx, y0 * sy, (x0 + w) * sx, (y0 + h) * sy)
            whole = Image.fromarray(small, mode="F").resize((w, h), Image.Resampling.BICUBIC, box=box)
            cut = K._pil(small, K._reach(box[3], sy, 2, sh), K._reach(box[2], sx, 2, sw)).resize(
                (w, h), Image.Resampling.BICUBIC, box=box)
            assert np.asarray(whole).tobytes() == np.asarray(cut).tobytes()
            box = (x0, y0, x0 + w, y0 + h)
            whole = Image.fromarray(B, mode="F").resize((lw, lh), Image.Resampling.BOX, box=box)
            cut = K._pil(B, K._reach(y0 + h, h / lh, 0.5, bh2), K._reach(x0 + w, w / lw, 0.5, bw2)).resize(
                (lw, lh), Image.Resampling.BOX, box=box)
            assert np.asarray(whole).tobytes() == np.asarray(cut).tobytes()


def test_all_under_agrees_with_resolving_every_path(tmp_path, monkeypatch):
    """all_under resolves each directory once; a link, 'root/..' or 'root/.' must still be judged by where
    it really leads (plan.py refuses paths outside the roots by it)."""
    monkeypatch.chdir(tmp_path)
    os.makedirs("root/sub")
    os.makedirs("out")
    for p in ("root/a", "root/sub/c", "out/b"):
        open(p, "w").close()
    os.symlink(os.path.abspath("out"), "root/dirlink")
    os.symlink(os.path.abspath("out/b"), "root/filelink")
    os.symlink("../root", "out/back")
    paths = ["root/a", "root/sub/c", "root/sub", "root", "root/", "root/.", "root/..", "root/sub/..",
             "root/../out/b", "root/dirlink/b", "root/filelink", "out/back/a", "out/b", "./root/a", "/",
             os.path.abspath("root/a"), "root/missing", "missing/x"]

    def resolved(p, folders):  # the definition: every path resolved on its own
        rp = os.path.realpath(p)
        return any(rp == os.path.realpath(f) or rp.startswith(os.path.realpath(f).rstrip(os.sep) + os.sep)
                   for f in folders)

    for folders in (["root"], ["root/"], ["out"], ["root/sub", "out"], ["/"], [str(tmp_path / "root")]):
        assert K.all_under(paths, folders) == [resolved(p, folders) for p in paths], folders
    assert K.all_under(["root/.."], ["root"]) == [False]
    assert K.all_under(["root/dirlink/b"], ["root"]) == [False]


def test_ranks_over_columns_are_the_ranks_file_by_file():
    # Big components are ranked over columns (FactTable), small ones file by file: the same keys, types and
    # order, and the same peers looked at, on random facts with ties, squashed and turned copies, bars,
    # several formats, cameras, greyscale and noisy copies, under every keep order.
    from imgsim_fast.features.extract import FileFacts

    rng = np.random.default_rng(3)
    facts = []
    for x in range(600):
        w, h = [(1920, 1080), (1080, 1920), (1600, 1200), (2496, 1080), (1000, 1000), (800, 450)][rng.integers(6)]
        if rng.random() < 0.2:  # resized, keeping the shape up to rounding
            w, h = int(w * 0.5) + int(rng.integers(0, 2)), int(h * 0.5)
        trim = (0.0, 0.0, 1.0, 1.0) if rng.random() < 0.8 else (0.0, 0.125, 1.0, 0.875)
        fmt = str(rng.choice(["JPEG", "PNG", "WEBP", "BMP"]))
        facts.append(FileFacts(
            f"/c/{rng.integers(0, 50)}/f{x}.{fmt.lower()}", int(rng.integers(1e4, 1e6)), float(rng.integers(0, 5)),
            w, h, fmt, int((trim[2] - trim[0]) * w * (trim[3] - trim[1]) * h), f"d{rng.integers(0, 60)}", trim,
            int(rng.choice([50, 75, 90, 95])) if fmt == "JPEG" and rng.random() < 0.9 else None,
            bool(rng.random() < 0.1), float(rng.choice([0.8, rng.uniform(0.5, 4.0)])), bool(rng.random() < 0.9),
            bool(rng.random() < 0.2)))
    table = K.FactTable(facts)
    orders = [K.DEFAULT_ORDER, tuple(c for c in K.CRITERIA if c != "newest"), ("quality", "content", "size"),
              ("newest", "shortest-path")]
    for trial in range(60):
        members = rng.choice(len(facts), int(rng.choice([2, 5, 48, 200, 600])), replace=False).tolist()
        reference = None if trial % 3 else (rng.random(len(facts)) < 0.05).tolist()
        order = orders[trial % 4]
        by_file = K._ranks_file_by_file(facts, members, order, reference)
        by_column = K._ranks_over_columns(table.columns(), members, order, reference)
        assert list(by_file.items()) == list(by_column.items())
        assert all(list(map(type, by_file[m])) == list(map(type, by_column[m])) for m in members)
        top, peers = members[0], members[1:]
        assert list(K._looked_at_file_by_file(facts, top, peers)) == K._looked_at_over_columns(table.columns(), top,
                                                                                                 peers)


def test_a_screenshot_drawn_on_an_8_pixel_grid_is_kept_over_its_jpeg(tmp_path):
    # A PNG drawn on an 8-pixel grid (a dialog: panels, rules and buttons at multiples of 8) shows the
    # 8-periodic edges a JPEG block grid leaves, so the facts call it blocky. It is the original all the
    # same: its JPEG copy is kept only where the PNG holds the JPEG's pixels (an exact re-save).
    from PIL import ImageDraw, ImageFont

    im = Image.new("RGB", (640, 480), (246, 245, 244))
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=16)
    d.rectangle((0, 0, 639, 47), fill=(235, 235, 235))
    d.text((232, 16), "Syncing region", fill=(40, 40, 40), font=font)
    for k, y in enumerate(range(64, 400, 24)):
        d.text((24, y), f"Option {k}: share storage document panel {k * 37}", fill=(30, 30, 30), font=font)
        d.rectangle((560, y, 615, y + 16), outline=(150, 150, 160), fill=(255, 255, 255))
    d.rectangle((496, 440, 615, 471), fill=(53, 132, 228))
    im.save(tmp_path / "dialog.png")
    im.save(tmp_path / "dialog_q70.jpg", quality=70)
    with Image.open(tmp_path / "dialog_q70.jpg") as j:
        j.convert("RGB").save(tmp_path / "resave.png")  # the JPEG's own pixels, saved losslessly
    f = compute_features([str(tmp_path)], embed=False, workers=1, progress=False)
    idx = {os.path.basename(p): i for i, p in enumerate(f.paths)}
    png, jpg, resave = idx["dialog.png"], idx["dialog_q70.jpg"], idx["resave.png"]
    assert f.facts[png].blocky  # what used to put it after every JPEG
    r = keep_ranks(f.facts, [png, jpg], inspect=True)
    assert r[png] < r[jpg], r
    r = keep_ranks(f.facts, [resave, jpg], inspect=True)
    assert r[jpg] < r[resave], r


def test_the_jpeg_quality_estimate_reads_back_every_quality_libjpeg_was_given():
    """A file's generation is its JPEG quality, estimated from the luminance table in its header; every
    quality Pillow's libjpeg writes must read back as itself (compared in the wrong coefficient order, 31 of
    the 100 came back one or two off)."""
    pic = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8))
    got = {}
    for q in range(1, 101):
        buf = io.BytesIO()
        pic.save(buf, "JPEG", quality=q)
        got[q] = _header_facts("x.jpg", buf.getvalue())[3]
    assert {q: e for q, e in got.items() if e != q} == {}


def test_a_caption_over_a_dark_margin_does_not_outrank_its_original(tmp_path):
    # A dark wallpaper's vignette passes for border with the trim, and a caption written there stops the trim:
    # the captioned copy then had more content and another shape than its original, which was marked for
    # removal (a user trial, on a real wallpaper). Files of one pixel size are judged on one trim.
    from PIL import ImageDraw

    from imgsim_fast.bench.corpus import _font

    w, h = 960, 600
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((x - w / 2) / (w * 0.30)) ** 2 + ((y - h / 2) / (h * 0.23)) ** 2
    base = 6 + 10 * np.exp(-((x - w / 2) ** 2 + (y - h / 2) ** 2) / (2 * (w / 3) ** 2))  # a dark vignette
    pic = np.stack([base, base, base + 8], -1)
    rng = np.random.default_rng(0)
    subject = np.clip(rng.normal(150, 60, (h, w, 3)), 0, 255)  # a bright, detailed subject in the middle
    pic = np.where((r2 <= 1)[..., None], subject, pic).astype(np.uint8)
    original = Image.fromarray(pic)
    original.save(tmp_path / "original.jpg", quality=97)
    caption = Image.open(tmp_path / "original.jpg").convert("RGB")
    ImageDraw.Draw(caption).text((w // 30, h - h // 8), "Summer holiday 2023", font=_font(h // 14), fill=(255, 255, 255))
    caption.save(tmp_path / "caption.jpg", quality=90)
    os.utime(tmp_path / "caption.jpg", (1e9, 1e9))  # the older file: only the pixels and the encoding can tell
    feats = compute_features([str(tmp_path / "original.jpg"), str(tmp_path / "caption.jpg")], progress=False)
    o, c = ([f.path for f in feats.facts].index(str(tmp_path / n)) for n in ("original.jpg", "caption.jpg"))
    assert feats.facts[c].content_pixels > 1.1 * feats.facts[o].content_pixels  # the trims differ, as in the trial
    for inspect in (False, True):
        ranks = keep_ranks(feats.facts, [c, o], inspect=inspect)
        assert min(ranks, key=ranks.__getitem__) == o, (inspect, ranks)


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_a_picture_shrunk_into_bars_of_its_own_size_does_not_outrank_its_original(tmp_path, fmt):
    # The other side of the rule above: a copy holding the picture smaller, inside black bars on a canvas of
    # the original's size, keeps its own trim and its smaller content (a review found the first version of
    # the rule keeping it, as a lossless or higher-quality file).
    rng = np.random.default_rng(1)
    w, h = 800, 450
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    pic = np.stack([120 + 80 * np.sin(x / 48), 100 + 60 * np.cos(y / 35 + x / 150), 90 + 50 * np.sin((x + y) / 65)], -1)
    pic = np.clip(pic + rng.normal(0, 12, pic.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pic).save(tmp_path / "original.jpg", quality=85)
    canvas = Image.new("RGB", (w, h))
    canvas.paste(Image.open(tmp_path / "original.jpg").convert("RGB").resize((640, 360), Image.LANCZOS), (80, 45))
    copy = tmp_path / f"framed.{fmt}"
    canvas.save(copy, **({"quality": 95} if fmt == "jpg" else {}))
    os.utime(copy, (1e9, 1e9))  # the older file
    feats = compute_features([str(tmp_path / "original.jpg"), str(copy)], progress=False)
    o = [f.path for f in feats.facts].index(str(tmp_path / "original.jpg"))
    for inspect in (False, True):
        ranks = keep_ranks(feats.facts, [1 - o, o], inspect=inspect)
        assert min(ranks, key=ranks.__getitem__) == o, (inspect, ranks)


def test_a_rotated_copy_whose_trim_kept_more_of_a_fog_does_not_outrank_its_original():
    # A foggy pier (audit corpus): the trim takes the fog over half the original's height, and 40% of its
    # 2-degree rotation's, cut to the same shape and a little smaller. On their own trims the copy has more
    # content; judged on the trim that kept the most of one picture's shape, at each file's size, the
    # original has. A copy framed on a canvas of that shape keeps its own trim and its smaller content.
    from imgsim_fast.features.extract import FileFacts

    def facts(name, w, h, trim, fmt="PNG", quality=None):
        content = int((trim[2] - trim[0]) * w * (trim[3] - trim[1]) * h)
        return FileFacts(f"/p/{name}", 10**6, 1e9, w, h, fmt, content, name, trim, quality, False, 1.0, True, False)

    original = facts("pier.png", 1024, 640, (0.0, 0.5, 1.0, 1.0))
    rotated = facts("pier_rotated.jpg", 970, 606, (0.0, 0.4, 1.0, 1.0), "JPEG", 95)
    framed = facts("pier_framed.png", 1024, 640, (0.15, 0.3, 0.85, 0.85))
    for fs in ([original, rotated], [rotated, original], [original, rotated, framed]):
        ranks = K.keep_ranks(fs, list(range(len(fs))))
        assert fs[min(ranks, key=ranks.__getitem__)] is original, ranks
        table = K.FactTable(fs)
        assert K._ranks_over_columns(table.columns(), list(range(len(fs))), K.DEFAULT_ORDER, None) == \
            K._ranks_file_by_file(fs, list(range(len(fs))), K.DEFAULT_ORDER, None)
    fs = (original, rotated, framed)
    trim_of, content = K._shared_trims([f.width for f in fs], [f.height for f in fs], [f.content_pixels for f in fs],
                                       [K._log_aspect(*K._content_size(f)) for f in fs], [f.trim for f in fs])
    assert trim_of.tolist() == [1, 1, 2] and content[2] == framed.content_pixels
    assert content[0] == round(0.6 * 1024 * 640), content
