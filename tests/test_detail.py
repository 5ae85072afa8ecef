"""The detail check (jobs/dedup/detail.py): two dialogs of one application that the 128 px thumbnails cannot
tell apart are told apart at 384 px, where their words resolve; copies of one dialog still pass."""
import os

import numpy as np
import pytest
from PIL import Image

from imgsim_fast.features.extract import compute_features
from imgsim_fast.jobs.dedup import detail, find_duplicates
from imgsim_fast.jobs.dedup.detect import DEFAULTS, PairJudge
from lookalike_pictures import save_about_boxes, save_build, save_build_crop


@pytest.fixture(scope="module")
def dialogs(tmp_path_factory):
    d = tmp_path_factory.mktemp("dialogs")
    save_about_boxes(d)
    return d


def _judge(folder, checks=None, names=None):
    names = names or sorted(os.listdir(folder))
    feats = compute_features([str(folder / n) for n in names], workers=1, progress=False)
    return PairJudge(feats, "phash", checks=checks), names


def test_dialogs_of_one_kind_pass_the_thumbnails_and_fail_the_detail_check(dialogs):
    judge, names = _judge(dialogs)
    ix = {n: k for k, n in enumerate(names)}
    a, b = ix["about_report.png"], ix["about_local.png"]
    changed, strong, fine, _ = judge._changed(np.array([a]), np.array([b]), np.array([0]))
    # What the thumbnail check alone says: the same picture (this is the bug the detail check mends).
    assert changed[0] <= DEFAULTS.changed and strong[0] <= DEFAULTS.strong, (changed, strong)
    assert fine[0, 1] > DEFAULTS.detail_strong, fine
    assert not judge.passes(a, b)
    m = judge.match(a, b)
    assert not m.duplicate and "compared at up to 384 px" in m.describe(), m.describe()
    # Its copies, a JPEG and a half-size one, pass both checks against it.
    for copy in ("about_report_q70.jpg", "about_report_half.jpg"):
        assert judge.passes(a, ix[copy]), copy
        assert judge.match(a, ix[copy]).duplicate


def test_dedup_groups_the_copies_and_reports_the_other_dialog_as_a_look_alike(dialogs):
    res = find_duplicates([str(dialogs)], workers=1, progress=False)
    dup = [sorted(os.path.basename(res.paths[m]) for m in g.members) for g in res.groups if g.tier == "duplicate"]
    assert dup == [["about_report.png", "about_report_half.jpg", "about_report_q70.jpg"]], dup
    similar = [sorted(os.path.basename(res.paths[m]) for m in g.members) for g in res.groups if g.tier == "similar"]
    assert ["about_local.png", "about_report.png"] in similar, similar


def test_a_detail_verdict_is_stored_by_content_and_a_missing_file_stores_none(dialogs, tmp_path, monkeypatch):
    decoded = []
    real = detail._grey_canvas
    monkeypatch.setattr(detail, "_grey_canvas", lambda p, d: decoded.append(p) or real(p, d))
    checks: dict = {}
    judge, names = _judge(dialogs, checks)
    a, b = names.index("about_report.png"), names.index("about_local.png")
    assert not judge.passes(a, b) and len(decoded) == 2
    stored = [k for k in checks if ":detail" in k]
    assert len(stored) == 1 and checks[stored[0]][1] > DEFAULTS.detail_strong
    # A later run over the same contents reads the verdict instead of decoding again.
    again, _ = _judge(dialogs, checks)
    assert not again.passes(a, b) and len(decoded) == 2
    # A file that cannot be read now: the thumbnail verdict stands for this run, and nothing is stored (the
    # file may be readable next time).
    for n in ("about_report.png", "about_local.png"):
        Image.open(dialogs / n).save(tmp_path / n)
    gone, _ = _judge(tmp_path, {})
    os.remove(tmp_path / "about_local.png")
    assert gone.passes(0, 1) and not any(":detail" in k for k in gone.checks)



def test_a_file_changed_since_the_scan_is_not_judged_by_its_new_pixels(dialogs, tmp_path):
    # The verdict is stored under the contents scanned: pixels read from a file rewritten since (here the
    # about box replaced by its own twin, which would pass) must not be judged, nor stored under the old key.
    for n in ("about_report.png", "about_local.png"):
        Image.open(dialogs / n).save(tmp_path / n)
    judge, names = _judge(tmp_path, {})
    a, b = names.index("about_report.png"), names.index("about_local.png")
    Image.open(dialogs / "about_report.png").save(tmp_path / "about_local.png", compress_level=1)
    assert judge.passes(a, b) and not any(":detail" in k for k in judge.checks)
    # Read as scanned, the pair is told apart.
    Image.open(dialogs / "about_local.png").save(tmp_path / "about_local.png")
    fresh, _ = _judge(tmp_path, {})
    assert not fresh.passes(a, b)


