"""Image loading: the only module that opens image files, and the folder walker that finds them.

`load_image` returns a fully decoded "RGB" or "L" image or raises `ImageLoadError` with a human reason
and a machine-readable kind; `open_regular` is the one way any module opens an image (or sidecar) file for
reading; `iter_image_files` walks files and folders deterministically and reports what it cannot read as
`LoadFailure` records instead of raising.
"""
from __future__ import annotations

import errno
import fcntl
import io
import logging
import os
import stat
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Union

import numpy as np
from PIL import Image

__all__ = [
    "BACKGROUND",
    "DEFAULT_EXTENSIONS",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MEMORY_BUDGET",
    "FAILURE_KINDS",
    "HEIF_EXTENSIONS",
    "RAW_EXTENSIONS",
    "ImageLoadError",
    "LoadFailure",
    "NotRegularFileError",
    "decode_cost",
    "ensure_heif_plugin",
    "iter_image_files",
    "load_image",
    "normalise_extensions",
    "open_regular",
    "read_file",
]

log = logging.getLogger(__name__)

# 16384 x 16384: the largest picture considered at all, read from the header. Pillow's own guard warns at
# ~89 MP and refuses at ~179 MP; ours replaces it so one setting governs both.
DEFAULT_MAX_PIXELS = 1 << 28
# What one image may cost a worker, from decoding to hashing: Pillow's decoded pixels (4 bytes a pixel for
# RGB: Pillow stores RGB as RGBX), the conversion copies load_image makes, and one grey copy the
# consumer makes (see decode_cost). Checked from the header (after Image.draft) before decoding. At 5
# bytes a pixel an RGB PNG of up to 161 MP (12,700 x 12,700) decodes; a 2^28-pixel one is refused instead
# of costing a worker 1.45 GB (issue 11). `python -m imgsim_fast.bench memory` measures the peak.
DEFAULT_MEMORY_BUDGET = 768 << 20

# Alpha is composited on white: scans, screenshots and logos are usually drawn on white, and a fixed
# colour keeps hashes of the same transparent file identical everywhere.
BACKGROUND = 255

# Camera RAW files, read through rawpy (LibRaw): the embedded JPEG preview when there is one, else a
# half-size demosaic. Chosen by extension, since most RAW formats are TIFF containers Pillow would misread.
RAW_EXTENSIONS = frozenset({".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf",
                            ".orf", ".rw2", ".rwl", ".pef", ".srw", ".3fr", ".iiq", ".erf", ".kdc", ".dcr",
                            ".mrw", ".mos", ".x3f"})
# HEIF (iPhone .heic) through pillow-heif, AVIF through pillow-avif-plugin: both optional extras, imported
# only when such a file is opened (`ensure_heif_plugin`).
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif", ".avif"})
DEFAULT_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
                               | HEIF_EXTENSIONS | RAW_EXTENSIONS)

# Every `kind` a LoadFailure can carry, here and in the pipeline, with what it means.
FAILURE_KINDS = {
    "missing": "the path does not exist (or is a broken symlink)",
    "permission": "the OS refused to open the file or list the folder",
    "is_directory": "a folder where a file was expected",
    "not_regular_file": "a FIFO, socket or device; never read, as reading could block",
    "symlink_loop": "a symlink cycle",
    "io_error": "any other OS error while reading",
    "empty": "a 0-byte file",
    "not_image": "no image signature Pillow or we recognise",
    "unsupported": "a recognised image format or pixel mode this build cannot decode (or its optional "
                   "package, pillow-heif, pillow-avif-plugin or rawpy, is not installed)",
    "truncated": "the file ends before its image data does",
    "corrupt": "the decoder rejected the data",
    "too_large": "over the max_pixels limit or the memory budget (read from the header, before decoding), "
                 "or out of memory",
    "worker_crash": "the worker process died while handling this file (pipeline)",
    "hash_error": "the file loaded but hashing it raised (pipeline)",
    "error": "an unexpected exception, with its type and message in the reason (pipeline)",
}


@dataclass(frozen=True)
class LoadFailure:
    """One file or folder that could not be used, as a record for reports."""

    path: str
    reason: str
    kind: str


class NotRegularFileError(OSError):
    """`open_regular` refused a FIFO, socket or device: reading it could block forever or never end."""


