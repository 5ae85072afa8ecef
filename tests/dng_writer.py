"""A minimal DNG writer for tests: a real Bayer-mosaic RAW file (Adobe DNG 1.4, uncompressed 16-bit CFA),
optionally with a JPEG preview in IFD0 as cameras write it, made offline from any RGB picture.

No sample RAW files ship in any package this project may install, so the test RAW is built to the DNG
specification from a real photo: an RGGB mosaic of its linear-light values, which LibRaw demosaics.
"""
from __future__ import annotations

import struct

import numpy as np

# TIFF field types: (struct code per value, bytes per value)
_BYTE, _ASCII, _SHORT, _LONG, _RATIONAL, _SRATIONAL = 1, 2, 3, 4, 5, 10
_FMT = {_BYTE: "B", _ASCII: "B", _SHORT: "H", _LONG: "I", _RATIONAL: "II", _SRATIONAL: "ii"}

# XYZ (D65) -> linear sRGB: with ColorMatrix1 set to it, the "camera" RGB is linear sRGB, so LibRaw's
# colour pipeline gives back the picture's own colours.
_XYZ_TO_SRGB = [3.2406, -1.5372, -0.4986, -0.9689, 1.8758, 0.0415, 0.0557, -0.2040, 1.0570]


def _encode(typ: int, values) -> bytes:
    if typ == _ASCII:
        return values.encode("ascii") + b"\0"
    if typ in (_RATIONAL, _SRATIONAL):
        out = b""
        for v in values:
            out += struct.pack("<" + _FMT[typ], round(v * 10000), 10000)
        return out
    return struct.pack("<%d%s" % (len(values), _FMT[typ]), *values)


def _count(typ: int, values) -> int:
    return len(values) + 1 if typ == _ASCII else len(values)


def _layout(ifds: list[dict], blobs: list[bytes]) -> bytes:
    """Header, the IFDs (each linked to the next by the caller through tags), their out-of-line values,
    then the blobs. An entry value `("blob", i)` is the offset of blobs[i], `("ifd", j)` of IFD j."""
    ifd_pos, pos = [], 8
    for ifd in ifds:
        ifd_pos.append(pos)
        pos += 2 + 12 * len(ifd) + 4
    extra_start = pos
    extra_size = 0
    for ifd in ifds:
        for typ, values in ifd.values():
            n = 4 if isinstance(values, tuple) else len(_encode(typ, values))
            if n > 4:
                extra_size += n + (n & 1)
    blob_pos, pos = [], extra_start + extra_size
    for b in blobs:
        blob_pos.append(pos)
        pos += len(b) + (len(b) & 1)

    def resolve(typ, values):
        if isinstance(values, tuple):
            what, i = values
            return [blob_pos[i] if what == "blob" else ifd_pos[i]]
        return values

    out = bytearray(b"II*\0" + struct.pack("<I", ifd_pos[0]))
    extra = bytearray()
    for ifd in ifds:
        out += struct.pack("<H", len(ifd))
        for tag in sorted(ifd):
            typ, values = ifd[tag]
            values = resolve(typ, values)
            data = _encode(typ, values)
            if len(data) <= 4:
                field = data.ljust(4, b"\0")
            else:
                field = struct.pack("<I", extra_start + len(extra))
                extra += data + b"\0" * (len(data) & 1)
            out += struct.pack("<HHI", tag, typ, _count(typ, values)) + field
        out += struct.pack("<I", 0)  # no next IFD: the raw image is reached through SubIFDs
    out += extra
    for b in blobs:
        out += b + b"\0" * (len(b) & 1)
    return bytes(out)


def bayer_rggb(rgb: np.ndarray) -> np.ndarray:
    """An RGGB mosaic (uint16, linear light) of an sRGB uint8 picture (height and width even)."""
    s = rgb.astype(np.float64) / 255.0
    lin = np.where(s <= 0.04045, s / 12.92, ((s + 0.055) / 1.055) ** 2.4)
    h, w = lin.shape[:2]
    cfa = np.empty((h, w), np.float64)
    cfa[0::2, 0::2] = lin[0::2, 0::2, 0]
    cfa[0::2, 1::2] = lin[0::2, 1::2, 1]
    cfa[1::2, 0::2] = lin[1::2, 0::2, 1]
    cfa[1::2, 1::2] = lin[1::2, 1::2, 2]
    return np.rint(cfa * 65535).astype("<u2")


def write_dng(path, rgb: np.ndarray, preview_jpeg: bytes | None = None,
              preview_size: tuple[int, int] | None = None) -> None:
    """Write `rgb` (uint8, H x W x 3, even sides) as a DNG Bayer RAW; with `preview_jpeg` (baseline JPEG
    bytes of `preview_size` (w, h)) in IFD0 as the preview and the RAW in a SubIFD, like camera DNGs."""
    cfa = bayer_rggb(rgb)
    h, w = cfa.shape
    raw = {
        254: (_LONG, [0]), 256: (_LONG, [w]), 257: (_LONG, [h]), 258: (_SHORT, [16]), 259: (_SHORT, [1]),
        262: (_SHORT, [32803]), 277: (_SHORT, [1]), 278: (_LONG, [h]), 279: (_LONG, [cfa.nbytes]),
        284: (_SHORT, [1]), 33421: (_SHORT, [2, 2]), 33422: (_BYTE, [0, 1, 1, 2]),
        50714: (_SHORT, [0]), 50717: (_LONG, [65535]),
    }
    common = {
        271: (_ASCII, "imgsim"), 272: (_ASCII, "test DNG"), 50706: (_BYTE, [1, 4, 0, 0]),
        50707: (_BYTE, [1, 1, 0, 0]), 50708: (_ASCII, "imgsim test DNG"),
        50721: (_SRATIONAL, _XYZ_TO_SRGB), 50728: (_RATIONAL, [1.0, 1.0, 1.0]), 50778: (_SHORT, [21]),
    }
    blobs = [cfa.tobytes()]
    if preview_jpeg is None:
        raw.update(common)
        raw[273] = (_LONG, ("blob", 0))
        data = _layout([raw], blobs)
    else:
        pw, ph = preview_size
        blobs.append(preview_jpeg)
        preview = dict(common)
        preview.update({
            254: (_LONG, [1]), 256: (_LONG, [pw]), 257: (_LONG, [ph]), 258: (_SHORT, [8, 8, 8]),
            259: (_SHORT, [7]), 262: (_SHORT, [6]), 273: (_LONG, ("blob", 1)), 277: (_SHORT, [3]),
            278: (_LONG, [ph]), 279: (_LONG, [len(preview_jpeg)]), 284: (_SHORT, [1]),
            330: (_LONG, ("ifd", 1)),
        })
        raw[273] = (_LONG, ("blob", 0))
        data = _layout([preview, raw], blobs)
    with open(path, "wb") as f:
        f.write(data)
