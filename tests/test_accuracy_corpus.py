"""The accuracy benchmark's pieces: every edit of the corpus, the split, and the pair metrics."""
import os

import numpy as np
import pytest
from PIL import Image

from imgsim_fast.bench.accuracy import evaluate, keepers
from imgsim_fast.bench.corpus import EDIT_KINDS, EDITS, CorpusFile, apply_edit, audit_pictures, split_of


def test_every_edit_kind_does_what_it_says():
    rng = np.random.default_rng(0)
    im = Image.fromarray(np.random.default_rng(1).integers(0, 256, (120, 200, 3), np.uint8))
    assert set(EDIT_KINDS) == {"jpeg", "resize", "rotate", "mirror", "rot90", "letterbox", "crop", "bright",
                               "grey", "text"}
    for kind, level in EDITS:
        out, save = apply_edit(im, kind, level, rng)
        assert save["format"] in ("JPEG", "PNG")
        w, h = out.size
        if kind == "rot90":
            assert (w, h) == (120, 200)
        elif kind == "crop":
            assert (w, h) == ((180, 108) if level == "mild" else (160, 96))
        elif kind == "letterbox":
            assert w > 200 or h > 120
        elif kind == "resize":
            assert w < 200
        elif kind == "grey":
            assert out.mode == "L"
        elif kind == "mirror":
            a, b = np.asarray(out), np.asarray(im)
            assert np.array_equal(a, b[:, ::-1] if level == "mild" else b[::-1])
        else:
            assert (w, h) == (200, 120) or kind == "rotate"
    with pytest.raises(ValueError):
        apply_edit(im, "nope", "mild", rng)


def test_split_is_fixed_and_about_half():
    names = [f"pkg/file{i}.png" for i in range(200)]
    splits = [split_of(n) for n in names]
    assert splits == [split_of(n) for n in names]
    assert 70 < splits.count("tune") < 130


def test_pair_metrics():
    files = [CorpusFile(f"/{f}{k}", f, k, "strong" if k != "original" else "", "test")
             for f in ("a", "b") for k in ("original", "crop", "mirror")]
    # a: 0 1 2, b: 3 4 5. Predict a fully, b's mirror only, and one false pair.
    pred = {(0, 1), (0, 2), (1, 2), (3, 5), (2, 3)}
    r = evaluate(pred, files, "test")
    assert r["true_pairs"] == 6 and r["pairs"] == 5 and r["false_pairs"] == 1
    assert r["precision"] == pytest.approx(4 / 5) and r["recall"] == pytest.approx(4 / 6)
    assert r["per_kind"]["crop"] == pytest.approx(0.5) and r["per_kind"]["mirror"] == 1.0
    assert evaluate(set(), files, "tune")["pairs"] == 0  # other split: nothing counted


def test_lookalike_false_pairs_per_kind():
    def f(fam, kind, neg):
        return CorpusFile(f"/{fam}-{kind}", fam, kind, "" if kind == "original" else "mild", "test", neg)

    files = [f("a", "original", ""), f("a", "jpeg", ""),                       # 0 1: ordinary family
             f("s1", "original", "screenshot"), f("s1", "jpeg", "screenshot"),  # 2 3
             f("s2", "original", "screenshot"), f("s2", "jpeg", "screenshot"),  # 4 5
             f("b1", "original", "burst"), f("b2", "original", "burst")]        # 6 7
    # Two screenshots grouped (false), s1 with its copy (true), a burst frame with the photo (false), two
    # burst frames with each other (false, counted once for burst), a with its copy (true).
    pred = {(2, 4), (2, 3), (0, 6), (6, 7), (0, 1)}
    r = evaluate(pred, files, "test")
    assert r["false_pairs"] == 3 and r["files"] == 8
    la = r["per_lookalike"]
    assert set(la) == {"screenshot", "burst"}
    assert la["screenshot"]["false_pairs"] == 1 and la["burst"]["false_pairs"] == 2
    assert la["screenshot"]["false_per_1k_files"] == pytest.approx(1000 / 8)
    assert la["burst"]["false_per_1k_files"] == pytest.approx(2000 / 8)
    assert la["screenshot"]["copy_recall"] == pytest.approx(0.5) and la["burst"]["copy_recall"] is None
    assert la["screenshot"]["families"] == 2 and la["screenshot"]["files"] == 4
    # Per-edit recall stays on the ordinary families: the look-alikes' missed JPEG copy does not lower it.
    assert r["per_kind"]["jpeg"] == 1.0


