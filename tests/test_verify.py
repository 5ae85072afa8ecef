"""The pixel check of the pair test (jobs/dedup/verify.py) on synthetic thumbnails: what a copy may change
and what a look-alike does."""
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from imgsim_fast.jobs.dedup import verify
from imgsim_fast.jobs.dedup.detect import DEFAULTS

LIMIT = DEFAULTS.changed
STRONG = DEFAULTS.strong
SIDE = 128


def _scene(seed: int = 0, side: int = 512) -> np.ndarray:
    """A photo-like grey picture: smooth shapes of several sizes plus fine texture."""
    rng = np.random.default_rng(seed)
    x = sum(ndimage.gaussian_filter(rng.normal(0, 1, (side, side)), s) * s for s in (2, 8, 24))
    x = (x - x.min()) / (x.max() - x.min()) * 200 + 20
    return x.astype(np.uint8)


def _thumb(a: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((SIDE, SIDE), Image.Resampling.LANCZOS))


def test_erosion_matches_scipy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = np.ones((40, 40), bool)
        m[rng.integers(0, 40, 30), rng.integers(0, 40, 30)] = False
        m[:rng.integers(0, 5), :] = False
        assert (verify._erode(m, 2) == ndimage.binary_erosion(m, iterations=2)).all()


def _lk_reference(a: np.ndarray, b: np.ndarray, p: np.ndarray, iters: int) -> np.ndarray:
    """Forward-additive Lucas-Kanade with a gain and an offset, written out in NumPy the plain way: a pass
    for the covered pixels, the means and the gain, then one for the normal equations with the residuals
    (what verify._lk computes in a single pass). Sampling as verify._sample: clamped, bilinear."""
    h, w = a.shape
    hb, wb = b.shape
    gx = np.zeros_like(b)
    gy = np.zeros_like(b)
    gx[:, 1:-1] = (b[:, 2:] - b[:, :-2]) / 2
    gx[:, 0], gx[:, -1] = (b[:, 1] - b[:, 0]) / 2, (b[:, -1] - b[:, -2]) / 2
    gy[1:-1] = (b[2:] - b[:-2]) / 2
    gy[0], gy[-1] = (b[1] - b[0]) / 2, (b[-1] - b[-2]) / 2
    r, c = np.mgrid[0:h, 0:w].astype(np.float64)

    def sample(img, xs, ys):
        x0 = np.minimum(xs.astype(int), wb - 2)
        y0 = np.minimum(ys.astype(int), hb - 2)
        fx, fy = xs - x0, ys - y0
        return (img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx) * (1 - fy) + \
            (img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx) * fy

    p = p.astype(np.float64).copy()
    for _ in range(iters):
        xs = (1 + p[0]) * c + p[2] * r + p[4]
        ys = p[1] * c + (1 + p[3]) * r + p[5]
        ins = (xs >= 0) & (xs <= wb - 1) & (ys >= 0) & (ys <= hb - 1)
        if ins.sum() < 0.3 * h * w:
            break
        xs, ys, cc, rr, av = xs[ins], ys[ins], c[ins], r[ins], a[ins]
        bw = sample(b, xs, ys)
        gain = np.sqrt(av.var() / bw.var()) if bw.var() > 1e-12 and av.var() > 0 else 1.0
        ex, ey = sample(gx, xs, ys) * gain, sample(gy, xs, ys) * gain
        res = gain * (bw - bw.mean()) - (av - av.mean())
        J = np.stack([ex * cc, ey * cc, ex * rr, ey * rr, ex, ey], axis=1)
        dp = np.linalg.solve(J.T @ J + 1e-6 * np.eye(6), -(J.T @ res))
        p += dp
        if max(abs(dp[4]), abs(dp[5])) < 0.01 and np.abs(dp[:4]).max() < 1e-4:
            break
    return p