class ImageLoadError(Exception):
    """An image file could not be loaded; `.reason` is for people, `.kind` (see FAILURE_KINDS) for code."""

    def __init__(self, path: str, reason: str, kind: str):
        super().__init__(path, reason, kind)  # keeps the error picklable across worker processes
        self.path = path
        self.reason = reason
        self.kind = kind

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    def to_failure(self) -> LoadFailure:
        return LoadFailure(self.path, self.reason, self.kind)


PathLike = Union[str, "os.PathLike[str]"]

# --------------------------------------------------------------------------------------------------
# load_image


def load_image(
    path: PathLike,
    *,
    min_size: tuple[int, int] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = DEFAULT_MEMORY_BUDGET,
    data: bytes | None = None,
    grey: bool = False,
) -> Image.Image:
    """Decode the first frame of an image file into mode "RGB" or "L", upright.

    grey: only grey levels are wanted: a JPEG is decoded straight to its luma plane (mode "L"), which skips
        chroma upsampling and colour conversion, the larger part of a reduced decode's cost.
    data: the file's bytes, already read by `read_file` (the one extraction pass reads a file once, then
        digests and decodes the same buffer); `path` then only names the file in errors and picks the
        RAW decoder by extension.

    min_size: (width, height) the caller needs after orientation; JPEGs are then decoded at the
        smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides >= min_size (`Image.draft`). Other
        formats decode at full size.
    max_pixels: refuse images whose header declares more pixels (None: no limit). This replaces
        Pillow's MAX_IMAGE_PIXELS guard, which is never changed globally except briefly, under a lock,
        to read the header of an image Pillow would refuse but our limit allows.
    max_bytes: the memory budget: refuse, before decoding, an image whose `decode_cost` (at the drafted
        size) exceeds it (None: no limit).

    Only regular files are opened (`open_regular`): a FIFO, socket or device is refused, never read.

    Mode rules: L stays L; 1, I;16*, I and F become L; everything else becomes RGB. Alpha (RGBA, LA,
    PA, and P/L/RGB with a tRNS colour key) is composited on white (BACKGROUND). 16-bit samples are
    scaled by 255/65535 (65535 -> 255), and I (32-bit) is read as 16-bit data, as Pillow's 16-bit
    decoders produce it, clipped to 0..65535. F: values within [0, 1] are scaled by 255, any other
    range is stretched min..max to 0..255; NaN becomes 0. EXIF orientation (tag 0x0112, or XMP
    tiff:Orientation, as `ImageOps.exif_transpose` reads them) is applied after decoding.

    Pillow warnings are silenced for the call (the reason for any failure is in the exception). The
    warnings filter is process-global, so this is not safe to call from several threads at once.
    """
    path = os.fspath(path)
    if min_size is not None:
        min_w, min_h = (int(v) for v in min_size)
        if min_w < 1 or min_h < 1:
            raise ValueError(f"min_size must be positive, got {min_size!r}")
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be positive or None, got {max_pixels!r}")
    if max_bytes is not None and max_bytes < 1:
        raise ValueError(f"max_bytes must be positive or None, got {max_bytes!r}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if data is None:
            try:
                fp = open_regular(path)
            except OSError as exc:
                raise _os_error(path, exc) from exc
        else:
            fp = io.BytesIO(data)
        with fp:
            size = os.fstat(fp.fileno()).st_size if data is None else len(data)
            if size == 0:
                raise ImageLoadError(path, "empty file (0 bytes)", "empty")
            if os.path.splitext(path)[1].lower() in RAW_EXTENSIONS:
                im, raw_orientation = _open_raw(path, fp, size, max_pixels, min_size)
            else:
                ensure_heif_plugin(path, _read_head(fp))
                fp.seek(0)
                im, raw_orientation = _open(path, fp, size, max_pixels), None
            orientation = 1
            if min_size is not None and im.format in ("JPEG", "MPO"):
                # JPEG parses its EXIF at open, so the orientation is known before decoding; min_size
                # is for the upright image, so a 90-degree orientation swaps the sides to request.
                orientation = _orientation(im) if raw_orientation is None else raw_orientation
                req = (min_h, min_w) if orientation in (5, 6, 7, 8) else (min_w, min_h)
                try:
                    im.draft("L" if grey else None, req)
                except Exception as exc:  # a decoder-config failure is a property of this file
                    raise _decode_error(path, fp, size, exc) from exc
            if max_bytes is not None:
                cost = decode_cost(im.size, im.mode, "transparency" in im.info)
                if cost > max_bytes:
                    w, h = im.size
                    raise ImageLoadError(
                        path, f"over the memory budget: decoding {w}x{h} {im.mode} needs about "
                              f"{cost >> 20} MiB > {max_bytes >> 20} MiB", "too_large")
            try:
                im.load()
            except Exception as exc:
                raise _decode_error(path, fp, size, exc) from exc
            orientation = _orientation(im) if raw_orientation is None else raw_orientation
            out = _to_rgb_or_l(path, im)
            del im  # when converted, the decoded image is freed before the transpose copies `out`
    return _apply_orientation(out, orientation)


def read_file(path: PathLike, max_bytes: int | None = DEFAULT_MEMORY_BUDGET) -> bytes:
    """All bytes of a regular file (`open_regular`), or ImageLoadError: the one read of a file in the
    extraction pass. A file larger than max_bytes is refused before it is read."""
    path = os.fspath(path)
    try:
        with open_regular(path) as fp:
            size = os.fstat(fp.fileno()).st_size
            if max_bytes is not None and size > max_bytes:
                raise ImageLoadError(path, f"over the memory budget: the file holds {size >> 20} MiB "
                                           f"> {max_bytes >> 20} MiB", "too_large")
            data = fp.read()
    except OSError as exc:
        raise _os_error(path, exc) from exc
    return data  # b"" for an empty file: load_image(data=b"") says "empty file"


def open_regular(path: PathLike):
    """Open `path` for binary reading only if it is a regular file; the one way image and sidecar files
    are opened, so nothing ever blocks on a FIFO or reads /dev/zero forever.

    Stat first (following symlinks), so a device is never opened at all (opening a tape or a terminal
    can have effects). Then open with O_NONBLOCK (a FIFO opens at once instead of waiting for a writer)
    and check the opened file again with fstat: a file swapped for a FIFO between the two calls is still
    refused. Raises OSError: FileNotFoundError, IsADirectoryError, PermissionError, ...,
    NotRegularFileError for a FIFO, socket or device.
    """
    path = os.fspath(path)
    st = os.stat(path)
    _require_regular(path, st.st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        _require_regular(path, os.fstat(fd).st_mode)
        # Regular files ignore O_NONBLOCK; clear it anyway so the descriptor is an ordinary one.
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _require_regular(path: str, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(errno.EINVAL, "not a regular file (FIFO, socket or device)", path)


# Bytes a pixel takes in Pillow's memory by mode: "1" keeps a byte a pixel, the 16-bit modes two, and every
# multi-band mode four (RGB, YCbCr, LAB and HSV are stored as RGBX; LA and PA as four bytes too).
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# Extra bytes a pixel `_to_rgb_or_l` holds at its peak beside the decoded image, by source mode (counted
# from its code: each copy it makes, 4 bytes a pixel for RGB/RGBA/LA, 1 for L; NumPy temporaries for the
# 16-bit, I and F paths). Transparency adds an RGBA (or LA) copy and the white background.
_CONVERT_BYTES = {"RGB": 0, "L": 0, "1": 1, "P": 4, "RGBA": 4, "RGBa": 8, "LA": 2, "La": 6, "PA": 8,
                  "I;16": 13, "I;16L": 13, "I;16B": 13, "I;16N": 13, "I": 21, "F": 42}
_TRANSPARENT_BYTES = {"RGB": 8, "P": 8, "L": 6}
# Whatever the size: decoder buffers, the resampling passes' intermediates, allocator slack (measured
# 2 MiB over the per-pixel count for a 5181 x 5181 RGB PNG; bench/memory_bench.py).
_DECODE_OVERHEAD = 8 << 20


def decode_cost(size: tuple[int, int], mode: str, transparent: bool = False) -> int:
    """Peak bytes one image of `size` and Pillow `mode` costs from decoding to hashing: the decoded
    pixels, the copies `load_image` makes converting them to RGB or L, and one grey (1 byte a pixel)
    copy, which every consumer (hashing, border trimming) makes of the result.

    Not counted: the transpose of an EXIF-oriented image whose orientation only appears after decoding
    (a PNG's eXIf chunk after its pixel data), which holds the RGB image twice.
    """
    w, h = size
    stored = _STORED_BYTES.get(mode, 4)
    convert = _TRANSPARENT_BYTES.get(mode, 0) if transparent else 0
    convert = convert or _CONVERT_BYTES.get(mode, 4)
    return w * h * (stored + convert + 1) + _DECODE_OVERHEAD


def _os_error(path: str, exc: OSError) -> ImageLoadError:
    if isinstance(exc, FileNotFoundError):
        if os.path.islink(path):
            return ImageLoadError(path, "file not found (broken symlink)", "missing")
        return ImageLoadError(path, "file not found", "missing")
    if isinstance(exc, PermissionError):
        return ImageLoadError(path, "permission denied", "permission")
    if isinstance(exc, IsADirectoryError):
        return ImageLoadError(path, "is a directory, not a file", "is_directory")
    if isinstance(exc, NotRegularFileError):
        return ImageLoadError(path, "not a regular file (FIFO, socket or device)", "not_regular_file")
    if exc.errno == errno.ELOOP:
        return ImageLoadError(path, "symlink loop", "symlink_loop")
    return ImageLoadError(path, f"I/O error: {exc.strerror or exc}", "io_error")


# Pillow's guard lives in one module global read inside Image.open. It is lifted only to read the
# header of a file Pillow refuses (> 2 * MAX_IMAGE_PIXELS); the lock keeps our own threads from
# restoring each other's values out of order.
_PILLOW_LIMIT_LOCK = threading.Lock()


def _open(path: str, fp, size: int, max_pixels: int | None) -> Image.Image:
    """Image.open with our pixel limit in place of Pillow's; reads the header only."""
    try:
        try:
            im = Image.open(fp)
        except Image.DecompressionBombError:
            with _PILLOW_LIMIT_LOCK:
                saved = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = None
                try:
                    fp.seek(0)
                    im = Image.open(fp)
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
    except Image.UnidentifiedImageError as exc:
        raise _unidentified(path, fp, size) from exc
    except Exception as exc:
        raise _decode_error(path, fp, size, exc) from exc
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageLoadError(
            path,
            f"over the decompression-bomb limit ({w * h} pixels > {max_pixels}; {w}x{h})",
            "too_large",
        )
    return im


_HEIF_READY: set[str] = set()  # "heif", "avif": plugins registered in this process


def ensure_heif_plugin(path: str, head: bytes) -> None:
    """Register the HEIF or AVIF Pillow plugin the first time a file of that kind (by its first 32 bytes,
    `head`) is opened, so `Image.open` reads it; nothing for other files. Raises ImageLoadError when the
    package is not installed.

    A lazy import: most libraries hold no HEIC, and the extras are optional. A missing package makes
    the file a failure naming the package to install, never a crash."""
    if not (head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS):
        return
    # The major brand may be the generic mif1/msf1 with "avif" among the compatible brands.
    kind = "avif" if b"avif" in head[8:32] or b"avis" in head[8:32] else "heif"
    if kind in _HEIF_READY:
        return
    try:
        if kind == "avif":
            import pillow_avif  # noqa: F401  (registers the AVIF plugin on import)
        else:
            import pillow_heif
            pillow_heif.register_heif_opener()
    except ImportError:
        package, extra = ("pillow-avif-plugin", "heif") if kind == "avif" else ("pillow-heif", "heif")
        raise ImageLoadError(path, f"{kind.upper()} file: needs {package} (pip install imgsim_fast[{extra}])",
                             "unsupported") from None
    _HEIF_READY.add(kind)


# LibRaw's sizes.flip (0, 3, 5, 6) as the EXIF orientation that puts the preview upright.
_RAW_FLIP = {0: 1, 3: 3, 5: 8, 6: 6}


def _open_raw(path: str, fp, size: int, max_pixels: int | None,
              min_size: tuple[int, int] | None) -> tuple[Image.Image, int]:
    """A camera RAW file as a Pillow image (header read, not decoded) and its EXIF-style orientation.

    The embedded JPEG preview is what the camera itself shows, decoded like any JPEG (with draft); a
    file without one, or whose preview is smaller than `min_size` (a 160 x 120 thumbnail), is
    demosaicked at half size (LibRaw's 2x2 binning, no interpolation): a hash or an embedding needs no
    more, at a quarter of the cost."""
    try:
        import rawpy
    except ImportError:
        raise ImageLoadError(path, "camera RAW file: needs rawpy (pip install imgsim_fast[raw])",
                             "unsupported") from None

    try:
        with rawpy.imread(fp) as raw:
            flip = _RAW_FLIP.get(int(raw.sizes.flip), 1)
            w, h = int(raw.sizes.width), int(raw.sizes.height)
            if max_pixels is not None and w * h > max_pixels:
                raise ImageLoadError(path, f"over the decompression-bomb limit ({w * h} pixels > {max_pixels}; "
                                           f"{w}x{h})", "too_large")
            try:
                thumb = raw.extract_thumb()
            except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
                thumb = None
            im = None
            if thumb is not None and thumb.format == rawpy.ThumbFormat.JPEG:
                im = _open(path, io.BytesIO(thumb.data), len(thumb.data), max_pixels)
            elif thumb is not None and thumb.format == rawpy.ThumbFormat.BITMAP:
                im = Image.fromarray(thumb.data)
            if im is not None and (min_size is None or min(im.size) >= min(min_size)):
                # A preview that carries its own EXIF orientation says how to show it; else the RAW's.
                own = _orientation(im) if im.format in ("JPEG", "MPO") else 1
                return im, own if own != 1 else flip
            rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
            return Image.fromarray(rgb), 1  # postprocess applies the flip itself
    except ImageLoadError:
        raise
    except rawpy.LibRawFileUnsupportedError as exc:
        raise ImageLoadError(path, f"not a RAW file LibRaw can read ({exc})", "unsupported") from exc
    except (rawpy.LibRawIOError, rawpy.LibRawDataError) as exc:
        raise ImageLoadError(path, f"corrupt RAW data: {exc}", "corrupt") from exc
    except MemoryError as exc:
        raise ImageLoadError(path, "too large: out of memory while decoding", "too_large") from exc
    except Exception as exc:
        raise _decode_error(path, fp, size, exc) from exc


# Signatures for naming what Pillow could not open: a known format that failed to parse is corrupt,
# a known format Pillow here cannot decode is unsupported, anything else is not an image.
_SUPPORTED_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")


def _sniff(head: bytes) -> tuple[str | None, bool]:
    """(format name, supported) from the first bytes of a file; (None, False) when unknown."""
    for magic, name in _SUPPORTED_MAGIC:
        if head.startswith(magic):
            return name, True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP", True
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "HEIF/AVIF", False
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return "JPEG 2000", False
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL ")):
        return "JPEG XL", False
    return None, False


def _read_head(fp, n: int = 32) -> bytes:
    try:
        fp.seek(0)
        return fp.read(n)
    except (OSError, ValueError):
        return b""


def _unidentified(path: str, fp, size: int) -> ImageLoadError:
    name, supported = _sniff(_read_head(fp))
    if name is None:
        return ImageLoadError(path, "not an image (unrecognised format)", "not_image")
    if not supported:
        return ImageLoadError(path, f"unsupported format ({name}): this Pillow build cannot decode it",
                              "unsupported")
    if _container_truncated(_read_head(fp), size):
        return ImageLoadError(path, f"truncated file ({name}, {size} bytes)", "truncated")
    return ImageLoadError(path, f"corrupt data: starts like a {name} file but its header could not be "
                                f"parsed ({size} bytes)", "corrupt")


def _container_truncated(head: bytes, size: int) -> bool:
    """True when a container declares more bytes than the file holds (RIFF: WebP)."""
    if head[:4] == b"RIFF" and len(head) >= 8:
        return int.from_bytes(head[4:8], "little") + 8 > size
    return False


def _decode_error(path: str, fp, size: int, exc: BaseException) -> ImageLoadError:
    """Name a failure raised by Pillow while reading a header or decoding pixels."""
    if isinstance(exc, ImageLoadError):
        return exc
    if isinstance(exc, Image.DecompressionBombError):
        return ImageLoadError(path, f"over the decompression-bomb limit ({exc})", "too_large")
    if isinstance(exc, MemoryError):
        return ImageLoadError(path, "too large: out of memory while decoding", "too_large")
    if isinstance(exc, OSError) and exc.errno is not None:  # a real OS error, not Pillow's OSError(msg)
        return _os_error(path, exc)
    message = str(exc) or type(exc).__name__
    # Pillow says "image file is truncated (N bytes not processed)" or "Truncated File Read"; EOFError
    # is what some plugins raise at the end of data.
    if isinstance(exc, EOFError) or "truncated" in message.lower() or _container_truncated(
            _read_head(fp), size):
        return ImageLoadError(path, f"truncated file ({message})", "truncated")
    return ImageLoadError(path, f"corrupt data: {type(exc).__name__}: {message}", "corrupt")


def _orientation(im: Image.Image) -> int:
    """EXIF orientation 1..8; 1 when absent or unreadable (corrupt EXIF must not lose the image)."""
    try:
        value = im.getexif().get(0x0112, 1)
        value = int(value)
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


# The table of ImageOps.exif_transpose (Pillow), applied to the converted image so that EXIF is read
# once and the transpose works on 8-bit data.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _apply_orientation(im: Image.Image, orientation: int) -> Image.Image:
    method = _TRANSPOSE.get(orientation)
    return im if method is None else im.transpose(method)


def _composite(im: Image.Image, out_mode: str) -> Image.Image:
    """Flatten an "RGBA" or "LA" image onto the white background.

    The image is its own mask (paste reads an RGBA or LA mask's alpha band), so no converted copy and no
    alpha-channel copy is held beside the background (decode_cost counts what is)."""
    bg = Image.new(out_mode, im.size, (BACKGROUND,) * len(out_mode))
    bg.paste(im, (0, 0), im)
    return bg


def _from_array_l(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(a, dtype=np.uint8))


def _to_rgb_or_l(path: str, im: Image.Image) -> Image.Image:
    mode = im.mode
    transparent = "transparency" in im.info
    if mode == "RGB" and not transparent:
        return im
    if mode == "L" and not transparent:
        return im
    if mode == "1":
        return im.convert("L")
    if mode in ("P", "PA", "RGBA", "RGBa", "RGB"):  # RGB here has a tRNS colour key
        if mode == "P" and not transparent:
            return im.convert("RGB")
        return _composite(im if mode == "RGBA" else im.convert("RGBA"), "RGB")
    if mode in ("LA", "La", "L"):  # L here has a tRNS grey key
        return _composite(im if mode == "LA" else im.convert("LA"), "L")
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im)
        if mode == "I":
            a = np.clip(a, 0, 65535)
        # Round-to-nearest rescale of the 16-bit type range: 65535 -> 255, 257 -> 1, 128 -> 0.
        return _from_array_l((a.astype(np.uint32) * 255 + 32767) // 65535)
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = np.where(np.isfinite(a), a, np.nan)
        if np.isnan(a).all():
            return _from_array_l(np.zeros(a.shape))
        lo, hi = np.nanmin(a), np.nanmax(a)
        if lo >= 0.0 and hi <= 1.0:
            scaled = a * 255.0
        elif hi > lo:
            scaled = (a - lo) * (255.0 / (hi - lo))
        else:
            scaled = np.zeros_like(a)
        return _from_array_l(np.rint(np.nan_to_num(scaled, nan=0.0)))
    try:  # CMYK, YCbCr, LAB, HSV, RGBX and anything else Pillow can convert
        return im.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageLoadError(path, f"unsupported pixel mode {mode!r} ({exc})", "unsupported") from exc


# --------------------------------------------------------------------------------------------------
# iter_image_files


def iter_image_files(
    roots: PathLike | Iterable[PathLike],
    *,
    recursive: bool = True,
    follow_symlinks: bool = False,
    extensions: Iterable[str] | None = DEFAULT_EXTENSIONS,
    on_error: Callable[[LoadFailure], None] | None = None,
    on_skip: Callable[[str], None] | None = None,
) -> Iterator[str]:
    """Yield image file paths under `roots`, files and folders mixed, in a deterministic order.

    Roots are taken in the order given. A root that is a file is yielded whatever its extension (it
    was asked for by name); folders are walked depth-first with entries sorted by name, yielding
    files whose extension is in `extensions` (case-insensitive, leading dot optional; None: every
    file). A path is yielded once even when reached twice.

    follow_symlinks=False does not descend into symlinked folders below a root (symlinks to files are
    still yielded); True follows them, and a folder already on the current path is reported as a
    symlink loop and skipped, so walking always ends. Roots themselves are always followed.

    Unreadable folders, missing roots, symlink loops, and FIFOs, sockets and devices (named like images,
    directly or through a symlink, or given as roots: never yielded, so nothing downstream opens them)
    go to `on_error` as LoadFailure records (logged as warnings when on_error is None); the walk goes on.
    Every regular file in a walked folder whose extension is not in `extensions` goes to `on_skip` (its
    path), so a caller can say how many files it passed over, and which (issue 15).
    """
    exts = None if extensions is None else normalise_extensions(extensions)
    report = on_error if on_error is not None else _log_failure
    if isinstance(roots, (str, bytes, os.PathLike)):
        roots = [roots]
    seen_files: set[str] = set()
    seen_dirs: set[tuple[int, int]] = set()
    for root in roots:
        root = os.fspath(root)
        if isinstance(root, bytes):
            root = os.fsdecode(root)
        try:
            st = os.stat(root)
        except OSError as exc:
            report(_os_error(root, exc).to_failure())
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_dir(root, st, exts, recursive, follow_symlinks, report, on_skip,
                                 seen_files, seen_dirs, ancestors=())
        elif not stat.S_ISREG(st.st_mode):
            report(_os_error(root, NotRegularFileError(errno.EINVAL, "not a regular file", root)).to_failure())
        elif _first_visit(root, seen_files):
            yield root


def _walk_dir(path, st, exts, recursive, follow_symlinks, report, on_skip, seen_files, seen_dirs, ancestors):
    key = (st.st_dev, st.st_ino)
    if key in ancestors:
        report(LoadFailure(path, "symlink loop (folder is its own ancestor); not descended", "symlink_loop"))
        return
    if key in seen_dirs:  # reached again through another symlink: already walked
        return
    seen_dirs.add(key)
    ancestors = ancestors + (key,)
    try:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        failure = _os_error(path, exc).to_failure()
        if failure.kind == "permission":
            failure = LoadFailure(path, "permission denied (folder cannot be listed)", "permission")
        report(failure)
        return
    for entry in entries:
        child = entry.path
        try:
            is_link = entry.is_symlink()
            is_dir = entry.is_dir(follow_symlinks=True)
            is_file = not is_dir and entry.is_file(follow_symlinks=True)
        except OSError as exc:
            report(_os_error(child, exc).to_failure())
            continue
        if is_dir:
            if not recursive or (is_link and not follow_symlinks):
                continue
            try:
                child_st = os.stat(child)
            except OSError as exc:
                report(_os_error(child, exc).to_failure())
                continue
            yield from _walk_dir(child, child_st, exts, recursive, follow_symlinks, report, on_skip,
                                 seen_files, seen_dirs, ancestors)
        elif exts is not None and os.path.splitext(entry.name)[1].lower() not in exts:
            if on_skip is not None and is_file and _first_visit(child, seen_files):
                on_skip(child)
        elif is_file:
            if _first_visit(child, seen_files):
                yield child
        else:
            # A FIFO, socket or device with an image name (directly or through a symlink), or a symlink
            # that resolves to nothing: a record saying why, and nothing downstream ever opens it.
            try:
                os.stat(child)
            except OSError as exc:
                report(_os_error(child, exc).to_failure())
            else:
                report(_os_error(child, NotRegularFileError(errno.EINVAL, "not a regular file", child))
                       .to_failure())


def _first_visit(path: str, seen: set[str]) -> bool:
    key = os.path.normcase(os.path.abspath(path))
    if key in seen:
        return False
    seen.add(key)
    return True


def normalise_extensions(extensions: Iterable[str]) -> frozenset[str]:
    """Extensions as the walker compares them: lower case with a leading dot ("JPG" -> ".jpg")."""
    if isinstance(extensions, str):
        extensions = [extensions]
    return frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)


def _log_failure(failure: LoadFailure) -> None:
    log.warning("skipped %s: %s", failure.path, failure.reason)
