"""Tests for imgsim_fast.io.loading: every bad-file kind, every pixel mode, EXIF orientation, draft decoding,
animated first frames, format round trips, and the folder walker."""
import io
import os
import pickle
import struct
import zlib

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from imgsim_fast.io import loading
from imgsim_fast.io.loading import (
    BACKGROUND,
    DEFAULT_MAX_PIXELS,
    FAILURE_KINDS,
    ImageLoadError,
    LoadFailure,
    iter_image_files,
    load_image,
)

RNG_SEED = 20240611


def smooth_rgb(w: int, h: int, seed: int = RNG_SEED) -> Image.Image:
    """A smooth colour image (seeded coarse noise, upsampled): lossy codecs keep it close, and it is
    cheap even at 12 MP."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR)


def save(tmp_path, name: str, im: Image.Image, fmt: str | None = None, **kw) -> str:
    path = str(tmp_path / name)
    im.save(path, fmt, **kw)
    return path


def write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def png_header_only(w: int, h: int) -> bytes:
    """A PNG with a valid IHDR declaring w x h RGB and no pixel data: the shape of a bomb, 57 bytes."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def failure_kind(path, **kw) -> str:
    with pytest.raises(ImageLoadError) as info:
        load_image(path, **kw)
    err = info.value
    assert err.path == os.fspath(path)
    assert err.reason and err.kind in FAILURE_KINDS
    return err.kind


# --------------------------------------------------------------------------------------------------
# Bad files


def test_empty_file(tmp_path):
    path = write(tmp_path, "empty.jpg", b"")
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert info.value.kind == "empty"
    assert info.value.reason == "empty file (0 bytes)"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "GIF", "BMP", "WEBP"])