def test_lucas_kanade_in_one_pass_solves_the_two_pass_equations():
    # verify._lk sums the normal equations in one pass, before the gain is known, each row's sums scaled by its
    # row number once: the same equations, so the same fit as the plain two passes but for rounding.
    # Pictures as the callers pass them (_normalised); a and b of other shapes, neither square, the last time.
    rng = np.random.default_rng(3)
    for seed, (h, w), (hb, wb) in ((0, (32, 32), (32, 32)), (1, (64, 64), (64, 64)), (2, (72, 96), (80, 60))):
        a = ndimage.gaussian_filter(_scene(seed, 2 * max(h, w))[:2 * h:2, :2 * w:2].astype(np.float64), 1.0)
        angle, scale = rng.uniform(-0.05, 0.05), rng.uniform(0.9, 1.1)
        lin = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        b = 1.3 * ndimage.affine_transform(a, lin, offset=rng.uniform(-3, 3, 2), output_shape=(hb, wb), order=1,
                                           mode="nearest") + 7
        a, b = verify._normalised(a), verify._normalised(b)
        start = np.array([0.0, 0.0, 0.0, 0.0, 0.5, -0.5])
        for iters in (1, 3, 25):
            got, want = verify._lk(a, b, start, iters), _lk_reference(a, b, start, iters)
            assert np.allclose(got, want, rtol=1e-9, atol=1e-9), (h, w, iters, got, want)
        # and the fit is an alignment: b warped by it is a again, up to the gain and offset
        bw, inside = verify._warp(b, got, h, w)
        fit = np.polyfit(bw[inside], a[inside], 1)
        assert np.abs(np.polyval(fit, bw[inside]) - a[inside]).mean() < 0.05 * a.std(), (h, w)
    # A start that covers under 30% of a leaves p as it was, in both.
    far = np.array([0.0, 0.0, 0.0, 0.0, 0.8 * wb, 0.8 * hb])
    assert np.array_equal(verify._lk(a, b, far, 5), far) and np.array_equal(_lk_reference(a, b, far, 5), far)


def test_global_edits_change_nothing_local_edits_do():
    big = _scene()
    a = _thumb(big)
    gamma = (255 * (big / 255.0) ** 0.6).astype(np.uint8)  # a monotone intensity edit
    assert verify.compare(a, _thumb(gamma), LIMIT, STRONG).passes(LIMIT, STRONG)
    shifted = np.roll(big, 3, axis=1)  # under a thumbnail pixel
    assert verify.compare(a, _thumb(shifted), LIMIT, STRONG).passes(LIMIT, STRONG)
    # A subject moved into one spot (a burst frame): a light disc 80 px across, 2% of the picture.
    yy, xx = np.mgrid[0:512, 0:512]
    pasted = big.copy()
    pasted[(yy - 230) ** 2 + (xx - 270) ** 2 < 40 ** 2] = 245
    v = verify.compare(a, _thumb(pasted), LIMIT, STRONG)
    assert LIMIT < v.changed < 0.25, v


def test_crop_and_rotation_are_aligned():
    big = _scene(1)
    a = _thumb(big)
    crop = big[40:40 + 410, 70:70 + 410]  # 80% of each side, off centre
    v = verify.compare(a, _thumb(crop), LIMIT, STRONG)
    assert v.aligned and v.passes(LIMIT, STRONG) and 0.55 < v.coverage < 0.8, v
    rot = np.asarray(Image.fromarray(big).rotate(4, resample=Image.Resampling.BICUBIC))[40:-40, 40:-40]
    v = verify.compare(a, _thumb(rot), LIMIT, STRONG)
    assert v.aligned and v.passes(LIMIT, STRONG), v
    # Both ways round: the original against its crop.
    assert verify.compare(_thumb(crop), a, LIMIT, STRONG).passes(LIMIT, STRONG)


