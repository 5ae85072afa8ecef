"""The overlay route of the pair test (verify.overlay_measures, Thresholds.overlay_*): a photo with a caption
or a large watermark written over it is a duplicate of the photo; a burst frame with a subject that walked in
is not, though its pixels differ from the empty scene on one side too (a blob, neither a band nor strokes),
nor are two dialogs of one application (other words over flat areas)."""
import dataclasses
import glob
import os

import numpy as np
import pytest
from PIL import Image

from imgsim_fast.bench.corpus import apply_edit
from imgsim_fast.features.extract import compute_features
from imgsim_fast.jobs.dedup import group_features, verify
from imgsim_fast.jobs.dedup.detect import DEFAULTS, PairJudge, check_key_prefix
from conftest import PHOTO_DIR
from lookalike_pictures import rgb, save_about_boxes, save_build, save_burst, textured_share


@pytest.fixture(scope="module")
def folder(tmp_path_factory, photos):
    # The route is for captions over photos with texture (a caption over a smooth wallpaper is refused: over
    # flat areas words are what tells two dialogs apart): the most textured photos of the set.
    photos = sorted(photos, key=textured_share, reverse=True)
    d = tmp_path_factory.mktemp("overlay")
    photo = rgb(photos[0])
    photo.save(d / "photo.png")
    rng = np.random.default_rng(3)
    for level in ("mild", "strong"):  # a caption in a corner; a two-line watermark across the middle
        im, _ = apply_edit(photo, "text", level, rng)
        im.save(d / f"photo_text_{level}.jpg", quality=90)
    # A burst: the scene alone, and two frames with a subject pasted at two places along.
    save_burst(d, photos[2], photos[1], 640, photo.size)
    rgb(photos[2]).save(d / "burst_empty.png")
    save_about_boxes(d)
    # The smoothest photo (a flat-design wallpaper), watermarked: the texture floors refuse it, the page
    # probe lifts them for two pictures. Beside it the steps of a slide build: words added over flat areas too.
    smooth = rgb(photos[-1])
    smooth.save(d / "smooth.png")
    apply_edit(smooth, "text", "strong", np.random.default_rng(3))[0].save(d / "smooth_text_strong.jpg", quality=90)
    save_build(d)
    return d


@pytest.fixture(scope="module")
def features(folder):
    return compute_features([str(folder)], embed=True, workers=1, progress=False)


def _ix(features):
    return {os.path.basename(p): k for k, p in enumerate(features.paths)}


def _band(rows, cols):
    return rows <= DEFAULTS.overlay_rows and cols >= DEFAULTS.overlay_wide * rows


def test_a_caption_is_a_band_and_a_watermark_strokes_drawn_over_one_picture(features):
    ix, th = _ix(features), features.thumbs
    t = DEFAULTS
    _, side, texture, rows, cols, _ = verify.overlay_measures(th[ix["photo.png"]], th[ix["photo_text_mild.jpg"]])
    assert side >= t.overlay_side and texture >= t.overlay_texture, (side, texture)
    assert _band(rows, cols), (rows, cols)
    # The watermark is drawn over one picture too, over a third of its height: no band, but letters.
    _, side, texture, rows, cols, strokes = verify.overlay_measures(th[ix["photo.png"]], th[ix["photo_text_strong.jpg"]])
    assert side >= t.overlay_stroke_side and not _band(rows, cols), (side, rows, cols)
    assert strokes >= t.overlay_strokes and texture >= t.overlay_stroke_texture, (strokes, texture)
    # Two frames of the burst: the subject moved, so each picture is the more contrasted one somewhere.
    _, side, *_ = verify.overlay_measures(th[ix["burst_a.png"]], th[ix["burst_b.png"]])
    assert side < t.overlay_side, side
    # The empty scene against a frame: one-sided, as a caption is, but a blob: no band, and long runs.
    _, side, _, rows, cols, strokes = verify.overlay_measures(th[ix["burst_empty.png"]], th[ix["burst_a.png"]])
    assert side >= t.overlay_side and not _band(rows, cols), (side, rows, cols)
    assert strokes < t.overlay_strokes, strokes
    # Which picture is named first does not matter (each grey-level mapping is tried, the better kept).
    assert verify.overlay_measures(th[ix["photo_text_strong.jpg"]], th[ix["photo.png"]]) == \
        verify.overlay_measures(th[ix["photo.png"]], th[ix["photo_text_strong.jpg"]])
    # Two about boxes: other words over the flat areas every dialog of the application shares.
    _, _, texture, *_ = verify.overlay_measures(th[ix["about_report.png"]], th[ix["about_local.png"]])
    assert texture < DEFAULTS.overlay_texture, texture