def test_truncated_file(tmp_path, fmt):
    buf = io.BytesIO()
    smooth_rgb(300, 200).save(buf, fmt)
    data = buf.getvalue()
    path = write(tmp_path, f"cut.{fmt.lower()}", data[: len(data) // 2])
    assert failure_kind(path) == "truncated"


def test_truncated_header_is_corrupt_not_unrecognised(tmp_path):
    # 20 bytes of a JPEG: Pillow cannot identify it, but the signature says what it was meant to be.
    buf = io.BytesIO()
    smooth_rgb(64, 64).save(buf, "JPEG")
    path = write(tmp_path, "stub.jpg", buf.getvalue()[:20])
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert info.value.kind == "corrupt"
    assert "JPEG" in info.value.reason


def test_bad_png_crc_is_corrupt(tmp_path):
    buf = io.BytesIO()
    smooth_rgb(32, 32).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[20] ^= 0xFF  # inside IHDR: its CRC no longer matches
    assert failure_kind(write(tmp_path, "crc.png", bytes(data))) == "corrupt"


def test_random_bytes_named_jpg(tmp_path):
    data = np.random.default_rng(RNG_SEED).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert not data.startswith((b"\xff\xd8", b"BM", b"II", b"MM", b"GIF", b"\x89PNG", b"RIFF"))
    with pytest.raises(ImageLoadError) as info:
        load_image(write(tmp_path, "noise.jpg", data))
    assert info.value.kind == "not_image"
    assert info.value.reason == "not an image (unrecognised format)"


def test_text_file(tmp_path):
    path = write(tmp_path, "notes.txt", b"just some text\nnot an image\n")
    assert failure_kind(path) == "not_image"


def test_unsupported_format_is_named(tmp_path):
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    with pytest.raises(ImageLoadError) as info:
        load_image(write(tmp_path, "phone.heic", heic))
    assert info.value.kind == "unsupported"
    assert "HEIF" in info.value.reason


def test_over_pixel_limit_from_header(tmp_path):
    # 10^10 pixels declared in 57 bytes: refused from the header, no attempt to allocate 30 GB.
    path = write(tmp_path, "bomb.png", png_header_only(100_000, 100_000))
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert info.value.kind == "too_large"
    assert f"10000000000 pixels > {DEFAULT_MAX_PIXELS}" in info.value.reason


def test_small_max_pixels(tmp_path):
    path = save(tmp_path, "small.png", smooth_rgb(20, 10))
    assert load_image(path, max_pixels=200).size == (20, 10)
    with pytest.raises(ImageLoadError) as info:
        load_image(path, max_pixels=199)
    assert info.value.kind == "too_large"
    assert "200 pixels > 199" in info.value.reason
    assert load_image(path, max_pixels=None).size == (20, 10)


@pytest.mark.parametrize("side", [10_000, 15_000])
def test_our_limit_replaces_pillows(tmp_path, side):
    # 100 MP trips Pillow's warning and 225 MP its error; both are under our default limit, so the file
    # must get past the size check (and then fail for its missing pixel data), with no warning leaking
    # (pytest turns warnings into errors) and Pillow's global limit left as it was.
    before = Image.MAX_IMAGE_PIXELS
    path = write(tmp_path, f"big{side}.png", png_header_only(side, side))
    assert side * side <= DEFAULT_MAX_PIXELS
    # The memory budget (which refuses 225 MP RGB) is another check; this one is the pixel limit's.
    assert failure_kind(path, max_bytes=None) in ("truncated", "corrupt")
    assert Image.MAX_IMAGE_PIXELS == before
    assert failure_kind(path, max_pixels=side * side - 1, max_bytes=None) == "too_large"


def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError) as info:
        load_image(tmp_path / "nope.jpg")
    assert (info.value.kind, info.value.reason) == ("missing", "file not found")


def test_broken_symlink(tmp_path):
    os.symlink(tmp_path / "gone.jpg", tmp_path / "link.jpg")
    assert failure_kind(tmp_path / "link.jpg") == "missing"


def test_symlink_loop(tmp_path):
    os.symlink(tmp_path / "self.jpg", tmp_path / "self.jpg")
    assert failure_kind(tmp_path / "self.jpg") == "symlink_loop"


def test_directory(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    assert failure_kind(tmp_path / "folder.jpg") == "is_directory"


def test_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    assert failure_kind(path) == "not_regular_file"


def test_permission_denied_chmod(tmp_path):
    path = save(tmp_path, "locked.png", smooth_rgb(8, 8))
    os.chmod(path, 0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): chmod 000 does not stop reading; "
                        "test_permission_denied_open covers the mapping")
        assert failure_kind(path) == "permission"
    finally:
        os.chmod(path, 0o644)


def test_permission_denied_open(tmp_path, monkeypatch):
    # Root can read a chmod-000 file, so make the open itself refuse, as it does for other users.
    path = save(tmp_path, "locked.png", smooth_rgb(8, 8))
    real_open = os.open

    def refusing_open(file, *args, **kwargs):
        if os.fspath(file) == path:
            raise PermissionError(13, "Permission denied", path)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert (info.value.kind, info.value.reason) == ("permission", "permission denied")


def test_error_pickles_and_converts():
    err = ImageLoadError("a/b.jpg", "truncated file", "truncated")
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.reason, back.kind) == ("a/b.jpg", "truncated file", "truncated")
    assert str(back) == "a/b.jpg: truncated file"
    assert err.to_failure() == LoadFailure("a/b.jpg", "truncated file", "truncated")


def test_bad_arguments(tmp_path):
    path = save(tmp_path, "x.png", smooth_rgb(8, 8))
    with pytest.raises(ValueError):
        load_image(path, min_size=(0, 8))
    with pytest.raises(ValueError):
        load_image(path, max_pixels=0)


# --------------------------------------------------------------------------------------------------
# Pixel modes


def opened_mode(path) -> str:
    with Image.open(path) as im:
        return im.mode


def px(im: Image.Image, xy=(0, 0)):
    return im.getpixel(xy)


def test_rgb_and_l_unchanged(tmp_path):
    src = smooth_rgb(16, 12)
    out = load_image(save(tmp_path, "c.png", src))
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(src))
    grey = src.convert("L")
    out = load_image(save(tmp_path, "g.png", grey))
    assert out.mode == "L" and np.array_equal(np.asarray(out), np.asarray(grey))
    out = load_image(save(tmp_path, "g.jpg", grey, quality=95))
    assert out.mode == "L"