def test_two_pictures_sharing_a_region_are_not_a_copy():
    # The top halves are one picture, the bottom halves differ (slides of one template): an alignment that
    # keeps only the shared half covers neither picture whole and is refused.
    top = _scene(2)
    a, b = top.copy(), top.copy()
    a[256:] = _scene(3)[256:]
    b[256:] = _scene(4)[256:]
    assert verify.compare(_thumb(a), _thumb(b), LIMIT, STRONG).changed > LIMIT


def test_smoothing_matches_scipy():
    rng = np.random.default_rng(1)
    # Sides down to the filter's radius: the mirrored edges then meet, or leave no interior at all.
    for shape in ((37, 53), (2, 9), (9, 2), (3, 3), (4, 5), (5, 4), (2, 2)):
        x = rng.normal(size=shape)
        for taps in (verify._TAPS, verify._BOX):
            if min(shape) < len(taps) // 2:
                continue
            ref = ndimage.correlate1d(ndimage.correlate1d(x, taps, axis=1, mode="reflect"), taps, axis=0,
                                      mode="reflect")
            assert np.allclose(verify._smooth(x, taps), ref, atol=1e-12), (shape, len(taps))


def _count_by_numpy(a, b, ca, cb, inner, floor, k, k_strong, shift):
    """verify._count the plain way: every shift in row-major order of (dy, dx), the first with fewest changed."""
    h, w = a.shape
    core = (slice(shift, h - shift), slice(shift, w - shift))
    sel = inner[core]
    if not sel.any():
        return 1.0, 1.0
    best = (sel.sum(), sel.sum())  # (1, 1) unless a shift beats it
    for dy in range(-shift, shift + 1):
        for dx in range(-shift, shift + 1):
            moved = (slice(shift + dy, h - shift + dy), slice(shift + dx, w - shift + dx))
            d = np.abs(a[core] - b[moved])[sel]
            contrast = np.minimum(ca[core], cb[moved])[sel] + floor
            c, s = int((d > k * contrast).sum()), int((d > k_strong * contrast).sum())
            if c < best[0]:
                best = (c, s)
    return best[0] / sel.sum(), best[1] / sel.sum()


def test_the_shift_count_equals_trying_every_shift():
    # _count starts at the unshifted copy and leaves a shift once it has more changed pixels than the best:
    # the answer must stay that of trying every shift in order (ties to the first), strong count included.
    rng = np.random.default_rng(3)
    for trial in range(60):
        h, w = rng.integers(8, 40, 2)
        a = rng.normal(100, 30, (h, w))
        b = np.roll(a, (rng.integers(-2, 3), rng.integers(-2, 3)), (0, 1)) + rng.normal(0, rng.choice([0.5, 5, 40]), (h, w))
        if trial % 5 == 0:
            b = a.copy()  # every shift ties somewhere
        ca, cb = np.abs(rng.normal(3, 2, (h, w))), np.abs(rng.normal(3, 2, (h, w)))
        inner = rng.random((h, w)) < (1.0 if trial % 3 else 0.7)
        if trial % 17 == 0:
            inner[:] = False
        for shift in (0, 1, 2):
            # k < 0: every pixel changed at every shift (strongly too, or not at all)
            for k, k_strong in ((0.5, 1.0), (3.0, 6.0), (-1.0, -1.0), (-1.0, 1e9)):
                args = (a, b, ca, cb, inner, 1.0, k, k_strong, shift)
                assert verify._count(*args) == _count_by_numpy(*args), (trial, shift, k)


def test_a_flat_picture_is_no_copy_of_a_textured_one():
    # Histogram matching would map the texture onto the flat picture's single grey level; either order.
    flat = np.full((SIDE, SIDE), 40, np.uint8)
    scene = _thumb(_scene(6))
    assert verify.compare(flat, scene, LIMIT, STRONG).changed > LIMIT
    assert verify.compare(scene, flat, LIMIT, STRONG).changed > LIMIT
    low = (scene.astype(np.float64) * 0.6 + 50).astype(np.uint8)  # a contrast x0.6 copy stays a copy
    assert verify.compare(scene, low, LIMIT, STRONG).passes(LIMIT, STRONG)