def test_a_captioned_copy_is_a_duplicate_and_the_look_alikes_are_not(features):
    res = group_features(features, "auto")
    assert res.thresholds.overlay_cos <= 1.0  # the learned space opens the route
    names = [os.path.basename(p) for p in res.paths]
    dup = {frozenset(names[m] for m in g.members): g for g in res.groups if g.tier == "duplicate"}
    photo = [g for k, g in dup.items() if "photo.png" in k]
    assert len(photo) == 1, list(dup)
    g = photo[0]
    assert {names[m] for m in g.members} == {"photo.png", "photo_text_mild.jpg", "photo_text_strong.jpg"}, list(dup)
    names_in = [names[m] for m in g.members]
    for name in ("photo_text_mild.jpg", "photo_text_strong.jpg"):
        match = g.matches[names_in.index(name)]
        assert match.duplicate and match.overlay, match
        assert "text written over" in match.describe(), match.describe()
        # ... over the share the route found changed (its own count), not the refused check's.
        keeper, copy = (res.features.thumbs[m] for m in (g.members[0], g.members[names_in.index(name)]))
        assert match.changed == pytest.approx(verify.overlay_measures(keeper, copy)[0]), match
    # No burst frame and no dialog is a duplicate of another (a copy of one about box is, so only the group
    # of about_report and its copies is allowed).
    for k in dup:
        assert not k & {"burst_empty.png", "burst_a.png", "burst_b.png", "about_local.png"}, k


def test_a_watermarked_smooth_picture_passes_as_two_pictures_and_slides_do_not(features):
    res = group_features(features, "auto")
    ix, t, pages = _ix(features), res.thresholds, res.features.page_scores
    # The CNN's page probe calls the photos pictures and the dialogs and slide steps pages.
    for name in ("photo.png", "photo_text_strong.jpg", "smooth.png", "smooth_text_strong.jpg", "burst_a.png"):
        assert pages[ix[name]] < t.overlay_page, (name, pages[ix[name]])
    for name in ("about_report.png", "about_local.png", "build_1.png", "build_2.png", "build_3.png"):
        assert pages[ix[name]] >= t.overlay_page, (name, pages[ix[name]])
    a, b = ix["smooth.png"], ix["smooth_text_strong.jpg"]
    _, side, texture, rows, cols, strokes = verify.overlay_measures(features.thumbs[a], features.thumbs[b])
    assert texture < t.overlay_stroke_texture and strokes >= t.overlay_strokes, (texture, strokes)
    names = [os.path.basename(p) for p in res.paths]
    dup = {frozenset(names[m] for m in g.members): g for g in res.groups if g.tier == "duplicate"}
    g = dup.get(frozenset({"smooth.png", "smooth_text_strong.jpg"}))
    assert g is not None and g.matches[[names[m] for m in g.members].index("smooth_text_strong.jpg")].overlay, list(dup)
    # Each step of the build is the one before with a line of text added, one-sided as a caption: no duplicate.
    assert not any(k & {"build_1.png", "build_2.png", "build_3.png"} for k in dup), list(dup)
    # Without the page scores the floor stands: the lift, not another route, let the copy through.
    plain = PairJudge(dataclasses.replace(res.features, page_scores=None), "auto", t)
    assert not plain.passes(a, b) and PairJudge(res.features, "auto", t).passes(a, b)