def test_mode_1(tmp_path):
    im = Image.new("1", (4, 2), 0)
    im.putpixel((1, 0), 1)
    out = load_image(save(tmp_path, "bw.png", im))
    assert out.mode == "L"
    assert np.array_equal(np.asarray(out), [[0, 255, 0, 0], [0, 0, 0, 0]])


def test_mode_p_without_and_with_transparency(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * (254 * 3))
    im.putpixel((1, 0), 1)
    out = load_image(save(tmp_path, "pal.png", im))
    assert out.mode == "RGB" and [px(out, (0, 0)), px(out, (1, 0))] == [(10, 20, 30), (200, 100, 50)]
    out = load_image(save(tmp_path, "palt.png", im, transparency=0))
    assert out.mode == "RGB"
    assert [px(out, (0, 0)), px(out, (1, 0))] == [(BACKGROUND,) * 3, (200, 100, 50)]


def test_mode_pa(tmp_path):
    im = Image.new("PA", (2, 1))
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * (254 * 3))
    im.putpixel((0, 0), (0, 0))
    im.putpixel((1, 0), (1, 255))
    path = save(tmp_path, "pa.tif", im)
    assert opened_mode(path) == "PA"
    out = load_image(path)
    assert out.mode == "RGB" and [px(out, (0, 0)), px(out, (1, 0))] == [(255, 255, 255), (200, 100, 50)]


def test_mode_rgba_composited_on_white(tmp_path):
    a = np.zeros((1, 3, 4), np.uint8)
    a[0, 0] = (10, 20, 30, 0)  # fully transparent: background
    a[0, 1] = (10, 20, 30, 255)  # opaque: itself
    a[0, 2] = (0, 0, 0, 128)  # half: half-way to white
    out = load_image(save(tmp_path, "rgba.png", Image.fromarray(a, "RGBA")))
    assert out.mode == "RGB"
    assert px(out, (0, 0)) == (255, 255, 255)
    assert px(out, (1, 0)) == (10, 20, 30)
    assert all(abs(v - 127) <= 1 for v in px(out, (2, 0)))


def test_mode_la_composited_on_white(tmp_path):
    a = np.array([[[40, 0], [40, 255]]], np.uint8)
    out = load_image(save(tmp_path, "la.png", Image.fromarray(a, "LA")))
    assert out.mode == "L" and np.array_equal(np.asarray(out), [[255, 40]])


def test_grey_and_rgb_colour_key(tmp_path):
    im = Image.fromarray(np.array([[7, 99]], np.uint8))
    out = load_image(save(tmp_path, "gkey.png", im, transparency=7))
    assert out.mode == "L" and np.array_equal(np.asarray(out), [[255, 99]])
    im = Image.fromarray(np.array([[[1, 2, 3], [4, 5, 6]]], np.uint8))
    out = load_image(save(tmp_path, "ckey.png", im, transparency=(1, 2, 3)))
    assert out.mode == "RGB" and [px(out, (0, 0)), px(out, (1, 0))] == [(255,) * 3, (4, 5, 6)]


SIXTEEN_BIT = np.array([[0, 128, 257, 32768, 65535]], np.uint16)
SIXTEEN_BIT_AS_8 = [[0, 0, 1, 128, 255]]  # scaled by the type range, not clipped at 255


@pytest.mark.parametrize("name,mode", [("i16.png", "I;16"), ("i16b.tif", "I;16B")])
def test_sixteen_bit_scaled_by_type_range(tmp_path, name, mode):
    im = Image.fromarray(SIXTEEN_BIT)  # I;16
    if mode == "I;16B":
        im = im.convert("I").convert("I;16B")
    path = save(tmp_path, name, im)
    assert opened_mode(path) == mode
    out = load_image(path)
    assert out.mode == "L" and np.array_equal(np.asarray(out), SIXTEEN_BIT_AS_8)