def test_thumbnails_of_another_size_are_refused_not_read_past():
    import pytest

    with pytest.raises(ValueError):
        verify.compare(np.zeros((128, 128), np.uint8), np.zeros((64, 64), np.uint8), LIMIT, STRONG)


def test_a_checks_verdict_is_kept_by_content_and_served_to_a_later_scan(monkeypatch):
    # PairJudge.checks holds a verdict by the two contents (sorted digests), the flip and the limit: a later
    # judge over other files in another order, sharing the dict, reads it instead of checking again, and a
    # pair asked the other way round (the inverse flip) is the same check.
    from imgsim_fast.features.extract import THUMB_SIDE, Features, FileFacts
    from imgsim_fast.jobs.dedup import detect

    rng = np.random.default_rng(3)
    pics = {d: ndimage.gaussian_filter(rng.random((THUMB_SIDE, THUMB_SIDE)) * 255, 2).astype(np.uint8)
            for d in ("aa", "bb", "cc")}
    pics["bb"] = np.rot90(pics["aa"], 1).copy()  # bb is aa turned a quarter

    def judge(digests, checks):
        facts = [FileFacts(f"/x/{k}.png", 1, 0.0, 8, 8, "PNG", 64, d) for k, d in enumerate(digests)]
        codes = np.zeros((len(digests), 8, 1), np.uint64)
        return detect.PairJudge(Features(facts, codes, thumbs=np.stack([pics[d] for d in digests])), "phash",
                                checks=checks)

    checks: dict = {}
    calls = []
    real = detect.compare
    monkeypatch.setattr(detect, "compare", lambda *a: calls.append(1) or real(*a))
    first = judge(["aa", "bb"], checks)
    turned = first.changed(0, 1, 3)  # aa against bb turned back (TRANSFORMS[3] is rot270)
    assert len(calls) == 1 and len(checks) == 1 and turned <= DEFAULTS.changed
    assert first.changed(1, 0, 1) == turned and len(calls) == 1  # the same check asked the other way round
    later = judge(["cc", "bb", "aa"], checks)  # another scan: other files, bb now found before aa
    assert later.changed(2, 1, 3) == turned and len(calls) == 1
    assert later.changed(0, 1) > DEFAULTS.changed and len(calls) == 2 and len(checks) == 2


def test_a_small_change_of_content_fails_though_under_the_changed_bound():
    # Two progress dialogs of one application, the bar filled further in one: under 1% of the picture
    # differs, less than a rotated copy's resampling changes, but it differs by far more than the local
    # contrast (other content, not resampling), and the strong bound refuses it. The old check (one bound)
    # called the two copies.
    dialog = np.full((480, 640), 236, np.uint8)
    dialog[:40] = 60  # title bar
    for y in range(90, 300, 30):  # lines of text
        dialog[y:y + 8, 40:40 + (y * 7) % 400 + 120] = 30
    dialog[370:400, 40:600] = 200  # the progress bar's trough
    a, b = dialog.copy(), dialog.copy()
    a[370:400, 40:240] = 50  # filled to a third ...
    b[370:400, 40:340] = 50  # ... and to a half
    v = verify.compare(_thumb(a), _thumb(b), LIMIT, STRONG)
    assert v.changed <= LIMIT < 1, v  # what the first check looked at alone
    assert v.strong > STRONG and not v.passes(LIMIT, STRONG), v
    # A copy of the same dialog, re-saved at half size, passes both bounds.
    half = np.asarray(Image.fromarray(a).resize((320, 240), Image.Resampling.BILINEAR))
    assert verify.compare(_thumb(a), _thumb(half), LIMIT, STRONG).passes(LIMIT, STRONG)