def test_the_raw_cosine_keeps_the_route_closed(features):
    # Without the learned similarity a caption is not told from a low subject driving in: the route is shut,
    # and the captioned copy is a look-alike.
    res = group_features(features, "auto", learned=False)
    assert res.thresholds.overlay_cos > 1.0
    names = [os.path.basename(p) for p in res.paths]
    dup = [{names[m] for m in g.members} for g in res.groups if g.tier == "duplicate"]
    assert not any("photo_text_mild.jpg" in g for g in dup), dup


def test_overlay_measures_are_stored_by_content_and_not_taken_twice(features, monkeypatch):
    res = group_features(features, "auto")
    ix = _ix(features)
    a, b = ix["photo.png"], ix["photo_text_mild.jpg"]
    taken = []
    real = verify.overlay_measures
    monkeypatch.setattr(verify, "overlay_measures", lambda x, y: taken.append(1) or real(x, y))
    checks: dict = {}
    judge = PairJudge(res.features, "auto", res.thresholds, checks=checks)
    assert judge.passes(a, b) and len(taken) == 1
    stored = [k for k in checks if k.endswith(f":overlay{verify.OVERLAY_VERSION}")]
    assert len(stored) == 1 and {f"{stored[0]}:extent", f"{stored[0]}:strokes"} <= checks.keys(), list(checks)
    again = PairJudge(res.features, "auto", res.thresholds, checks=dict(checks))
    assert again.passes(b, a) and len(taken) == 1  # either way round: one check by content, read back
    # Stored measures are believed: a change said to be as high as the picture, in long runs, is no text.
    refused = dict(checks)
    refused[f"{stored[0]}:extent"] = [0.6, 0.6]
    refused[f"{stored[0]}:strokes"] = [0.2, checks[f"{stored[0]}:strokes"][1]]
    assert not PairJudge(res.features, "auto", res.thresholds, checks=refused).passes(a, b)
    # ... and the learned similarity is the last guard: the captioned copy clears it.
    assert judge.cosine(a, b) >= res.thresholds.overlay_cos


def test_overlay_measures_come_back_from_a_catalog(features, tmp_path, monkeypatch):
    # A stored check is two fractions, and a catalog reads back values in [0, 1] only; strokes run to 2 (a
    # scatter of single pixels), so they are stored halved: a finely lettered pair is not measured again on
    # every run.
    from imgsim_fast.catalog import dedup_features as dfs

    res = group_features(features, "auto")
    ix = _ix(features)
    a, b = ix["photo.png"], ix["photo_text_strong.jpg"]
    real = verify.overlay_measures
    monkeypatch.setattr(verify, "overlay_measures", lambda x, y: (*real(x, y)[:5], 1.9))  # strokes of 1.9
    checks: dict = {}
    assert PairJudge(res.features, "auto", res.thresholds, checks=checks).passes(a, b)
    cat = str(tmp_path / "cat")
    dfs.save_checks(cat, checks)
    back = dfs.load_checks(cat, check_key_prefix())
    assert back.keys() == checks.keys()
    monkeypatch.setattr(verify, "overlay_measures", lambda x, y: pytest.fail("measured again"))
    again = PairJudge(res.features, "auto", res.thresholds, checks=back)
    assert again.passes(a, b)
    over = again._overlay(*(np.array([x]) for x in sorted((a, b), key=lambda x: again.digests[x])), np.array([0]),
                          [next(k for k in back if k.endswith(":0"))])
    assert over[0, 5] == pytest.approx(1.9) and over[0, 0] == pytest.approx(real(features.thumbs[a], features.thumbs[b])[0]), over