def test_mode_i_read_as_sixteen_bit(tmp_path):
    a = np.array([[0, 257, 65535, 70000, -5]], np.int32)
    path = save(tmp_path, "i32.tif", Image.fromarray(a, "I"))
    assert opened_mode(path) == "I"
    out = load_image(path)
    assert out.mode == "L" and np.array_equal(np.asarray(out), [[0, 1, 255, 255, 0]])


def test_mode_f(tmp_path):
    unit = np.array([[0.0, 0.5, 1.0]], np.float32)  # the usual [0, 1] convention: x 255
    out = load_image(save(tmp_path, "unit.tif", Image.fromarray(unit, "F")))
    assert out.mode == "L" and np.array_equal(np.asarray(out), [[0, 128, 255]])
    wide = np.array([[-1.0, 1.0, 3.0, np.nan]], np.float32)  # any other range: stretched min..max
    out = load_image(save(tmp_path, "wide.tif", Image.fromarray(wide, "F")))
    assert np.array_equal(np.asarray(out), [[0, 128, 255, 0]])


def test_cmyk_jpeg_and_tiff(tmp_path):
    im = Image.new("CMYK", (16, 16), (0, 0, 0, 0))  # no ink: white
    im.paste((0, 255, 255, 0), (8, 0, 16, 16))  # magenta + yellow: red
    for name in ("cmyk.jpg", "cmyk.tif"):
        path = save(tmp_path, name, im, quality=100) if name.endswith("jpg") else save(tmp_path, name, im)
        assert opened_mode(path) == "CMYK"
        out = load_image(path)
        assert out.mode == "RGB"
        assert np.abs(np.subtract(px(out, (2, 8)), (255, 255, 255))).max() <= 3
        assert np.abs(np.subtract(px(out, (13, 8)), (255, 0, 0))).max() <= 3


def test_lab_tiff(tmp_path):
    path = save(tmp_path, "lab.tif", Image.new("LAB", (4, 4), (255, 128, 128)))  # L*=100: white
    assert opened_mode(path) == "LAB"
    out = load_image(path)
    assert out.mode == "RGB" and all(v >= 250 for v in px(out))


@pytest.mark.parametrize("mode,value,expected", [
    ("YCbCr", (255, 128, 128), (255, 255, 255)),
    ("HSV", (0, 255, 255), (255, 0, 0)),
    ("RGBX", (1, 2, 3, 0), (1, 2, 3)),
    ("RGBa", (0, 0, 0, 0), (255, 255, 255)),
    ("La", (0, 0), 255),
])
def test_in_memory_modes(mode, value, expected):
    # Modes no file format here writes: the conversion step on its own.
    out = loading._to_rgb_or_l("mem", Image.new(mode, (2, 2), value))
    assert out.mode == ("L" if isinstance(expected, int) else "RGB")
    got = px(out)
    assert np.abs(np.subtract(got, expected)).max() <= 1


# --------------------------------------------------------------------------------------------------
# EXIF orientation and draft decoding


