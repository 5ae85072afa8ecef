"""The accuracy corpus's look-alike builder: the near-variant filter and Chromium's sheet of cells."""
import numpy as np
import pytest
from PIL import Image, ImageDraw

from imgsim_fast.bench import lookalikes
from conftest import CHROMIUM


def _page(rng, mark: tuple[int, int]) -> Image.Image:
    im = Image.fromarray(rng.integers(0, 256, (96, 128, 3), np.uint8))
    ImageDraw.Draw(im).rectangle((mark[0], mark[1], mark[0] + 20, mark[1] + 20), fill=(255, 0, 0))
    return im


def test_distinct_drops_near_variants_keeps_look_alikes():
    rng = np.random.default_rng(0)
    a = _page(rng, (10, 10))
    a_variant = a.copy()
    ImageDraw.Draw(a_variant).point([(3, 3), (5, 90)], fill=(0, 0, 0))  # a detail changed: a near-variant
    a_moved = a.copy()
    a_moved.paste(a.crop((10, 10, 30, 30)), (90, 60))  # the mark drawn a second time elsewhere: a look-alike
    b = _page(rng, (60, 40))
    names = [n for n, _ in lookalikes._distinct([("a", a), ("a2", a.copy()), ("a-variant", a_variant),
                                                  ("a-moved", a_moved), ("b", b)])]
    assert names == ["a", "a-moved", "b"]


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium on PATH (scripts/setup.sh --test installs it)")
def test_render_cuts_each_page_from_its_own_cell(tmp_path, monkeypatch):
    # A sheet of at most 2 x 3 cells of 100 x 80: five pages fill three rows, the last row half. Each page is
    # one flat colour, so a cell cut from the wrong place shows the neighbour's colour or the blank sheet.
    monkeypatch.setattr(lookalikes, "SHEET_MAX", 250)
    colours = ["#ff0000", "#00ff00", "#0000ff", "#ffff00", "#00ffff"]
    pages = [(f"p{i}", f'<html><body style="margin:0;background:{c}"></body></html>') for i, c in enumerate(colours)]
    out = lookalikes._render(CHROMIUM, str(tmp_path), "t", pages, (100, 80))
    assert [n for n, _ in out] == [n for n, _ in pages]
    for (_, im), c in zip(out, colours):
        assert im.size == (100, 80)
        want = np.array([int(c[k:k + 2], 16) for k in (1, 3, 5)])
        assert np.abs(np.asarray(im, dtype=int) - want).max() <= 2