def test_each_guard_of_the_route_refuses_on_its_own(features):
    # Measures that pass every guard, then each guard failed alone: the route must refuse each.
    res = group_features(features, "auto")
    judge = PairJudge(res.features, "auto", res.thresholds)
    t = res.thresholds
    # A band (a caption) with runs too long to be letters; then letters (a watermark) too high to be a band.
    band = dict(changed=0.05, side=0.95, texture=0.8, rows=0.05, cols=0.4, strokes=0.3, cos=0.9)
    bad_band = dict(changed=t.overlay_changed + 0.01, side=t.overlay_side - 0.01, texture=t.overlay_texture - 0.01,
                    rows=t.overlay_rows + 0.01, cols=t.overlay_cols - 0.01, cos=t.overlay_cos - 0.01)
    letters = dict(changed=0.05, side=0.95, texture=0.8, rows=0.4, cols=0.6, strokes=0.8, cos=0.9)
    bad_letters = dict(changed=t.overlay_changed + 0.01, side=t.overlay_stroke_side - 0.01,
                       texture=t.overlay_stroke_texture - 0.01, cols=t.overlay_cols - 0.01,
                       strokes=t.overlay_strokes - 0.01, cos=t.overlay_cos - 0.01)

    def route(pictures=False, **m):
        over = np.array([[m["changed"], m["side"], m["texture"], m["rows"], m["cols"], m["strokes"]]])
        return bool(judge._overlaid(over, np.array([m["cos"]]), np.array([pictures]))[0])

    for good, bad in ((band, bad_band), (letters, bad_letters)):
        assert route(**good), good
        for k, v in bad.items():
            assert not route(**dict(good, **{k: v})), (good, k)
            # Two pictures lift the texture floor, and only it.
            assert route(True, **dict(good, **{k: v})) == (k == "texture"), (good, k)
    assert not route(**dict(band, rows=0.1, cols=0.19))  # not twice as wide as high
    none = np.array([False])
    assert not judge._overlaid(np.full((1, 6), np.nan), np.array([0.9]), ~none)[0]  # none taken
    no_embeddings = judge._overlaid(np.array([[0.05, 0.95, 0.8, 0.05, 0.4, 0.8]]), None, none)
    assert not no_embeddings[0]