def oriented_jpeg(tmp_path, orientation: int, size=(64, 32), name=None) -> str:
    """A JPEG with a red top-left quadrant and a given EXIF Orientation."""
    w, h = size
    im = Image.new("RGB", size, (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, w // 2, h // 2))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(tmp_path, name or f"o{orientation}.jpg", im, quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_exif_transpose(tmp_path, orientation):
    path = oriented_jpeg(tmp_path, orientation)
    out = load_image(path)
    with Image.open(path) as raw:
        oracle = ImageOps.exif_transpose(raw).convert("RGB")
    assert out.size == oracle.size == ((32, 64) if orientation >= 5 else (64, 32))
    assert np.array_equal(np.asarray(out), np.asarray(oracle))


def test_orientation_6_is_a_clockwise_turn(tmp_path):
    out = load_image(oriented_jpeg(tmp_path, 6))
    # Stored red top-left quadrant; displayed turned 90 degrees clockwise, it is top-right.
    assert out.size == (32, 64)
    r, g, b = px(out, (28, 4))
    assert r > 200 and b < 60
    r, g, b = px(out, (4, 4))
    assert b > 200 and r < 60


def test_orientation_with_draft_requests_swapped_sides(tmp_path):
    # Stored 1600x800, displayed 800x1600. min_size=(100, 200) is for the displayed image: the
    # stored side pair to keep is (200, 100), which allows the 1/8 scale (200x100 stored).
    # Not swapping would have allowed only 1/4 (400x200).
    path = oriented_jpeg(tmp_path, 6, size=(1600, 800))
    out = load_image(path, min_size=(100, 200))
    assert out.size == (100, 200)
    r, g, b = px(out, (90, 10))
    assert r > 200 and b < 60


def big_jpeg(tmp_path, w, h, name="big.jpg") -> str:
    return save(tmp_path, name, smooth_rgb(w, h), quality=85)


def test_draft_shrinks_a_12_megapixel_jpeg(tmp_path):
    path = big_jpeg(tmp_path, 4000, 3000)
    out = load_image(path, min_size=(32, 32))
    assert out.size == (500, 375)  # 1/8, the largest DCT reduction
    out = load_image(path, min_size=(1000, 1000))
    assert out.size == (2000, 1500)  # 1/4 would give 750 rows < 1000
    assert load_image(path).size == (4000, 3000)


def test_draft_is_skipped_for_small_images_and_other_formats(tmp_path):
    path = big_jpeg(tmp_path, 50, 40)
    assert load_image(path, min_size=(64, 64)).size == (50, 40)  # never upscaled, never below itself
    path = save(tmp_path, "big.png", smooth_rgb(800, 600))
    assert load_image(path, min_size=(32, 32)).size == (800, 600)


@pytest.fixture(scope="module")
def odd_jpeg(tmp_path_factory):
    return big_jpeg(tmp_path_factory.mktemp("draft"), 1001, 701, "odd.jpg")


@settings(max_examples=60, deadline=None, derandomize=True)
@given(w=st.integers(1, 1200), h=st.integers(1, 800))
@example(w=125, h=1).via("1001 // 125 == 8: the 1/8 scale")
@example(w=126, h=1).via("ceil(1001 / 8) == 126, but 8 * 126 > 1001: Pillow keeps 1/4")
@example(w=1, h=88).via("8 * 88 > 701: 1/4")
@example(w=1001, h=701).via("the full size")
def test_draft_never_below_min_size(odd_jpeg, w, h):
    out = load_image(odd_jpeg, min_size=(w, h))
    # Never below the request (or the image)...
    assert out.width >= min(w, 1001) and out.height >= min(h, 701)
    # ...and no coarser DCT scale was allowed: Pillow takes the largest s in (1, 2, 4, 8) with
    # s * w <= width and s * h <= height (it keeps up to one extra pixel rather than risk one short).
    scale = round(1001 / out.width)
    assert scale in (1, 2, 4, 8) and out.size == (-(-1001 // scale), -(-701 // scale))
    coarser = [s for s in (2, 4, 8) if s > scale]
    assert not coarser or coarser[0] * w > 1001 or coarser[0] * h > 701


# --------------------------------------------------------------------------------------------------
# Formats and animation


@pytest.mark.parametrize("fmt,ext,lossless", [
    ("JPEG", "jpg", False), ("PNG", "png", True), ("WEBP", "webp", False), ("TIFF", "tif", True),
    ("BMP", "bmp", True), ("GIF", "gif", False),
])
def test_format_round_trip(tmp_path, fmt, ext, lossless):
    src = smooth_rgb(96, 64)
    path = save(tmp_path, f"rt.{ext}", src, fmt)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (96, 64)
    diff = np.abs(np.asarray(out, np.int16) - np.asarray(src, np.int16))
    if lossless:
        assert diff.max() == 0
    else:  # JPEG/WebP at default quality, GIF's 256-colour palette
        assert diff.mean() < 12


@pytest.mark.parametrize("fmt,ext", [("GIF", "gif"), ("PNG", "png"), ("WEBP", "webp")])
def test_animated_first_frame(tmp_path, fmt, ext):
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    frames = [Image.new("RGB", (32, 32), c) for c in colours]
    path = str(tmp_path / f"anim.{ext}")
    kw = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **kw)
    with Image.open(path) as check:
        assert getattr(check, "n_frames", 1) == 3
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (32, 32)
    assert np.abs(np.subtract(px(out, (16, 16)), colours[0])).max() <= 8


def test_real_photos_load(photos):
    for path in photos[:6]:
        out = load_image(path, min_size=(64, 64))
        assert out.mode in ("RGB", "L") and min(out.size) >= 64


# --------------------------------------------------------------------------------------------------
# Folder walking


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def test_walk_sorted_filtered_nested(tmp_path):
    for rel in ["b.JPG", "a.png", "sub/z.webp", "sub/deeper/y.TIFF", "c.txt", "sub/readme.md", "d.jpeg",
                "e.Gif", "f.bmp", "g.tif"]:
        touch(tmp_path / rel)
    got = [os.path.relpath(p, tmp_path) for p in iter_image_files(tmp_path)]
    assert got == ["a.png", "b.JPG", "d.jpeg", "e.Gif", "f.bmp", "g.tif", "sub/deeper/y.TIFF", "sub/z.webp"]
    flat = [os.path.relpath(p, tmp_path) for p in iter_image_files(str(tmp_path), recursive=False)]
    assert flat == ["a.png", "b.JPG", "d.jpeg", "e.Gif", "f.bmp", "g.tif"]
    only = [os.path.relpath(p, tmp_path) for p in iter_image_files(tmp_path, extensions=["WEBP", ".bmp"])]
    assert only == ["f.bmp", "sub/z.webp"]
    everything = list(iter_image_files(tmp_path, extensions=None))
    assert len(everything) == 10


def test_walk_mixed_roots_in_order_once(tmp_path):
    a = touch(tmp_path / "x" / "a.jpg")
    b = touch(tmp_path / "y" / "b.jpg")
    notes = touch(tmp_path / "notes.txt")
    failures = []
    got = list(iter_image_files([tmp_path / "y", notes, str(tmp_path / "x"), tmp_path / "nope", a],
                                on_error=failures.append))
    assert got == [b, notes, a]  # roots in the given order; an explicit file whatever its extension
    assert failures == [LoadFailure(str(tmp_path / "nope"), "file not found", "missing")]


def test_walk_symlinks(tmp_path):
    real = tmp_path / "real"
    img = touch(real / "a.jpg")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(real, root / "linked")
    os.symlink(real / "a.jpg", root / "alias.jpg")
    os.symlink(tmp_path / "gone.jpg", root / "dangling.jpg")
    failures = []
    got = list(iter_image_files(root, on_error=failures.append))
    assert got == [str(root / "alias.jpg")]  # file symlinks yielded, folder symlinks not followed
    assert [(f.kind, os.path.basename(f.path)) for f in failures] == [("missing", "dangling.jpg")]
    got = list(iter_image_files(root, follow_symlinks=True, on_error=lambda f: None))
    assert got == [str(root / "alias.jpg"), str(root / "linked" / "a.jpg")]
    assert img in list(iter_image_files(real))


def test_walk_symlink_loop_terminates(tmp_path):
    touch(tmp_path / "top" / "a.jpg")
    os.symlink(tmp_path / "top", tmp_path / "top" / "loop")  # top/loop -> top
    os.symlink(tmp_path / "top" / "self", tmp_path / "top" / "self")  # a link to itself
    failures = []
    got = list(iter_image_files(tmp_path / "top", follow_symlinks=True, on_error=failures.append))
    assert got == [str(tmp_path / "top" / "a.jpg")]
    assert sorted((f.kind, os.path.basename(f.path)) for f in failures) == [
        ("symlink_loop", "loop"), ("symlink_loop", "self")]


def test_walk_unreadable_folder_is_reported(tmp_path, monkeypatch):
    good = touch(tmp_path / "a" / "1.jpg")
    touch(tmp_path / "b" / "2.jpg")
    locked = str(tmp_path / "b")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == locked:  # root ignores chmod 000, so refuse as the OS would for others
            raise PermissionError(13, "Permission denied", locked)
        return real_scandir(path)

    monkeypatch.setattr(loading.os, "scandir", scandir)
    failures = []
    assert list(iter_image_files(tmp_path, on_error=failures.append)) == [good]
    assert failures == [LoadFailure(locked, "permission denied (folder cannot be listed)", "permission")]


def test_walk_without_callback_logs(tmp_path, caplog):
    assert list(iter_image_files(tmp_path / "missing")) == []
    assert "file not found" in caplog.text


@pytest.mark.parametrize("make", ["fifo", "socket", "dev_zero_link"])
def test_non_regular_files_are_refused_and_never_yielded(tmp_path, make):
    # Issue 11: each of these hung (FIFO: open blocks) or never ended (/dev/zero: endless data) when read.
    import socket

    from imgsim_fast.io.digest import file_digest
    from imgsim_fast.features.metadata import read_metadata

    path = tmp_path / "x.jpg"
    sock = None
    if make == "fifo":
        os.mkfifo(path)
    elif make == "socket":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
    else:
        os.symlink("/dev/zero", path)
    try:
        assert failure_kind(path) == "not_regular_file"
        with pytest.raises(loading.NotRegularFileError):
            loading.open_regular(path)
        with pytest.raises(OSError):
            file_digest(str(path))
        assert read_metadata(str(path)).width is None
        failures = []
        assert list(iter_image_files(tmp_path, on_error=failures.append)) == []
        assert list(iter_image_files(path, on_error=failures.append)) == []  # named as a root too
        assert [(f.path, f.kind) for f in failures] == [(str(path), "not_regular_file")] * 2
    finally:
        if sock is not None:
            sock.close()


def test_walk_yields_non_utf8_names_that_open(tmp_path):
    name = os.path.join(os.fsencode(str(tmp_path)), b"\xff\xfe.png")
    smooth_rgb(16, 16).save(name, format="PNG")
    paths = list(iter_image_files(tmp_path))
    assert [os.fsencode(p) for p in paths] == [name]  # the exact bytes come back
    assert load_image(paths[0]).size == (16, 16)


def test_memory_budget_refuses_before_decoding(tmp_path):
    # 57 bytes declaring 9000 x 9000 RGB: about 390 MiB to decode by decode_cost. Refused from the header
    # under a 256 MiB budget (no allocation); under a 512 MiB one it gets as far as decoding.
    path = write(tmp_path, "wide.png", png_header_only(9000, 9000))
    cost = loading.decode_cost((9000, 9000), "RGB")
    assert 380 << 20 < cost < 400 << 20
    with pytest.raises(ImageLoadError) as info:
        load_image(path, max_bytes=256 << 20)
    assert info.value.kind == "too_large" and "memory budget" in info.value.reason
    assert failure_kind(path, max_bytes=512 << 20) in ("truncated", "corrupt")
    # RGBA costs more than RGB, L less: the budget is bytes, not pixels.
    costs = [loading.decode_cost((1000, 1000), m) for m in ("L", "RGB", "RGBA")]
    assert costs == sorted(set(costs))


def test_worker_peak_memory_stays_within_the_budget(tmp_path):
    # Issue 11: a 783 KB PNG just under the pixel limit cost a worker 1.45 GB. Measured in a fresh process
    # (bench/memory_bench.py): the largest flat RGB PNG a 64 MiB budget admits, and one a bit larger.
    from imgsim_fast.bench.memory_bench import flat_png, largest_square, worker_peak

    budget = 64 << 20
    side = largest_square(budget)
    r = worker_peak(flat_png(str(tmp_path / "limit.png"), side), budget)
    assert r["hashed"] == 1
    assert r["peak_kib"] - r["base_kib"] <= budget >> 10
    assert r["peak_kib"] - r["base_kib"] > (budget >> 10) // 2  # it did decode the whole picture
    over = worker_peak(flat_png(str(tmp_path / "over.png"), side + 64), budget)
    assert over["failures"] == ["too_large"] and over["peak_kib"] - over["base_kib"] < 16 << 10