def test_keepers_count_groups_whose_keeper_is_the_original():
    from types import SimpleNamespace

    files = [CorpusFile(f"/{f}{k}", f, k, "" if k == "original" else "mild", split)
             for f, split in (("a", "test"), ("b", "test"), ("c", "test"), ("d", "tune"))
             for k in ("original", "jpeg")]
    files.append(CorpusFile("/s-original", "s", "original", "", "test", "screenshot"))  # a look-alike: not counted
    # a: 0 1 kept first; b: 2 3 with its copy kept; c: 4 alone; d: 6 7 on the other split; s: 8 grouped.
    groups = [SimpleNamespace(members=m) for m in ([0, 1], [3, 2], [6, 7], [8, 5])]
    assert keepers(groups, files, "test") == {"groups_with_original": 2, "original_kept": 1}
    assert keepers(groups, files, None) == {"groups_with_original": 3, "original_kept": 2}


def test_a_lookalike_kind_outside_the_generated_ones_is_reported_too():
    # The audit corpus's theme variants (corpus.audit_pictures) are no generated kind.
    files = [CorpusFile("/l", "gnome/x-l", "original", "", "audit"),
             CorpusFile("/l2", "gnome/x-l", "jpeg", "mild", "audit"),
             CorpusFile("/d", "lookalike/variant/gnome/x-d", "original", "", "audit", "variant")]
    r = evaluate({(0, 1), (0, 2)}, files, "audit")
    assert r["false_pairs"] == 1 and r["per_lookalike"]["variant"]["false_pairs"] == 1


def test_the_audit_sources_one_family_per_design_and_dark_versions_as_variants(tmp_path):
    # unpack_deb's .done marker stands for a package already unpacked: no download.
    root = tmp_path / "corpus_src" / "audit"

    def put(package, rel):
        p = root / package / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(p, format="PNG")
        (root / package / ".done").touch()

    put("gnome-backgrounds", "usr/share/backgrounds/gnome/wood-l.webp")
    put("gnome-backgrounds", "usr/share/backgrounds/gnome/wood-d.webp")
    for size in ("1280x1024.jpg", "2560x1600.jpg", "5120x2880.jpg", "1080x1920.jpg"):
        put("plasma-workspace-wallpapers", f"usr/share/wallpapers/Autumn/contents/images/{size}")
    put("plasma-workspace-wallpapers", "usr/share/wallpapers/Kay/contents/images/5120x2880.png")
    put("plasma-workspace-wallpapers", "usr/share/wallpapers/Kay/contents/images_dark/3840x2160.png")
    put("xfdesktop4-data", "usr/share/backgrounds/xfce/xfce-teal.jpg")
    (root / "xfdesktop4-data" / "usr/share/backgrounds/xfce/xfce-flower.svg").write_text("<svg/>")
    for package in ("lomiri-wallpapers-20.04", "sway-backgrounds"):
        (root / package).mkdir(parents=True)
        (root / package / ".done").touch()
    (root / "lomiri-wallpapers-20.04" / "usr/share/backgrounds").mkdir(parents=True)
    (root / "sway-backgrounds" / "usr/share/backgrounds/sway").mkdir(parents=True)
    ordinary, variants = audit_pictures(str(tmp_path))
    fams = {f: os.path.relpath(p, root) for f, p in ordinary}
    plasma = "plasma-workspace-wallpapers/usr/share/wallpapers"
    assert fams == {"gnome/wood-l.webp": "gnome-backgrounds/usr/share/backgrounds/gnome/wood-l.webp",
                    "plasma/Autumn": f"{plasma}/Autumn/contents/images/2560x1600.jpg",  # widest up to 2560 px
                    "plasma/Kay": f"{plasma}/Kay/contents/images/5120x2880.png",  # none narrower: the narrowest
                    "xfce/xfce-teal.jpg": "xfdesktop4-data/usr/share/backgrounds/xfce/xfce-teal.jpg"}
    assert sorted(f for f, _ in variants) == ["gnome/wood-d.webp", "plasma/Kay-dark"]