def test_a_contrast_stretch_that_clips_is_a_copy_whichever_picture_comes_first():
    # Contrast x1.8 about mid-grey clips a smooth picture's brightest and darkest tones to white and black:
    # the histogram match maps the original onto the copy exactly, but cannot split the copy's merged levels
    # back into the original's gradient. Checked in one order fixed by content (detect), such a copy failed
    # whenever the copy came second; the check now tries both ways (accuracy corpus, tune half: three
    # greyscale copies at contrast x1.4 on smooth pictures). A local change still fails either way.
    rng = np.random.default_rng(0)
    x = ndimage.gaussian_filter(rng.normal(0, 1, (512, 512)), 32)
    big = ((x - x.min()) / (x.max() - x.min()) * 235 + 10).astype(np.uint8)
    stretched = np.clip((big.astype(np.float64) - 128) * 1.8 + 128, 0, 255).astype(np.uint8)
    assert (stretched == 255).mean() > 0.01 and (stretched == 0).mean() > 0.05
    a, b = _thumb(big), _thumb(stretched)
    full = np.ones(a.shape, bool)
    one_way = verify._count(*verify._prepare(a.astype(np.float64), b.astype(np.float64), full, verify._TAPS,
                                             verify._BOX, False),
                            full, verify.CONTRAST_FLOOR, verify.CHANGE_K, verify.STRONG_K, 2)
    assert one_way[0] > LIMIT  # what the check said with the copy second
    for x, y in ((a, b), (b, a)):
        assert verify.compare(x, y, LIMIT, STRONG).passes(LIMIT, STRONG)
    yy, xx = np.mgrid[0:512, 0:512]
    pasted = stretched.copy()
    disc = (yy - 230) ** 2 + (xx - 270) ** 2 < 60 ** 2  # a patterned subject 120 px across: 4% of it
    pasted[disc] = np.where((yy // 8 + xx // 8) % 2, 40, 210)[disc]
    for x, y in ((a, _thumb(pasted)), (_thumb(pasted), a)):
        assert not verify.compare(x, y, LIMIT, STRONG).passes(LIMIT, STRONG)


def test_a_crop_the_warp_fits_one_way_round_only_is_aligned_either_way(photos):
    # Lucas-Kanade fits the second picture onto the first; on a smooth wallpaper it finds a corner crop one
    # way round and not the other. The check fits the other way where the first fails, so the verdict no
    # longer depends on which file comes first. Another wallpaper's crop still fails.
    from imgsim_fast.features.extract import trim_uniform_borders

    def thumb(im):
        return np.asarray(trim_uniform_borders(im)[0].convert("L").resize((SIDE, SIDE), Image.Resampling.LANCZOS))

    pics = {}
    for name in ("backgrounds_desert.png", "backgrounds_city.png"):
        path = next((p for p in photos if p.endswith(name)), None)
        if path is None:
            pytest.skip(f"{name} not among the demo photos")
        with Image.open(path) as im:
            pics[name] = im.convert("RGB")
    im = pics["backgrounds_desert.png"]
    w, h = im.size
    cw, ch = int(w * 0.8), int(h * 0.8)
    a, b = thumb(im), thumb(im.crop((w - cw, 0, w, ch)))  # the top right corner
    one_way = [verify._aligned(x.astype(np.float64), y.astype(np.float64)) for x, y in ((a, b), (b, a))]
    assert sorted(r[0] <= LIMIT and r[1] <= STRONG for r in one_way) == [False, True]
    for x, y in ((a, b), (b, a)):
        assert verify.compare(x, y, LIMIT, STRONG).passes(LIMIT, STRONG)
    other = pics["backgrounds_city.png"]
    c = thumb(other.crop((other.width - int(other.width * 0.8), 0, other.width, int(other.height * 0.8))))
    for x, y in ((a, c), (c, a)):
        assert not verify.compare(x, y, LIMIT, STRONG).passes(LIMIT, STRONG)
