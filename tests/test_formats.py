"""Every format a camera or phone writes: one folder of JPEG, PNG, WebP, TIFF, BMP, GIF, HEIC, AVIF and
camera RAW (DNG) twins of one real photo hashes whole, and the HEIC, AVIF and RAW pHashes land within a
few bits of the JPEG's (issue 15); missing optional decoders are per-file failures, not crashes;
--extensions narrows the walk and every file passed over is counted."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dng_writer import write_dng
from imgsim_fast.io.loading import load_image
from imgsim_fast.features.hash_files import hash_paths

FORMATS = ("jpg", "png", "webp", "tif", "bmp", "gif", "heic", "avif", "dng")


def _bits(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.unpackbits((a ^ b).view(np.uint8)).sum())


@pytest.fixture(scope="module")
def twins(photos, tmp_path_factory):
    """One real photo at 640 px wide in every format, plus a RAW without a preview and a non-image."""
    import pillow_heif

    d = tmp_path_factory.mktemp("formats")
    # A camera photograph (the JPEG wallpapers), whose texture makes a wrong decode show in the hash.
    im = Image.open(next(p for p in photos if p.lower().endswith(".jpg"))).convert("RGB")
    im.thumbnail((640, 640))
    im = im.crop((0, 0, im.width // 2 * 2, im.height // 2 * 2))  # a Bayer mosaic wants even sides
    for ext in ("jpg", "png", "webp", "tif", "bmp", "gif"):
        im.save(d / f"photo.{ext}", **({"quality": 92} if ext in ("jpg", "webp") else {}))
    pillow_heif.from_pillow(im).save(str(d / "photo.heic"), quality=90)
    im.save(d / "photo.avif", quality=90)  # pillow-avif-plugin registered by the loader's import below
    preview = im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    preview.save(buf, "JPEG", quality=90)
    # A camera DNG: the JPEG preview in IFD0, the 16-bit RGGB mosaic in a SubIFD.
    write_dng(d / "photo.dng", np.asarray(im), buf.getvalue(), preview.size)
    # A DNG without a preview: read by demosaicking at half size.
    bare = tmp_path_factory.mktemp("bare")
    write_dng(bare / "bare.dng", np.asarray(im))
    (d / "notes.txt").write_text("not an image")
    return d, bare


@pytest.fixture(scope="module", autouse=True)
def _avif_writer():
    import pillow_avif  # noqa: F401  (registers AVIF saving for the fixture)


def test_every_format_hashes_and_heic_avif_raw_match_the_jpeg(twins):
    d, bare = twins
    res = hash_paths([str(d), str(bare)], workers=1)
    assert res.failures == []
    names = [os.path.basename(p) for p in res.paths]
    assert sorted(names) == sorted([f"photo.{e}" for e in FORMATS] + ["bare.dng"])
    assert [os.path.basename(p) for p in res.passed_over] == ["notes.txt"]
    code = dict(zip(names, res.codes["phash"]))
    for name in ("photo.heic", "photo.avif", "photo.dng", "bare.dng"):
        assert _bits(code[name], code["photo.jpg"]) <= 4, name
    assert _bits(code["photo.png"], code["photo.jpg"]) <= 4


def test_raw_reads_the_preview_first_and_demosaics_without_one(twins):
    d, bare = twins
    jpeg = load_image(d / "photo.jpg")
    assert load_image(d / "photo.dng").size == (jpeg.width // 2, jpeg.height // 2)  # the preview's size
    # No preview: LibRaw's half-size demosaic, with the photo's colours (ColorMatrix1 = sRGB).
    demosaic = load_image(bare / "bare.dng")
    assert demosaic.size == (jpeg.width // 2, jpeg.height // 2) and demosaic.mode == "RGB"
    small = np.asarray(jpeg.resize(demosaic.size), np.float64)
    corr = np.corrcoef(np.asarray(demosaic, np.float64).ravel(), small.ravel())[0, 1]
    assert corr > 0.9


def test_raw_with_a_thumbnail_too_small_for_the_caller_is_demosaicked(twins, tmp_path):
    d, _ = twins
    with Image.open(d / "photo.png") as im:
        rgb = np.asarray(im.convert("RGB"))
        thumb = im.convert("RGB").resize((40, 24))
    buf = io.BytesIO()
    thumb.save(buf, "JPEG")
    write_dng(tmp_path / "tiny.dng", rgb, buf.getvalue(), thumb.size)
    assert load_image(tmp_path / "tiny.dng").size == (40, 24)  # no size asked for: the preview
    h, w = rgb.shape[:2]
    assert load_image(tmp_path / "tiny.dng", min_size=(64, 64)).size == (w // 2, h // 2)


def test_unreadable_raw_is_a_per_file_failure(tmp_path):
    (tmp_path / "broken.nef").write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    (tmp_path / "broken.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)
    res = hash_paths(str(tmp_path), workers=1)
    assert res.paths == []
    kinds = {os.path.basename(f.path): f.kind for f in res.failures}
    assert set(kinds) == {"broken.nef", "broken.heic"}
    assert set(kinds.values()) <= {"unsupported", "corrupt", "truncated"}


def test_missing_optional_decoders_name_the_extra(twins):
    """Without pillow-heif, pillow-avif-plugin and rawpy, those files fail one by one with the package to
    install; the other formats still hash."""
    d, _ = twins
    code = (
        "import json, sys\n"
        "for m in ('pillow_heif', 'pillow_avif', 'rawpy'):\n"
        "    sys.modules[m] = None  # an import of it raises ImportError, as when it is not installed\n"
        "from imgsim_fast.features.hash_files import hash_paths\n"
        f"r = hash_paths({str(d)!r}, workers=1)\n"
        "print(json.dumps({'ok': len(r.paths), 'failed': [[f.path, f.kind, f.reason] for f in r.failures]}))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["ok"] == 6
    reasons = {os.path.basename(path): (kind, reason) for path, kind, reason in doc["failed"]}
    assert reasons["photo.heic"] == ("unsupported", "HEIF file: needs pillow-heif (pip install imgsim_fast[heif])")
    assert reasons["photo.avif"] == ("unsupported",
                                     "AVIF file: needs pillow-avif-plugin (pip install imgsim_fast[heif])")
    assert reasons["photo.dng"] == ("unsupported", "camera RAW file: needs rawpy (pip install imgsim_fast[raw])")


def _imgsim(*args):
    return subprocess.run([sys.executable, "-m", "imgsim_fast", *args], capture_output=True, text=True,
                          timeout=120)


def test_extensions_option_and_passed_over_count(twins):
    d, _ = twins
    p = _imgsim("hash", str(d), "--extensions", "JPG,.heic", "--workers", "1", "--no-progress")
    assert p.returncode == 0, p.stderr
    assert sorted(os.path.basename(f["path"]) for f in json.loads(p.stdout)["files"]) == ["photo.heic", "photo.jpg"]
    assert p.stderr == "imgsim: 8 files passed over: not images by extension (-v lists them)\n"
    p = _imgsim("hash", str(d), "--extensions", "jpg", "-v", "--workers", "1", "--no-progress")
    listed = sorted(ln.rsplit("/", 1)[1] for ln in p.stderr.splitlines() if ln.startswith("imgsim: passed over"))
    assert listed == sorted(["notes.txt"] + [f"photo.{e}" for e in FORMATS if e != "jpg"])
    p = _imgsim("hash", str(d), "--extensions", "jpg/png")
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1


def test_index_takes_heic_and_raw_and_counts_what_it_passes_over(twins, tmp_path):
    d, _ = twins
    p = _imgsim("index", str(d), "--catalog", str(tmp_path / "c.sqlite"), "--extensions", "heic,dng",
                "--workers", "1", "--no-progress", "--json")
    assert p.returncode == 0, p.stderr
    stats = json.loads(p.stdout)
    assert (stats["seen"], stats["decoded"], stats["failed"]) == (2, 2, 0)
    assert len(stats["passed_over"]) == 8
    assert p.stderr == "imgsim: 8 files passed over: not images by extension (-v lists them)\n"


def test_metadata_reads_heic_and_avif_headers(twins):
    from imgsim_fast.features.metadata import read_metadata

    d, _ = twins
    with Image.open(d / "photo.jpg") as im:
        size = im.size
    for name, fmt in (("photo.heic", "HEIF"), ("photo.avif", "AVIF")):
        md = read_metadata(str(d / name))
        assert (md.format, (md.width, md.height), md.errors) == (fmt, size, []), name


def test_dedup_groups_every_format_with_its_twins(twins):
    # The nine files are one picture in nine formats (the DNG through its preview): one duplicate group,
    # nothing failed; --extensions narrows the walk and says what it passed over.
    from imgsim_fast.jobs.dedup import find_duplicates

    d, _ = twins
    res = find_duplicates([str(d)], method="phash", workers=1, progress=False)
    assert not res.features.failures
    assert [sorted(os.path.basename(res.paths[m]) for m in g.members) for g in res.groups if g.tier == "duplicate"] \
        == [sorted(f"photo.{e}" for e in FORMATS)]
    assert [os.path.basename(p) for p in res.features.passed_over] == ["notes.txt"]
    p = _imgsim("dedup", str(d), "--method", "phash", "--extensions", "jpg,dng", "--workers", "1", "--no-progress")
    assert p.returncode == 0, p.stderr
    assert "2 images scanned" in p.stdout and "1 duplicate group," in p.stdout
    assert "8 files passed over" in p.stderr