def test_a_pair_reads_each_file_once_whatever_the_cache_holds(dialogs, tmp_path, monkeypatch):
    # With a cache too small to keep a picture, every look at a pair (the detail check, the whole canvases of
    # a pair whose trims differ) still uses the pictures the pair read: a second read could find a file
    # changed or gone, and a verdict would be stored for contents it never saw.
    save_build(tmp_path)
    save_build_crop(tmp_path)
    decoded = []
    real = detail._grey_canvas
    monkeypatch.setattr(detail, "_grey_canvas", lambda p, d: decoded.append(p) or real(p, d))
    # The dialogs: the detail check refuses them. Two build steps: the canvases do. A crop of a step: the
    # canvases leave it to the warp, and the detail check passes it.
    for folder, x, y, verdict in ((dialogs, "about_report.png", "about_local.png", False),
                                  (tmp_path, "build_2.png", "build_3.png", False),
                                  (tmp_path, "build_3.png", "build_3_crop.png", True)):
        decoded.clear()
        judge, names = _judge(folder, {}, names=[x, y])
        judge.pictures = detail.Pictures(budget=1)
        assert judge.passes(0, 1) == verdict, (x, y)
        assert sorted(decoded) == sorted(str(folder / n) for n in (x, y)), (x, y, decoded)


def test_two_pictures_whose_trims_differ_are_compared_whole(tmp_path, photos, monkeypatch):
    # A flat sky over half a photo is a border to the trim; grain in the copy's sky stops it there. The trimmed
    # thumbnails then show the photo alone against sky and photo (no warp within the check's bounds lines
    # them up); the whole pictures are one picture. Compared whole, the detail check still applies: two
    # captions in other words, one copy trimmed and one not, stay apart. Two pages are never retried, and two
    # photos under one sky stay apart.
    from PIL import ImageDraw, ImageFont

    from imgsim_fast.jobs.dedup import group_features
    from lookalike_pictures import rgb, textured_share

    def captioned(arr, words):
        im = Image.fromarray(arr)
        ImageDraw.Draw(im).text((40, 380), words, fill="white", font=ImageFont.load_default(size=32))
        return im

    for k, path in enumerate(sorted(photos, key=textured_share, reverse=True)[:2]):
        arr = np.asarray(rgb(path).resize((640, 480))).copy()
        arr[:240] = 190
        Image.fromarray(arr).save(tmp_path / f"p{k}.png")
        if k == 0:
            captioned(arr, "Lot 14 Alpha 2021").save(tmp_path / "p0_lot14.png")
        grain = np.random.default_rng(k).normal(0, 6, (240, 640, 1))
        arr[:240] = (190 + grain).clip(0, 255).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / f"p{k}_grain.jpg", quality=92)
        if k == 0:
            Image.fromarray(arr[:, ::-1]).save(tmp_path / "p0_grain_mirror.jpg", quality=92)
            captioned(arr, "Lot 91 Omega 1999").save(tmp_path / "p0_lot91_grain.png")
            captioned(arr, "Lot 14 Alpha 2021").save(tmp_path / "p0_lot14_grain.png")
    save_build(tmp_path)
    feats = compute_features([str(tmp_path)], embed=True, workers=1, progress=False)
    res = group_features(feats, "auto")
    ix = {os.path.basename(p): n for n, p in enumerate(feats.paths)}
    a, b, other = ix["p0.png"], ix["p0_grain.jpg"], ix["p1_grain.jpg"]
    mirror, lot14, lot91 = ix["p0_grain_mirror.jpg"], ix["p0_lot14.png"], ix["p0_lot91_grain.png"]
    lot14_grain = ix["p0_lot14_grain.png"]
    for x, y in ((a, b), (lot14, lot91)):
        assert detail.trims_differ(feats.facts[x].trim, feats.facts[y].trim, 0)
    checks: dict = {}
    judge = PairJudge(res.features, "auto", res.thresholds, checks=checks)
    assert judge.passes(a, b) and judge.passes(a, mirror, 4) and not judge.passes(a, mirror)
    assert not judge.passes(a, other) and not judge.passes(b, other)
    assert not judge.passes(lot14, lot91) and not judge.passes(lot91, lot14) and judge.passes(lot14, lot14_grain)
    m = judge.match(lot14, lot91)
    assert not m.duplicate and m.detail is not None and m.detail[1] > DEFAULTS.detail_strong, m
    # ... as it does where the trims agree and the trimmed pictures are compared.
    assert not detail.trims_differ(feats.facts[lot91].trim, feats.facts[lot14_grain].trim, 0)
    assert not judge.passes(lot91, lot14_grain)
    # Without the retry the thumbnails refuse the copy.
    monkeypatch.setattr(PairJudge, "_whole", lambda self, ii, jj, v, keys: np.full((len(ii), 4), np.nan))
    assert not PairJudge(res.features, "auto", res.thresholds).passes(a, b)
    monkeypatch.undo()
    # Stored by content: read back, not decoded again.
    assert any(k.endswith(f":whole{detail.WHOLE_VERSION}:{detail.DETAIL_SIDE}:{DEFAULTS.detail_changed}:"
                          f"{DEFAULTS.detail_strong}") for k in checks), list(checks)
    monkeypatch.setattr(detail, "whole_fractions", lambda *x: pytest.fail("compared again"))
    again = PairJudge(res.features, "auto", res.thresholds, checks=dict(checks))
    assert again.passes(a, b) and not again.passes(lot14, lot91)
    # Slide build steps (pages, trims differing by the line each adds) are not compared whole.
    steps = [ix[f"build_{n}.png"] for n in (1, 2, 3)]
    assert res.features.page_scores[steps].min() >= res.thresholds.overlay_page
    assert not any(judge.passes(x, y) for x in steps for y in steps if x < y)