def test_a_small_subject_that_moved_is_no_line_of_text(tmp_path, photos):
    # A subject a fortieth of the width, a little further along in the second frame: one-sided and flat
    # enough to look like a band at 128 px, but narrower than any line of text (found by review).
    photos = sorted(photos, key=textured_share, reverse=True)
    scene = rgb(photos[0])
    w, h = scene.size
    obj = rgb(photos[1], side=w // 40)
    for name, x in (("a", w // 3), ("b", w // 3 + w // 30)):
        frame = scene.copy()
        frame.paste(obj, (x, h // 3))
        frame.save(tmp_path / f"frame_{name}.png")
    f = compute_features([str(tmp_path)], embed=True, workers=1, progress=False)
    res = group_features(f, "auto")
    ix = _ix(f)
    judge = PairJudge(res.features, "auto", res.thresholds)
    a, b = f.thumbs[ix["frame_a.png"]], f.thumbs[ix["frame_b.png"]]
    _, side, texture, rows, cols, strokes = verify.overlay_measures(a, b)
    assert cols < DEFAULTS.overlay_cols, (side, texture, rows, cols, strokes)
    assert not judge.passes(ix["frame_a.png"], ix["frame_b.png"])
    assert not judge.passes(ix["frame_b.png"], ix["frame_a.png"])


def test_overlay_measures_refuse_thumbnails_of_two_shapes():
    a = np.zeros((128, 128), np.uint8)
    with pytest.raises(ValueError):
        verify.overlay_measures(a, a[:100, :100])
    changed, side, texture, rows, cols, strokes = verify.overlay_measures(a, a)  # nothing changed: no extent
    assert (changed, side, rows, cols, strokes) == (0.0, 1.0, 0.0, 0.0, 0.0)


def test_the_grey_levels_are_refitted_where_the_pictures_match(photos, monkeypatch):
    # A watermark adds white and black to a picture's levels. Over a photo with a large flat dark part, the
    # whole-picture mapping then moves that part onto other levels, and the change spreads over the picture;
    # fitted again where the pictures matched, the change is the letters' rows alone, all on one side.
    spans, spread = [], []
    for path in sorted(photos, key=textured_share, reverse=True)[:3]:
        arr = np.asarray(rgb(path).resize((640, 480))).copy()
        arr[:, :384] = np.random.default_rng(0).normal(25, 1.0, (480, 384, 1)).clip(0, 255).astype(np.uint8)
        photo = Image.fromarray(arr)
        marked = apply_edit(photo, "text", "strong", np.random.default_rng(3))[0]
        a, b = (np.asarray(im.convert("L").resize((128, 128), Image.Resampling.BOX)) for im in (photo, marked))
        letters = np.flatnonzero((a != b).any(axis=1))
        span = (letters[-1] - letters[0] + 1) / 128
        _, side, _, rows, _, _ = verify.overlay_measures(a, b)
        assert rows <= span and side >= DEFAULTS.overlay_stroke_side, (path, rows, span, side)
        monkeypatch.setattr(verify, "_REFIT", 2.0)  # never refitted
        spread.append(verify.overlay_measures(a, b)[3])
        monkeypatch.undo()
        spans.append(span)
    assert max(r - s for r, s in zip(spread, spans)) > 0.2, (spread, spans)


def test_a_refit_stands_only_where_it_explains_more(photos, monkeypatch):
    # Refitted where the pictures matched, the mapping may also leave more changed (a caption's few pixels
    # weigh little in the first): then the first stands, and the measures never see more change than the
    # whole-picture mapping left, for a variant lit another way no more than for a captioned copy.
    for path in photos:
        photo = rgb(path)
        caption = apply_edit(photo, "text", "mild", np.random.default_rng(3))[0]
        a, b = (np.asarray(im.convert("L").resize((128, 128), Image.Resampling.BOX)) for im in (photo, caption))
        refitted = verify.overlay_measures(a, b)[0]
        monkeypatch.setattr(verify, "_REFIT", 2.0)
        assert refitted <= verify.overlay_measures(a, b)[0], path
        monkeypatch.undo()


def test_the_refit_pairs_each_kept_pixel_with_the_one_the_shift_puts_there():
    # a: two levels meeting in an edge; b: a moved right by two pixels, its levels raised. Fitted over a
    # strip across a's edge against b's pixels at the shift, b maps back onto a's levels exactly; against
    # b's pixels at the same places (the strip of b left of its edge) it could not.
    a = np.full((32, 32), 50.0)
    a[:, 16:] = 150.0
    b = np.full((32, 32), 80.0)
    b[:, 18:] = 180.0
    keep = np.zeros((32, 32), bool)
    keep[4:28, 14:18] = True
    a2, b2, _, _ = verify._refit(a, b, keep, 0, 2, verify._TAPS, verify._BOX)
    assert np.allclose(b2[4:28, 6:28], a2[4:28, 4:26])


def test_the_changed_mask_is_in_the_first_pictures_places():
    rng = np.random.default_rng(0)
    a = rng.normal(128, 30, (64, 64)).clip(0, 255)
    b = np.roll(a, (1, 2), axis=(0, 1))  # a moved down one and right two ...
    b[31:36, 41:46] = 255.0  # ... and a blob painted over it, over a's rows 30-34 and columns 39-43
    prepared = verify._prepare(a, b, np.ones(a.shape, bool), verify._TAPS, verify._BOX, False)
    mask = verify._changed_mask(*prepared, verify.CONTRAST_FLOOR, verify.CHANGE_K, 2, 1, 2)
    inner = mask[2:-2, 2:-2]
    rows, cols = np.nonzero(inner)
    assert inner.any() and rows.min() + 2 >= 28 and rows.max() + 2 <= 36 and cols.min() + 2 >= 37 \
        and cols.max() + 2 <= 45, (rows, cols)
    assert mask[:2].all() and mask[:, -2:].all()  # the border, which no shift covers, counts changed


def _watermarked(name: str, folder):
    """The demo photo `name` (.cache/photos/<package>/<name>) at the accuracy corpus's size, and its copy with the
    corpus's strong text edit (a two-line watermark across the middle), saved in `folder`."""
    from imgsim_fast.bench.corpus import MAX_SIDE

    src = glob.glob(os.path.join(PHOTO_DIR, "*", name))
    if not src:
        pytest.skip(f"{name} missing under {PHOTO_DIR}: run scripts/fetch_photos.sh (scripts/setup.sh does)")
    im = rgb(src[0], side=MAX_SIDE)
    im.save(folder / "original.png")
    copy, save = apply_edit(im, "text", "strong", np.random.default_rng(0))
    copy.save(folder / "watermarked.jpg", **save)


def test_letters_that_move_the_trim_are_measured_on_the_whole_pictures(tmp_path):
    # Letters across a smooth margin move the trim: the trimmed thumbnails show two parts of the pictures, and
    # the whole pictures are measured, as they are compared.
    from imgsim_fast.features.extract import THUMB_SIDE
    from imgsim_fast.jobs.dedup import detail

    _watermarked("usr_share_backgrounds_firstgeneration.jpg", tmp_path)
    f = compute_features([str(tmp_path)], embed=True, workers=1, progress=False)
    res = group_features(f, "auto")
    ix = _ix(f)
    a, b = ix["original.png"], ix["watermarked.jpg"]
    t, th = res.thresholds, f.thumbs
    checks: dict = {}
    judge = PairJudge(res.features, "auto", t, checks=checks)
    assert detail.trims_differ(f.facts[a].trim, f.facts[b].trim, 0)
    assert not verify.compare(th[a], th[b], t.changed, t.strong).passes(t.changed, t.strong)
    whole = detail.whole_squares(judge.pictures, *judge._read(a, b), 0, THUMB_SIDE)
    # On the trimmed thumbnails the route refuses.
    changed, side, _, _, _, strokes = verify.overlay_measures(th[a], th[b])
    assert changed > t.overlay_changed or side < t.overlay_stroke_side or strokes < t.overlay_strokes
    m = judge.match(a, b)
    assert m.duplicate and m.overlay and "text written over" in m.describe(), m
    assert m.changed == pytest.approx(verify.overlay_measures(*whole)[0])
    assert [sorted(g.members) for g in res.groups if g.tier == "duplicate"] == [sorted([a, b])]
    # Stored by content under their own key, and read back rather than measured again.
    suffix = f":overlay{verify.OVERLAY_VERSION}:whole{detail.WHOLE_VERSION}"
    assert sum(k.endswith(suffix) for k in checks) == 1, list(checks)
    again = PairJudge(res.features, "auto", t, checks=dict(checks))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(verify, "overlay_measures", lambda *x: pytest.fail("measured again"))
        assert again.match(b, a).overlay


def test_letters_on_a_flat_picture_are_no_copy_of_a_photo(tmp_path, photos, monkeypatch):
    # compare does not compare a flat picture with a textured one (verify.NOT_COMPARED), and the route does not
    # measure them, whatever the similarity says and though both are called pictures (no texture floor): the
    # photo mapped onto the flat picture's grey levels would change only where its letters are.
    from PIL import ImageDraw, ImageFont

    photo = rgb(sorted(photos, key=textured_share)[-1])
    photo.save(tmp_path / "photo.png")
    # Small letters in two opposite corners: the trim keeps the whole picture, and its contrast stays low.
    flat = Image.new("RGB", photo.size, (30, 30, 40))
    font = ImageFont.load_default(size=photo.height // 30)
    for xy in ((2, 2), (photo.width * 3 // 4, photo.height - photo.height // 20)):
        ImageDraw.Draw(flat).text(xy, "SAMPLE", fill=(255, 255, 255), font=font)
    flat.save(tmp_path / "flat.png")
    f = compute_features([str(tmp_path)], embed=True, workers=1, progress=False)
    res = group_features(f, "auto")
    ix = _ix(f)
    a, b = ix["photo.png"], ix["flat.png"]
    t = res.thresholds
    assert verify.compare(f.thumbs[a], f.thumbs[b], t.changed, t.strong).changed == verify.NOT_COMPARED[0]
    monkeypatch.setattr(PairJudge, "cosines", lambda self, ii, jj: np.full(len(ii), 0.99))
    monkeypatch.setattr(PairJudge, "_two_pictures", lambda self, ii, jj: np.ones(len(ii), bool))
    judge = PairJudge(res.features, "auto", t)
    ii, jj = np.array([a]), np.array([b])
    over = judge._changed(ii, jj, np.array([0]), judge.cosines(ii, jj))[3]
    assert np.isnan(over).all(), over
    assert verify.overlay_measures(f.thumbs[a], f.thumbs[b])[0] < t.overlay_changed  # what a measure would say
    assert not judge.passes(a, b) and not judge.passes(b, a)
