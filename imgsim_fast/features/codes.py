"""Packed binary codes: bits <-> uint64 words, hex I/O, and the NumPy reference Hamming distance.

Codes stay packed as rows of uint64 words from hashing to index to report; hex is for I/O only.
Bit order follows imagehash: the first bit of a hash is the most significant bit of word 0, so the hex
of our words, concatenated, is the string imagehash prints for the same hash.
"""
from __future__ import annotations

import numpy as np

__all__ = ["pack_bits", "unpack_bits", "to_hex", "from_hex", "hamming_reference", "words_for_bits"]


def words_for_bits(nbits: int) -> int:
    """Number of uint64 words holding `nbits` bits."""
    if nbits <= 0:
        raise ValueError(f"a code needs at least one bit, got {nbits}")
    return (nbits + 63) // 64


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack boolean rows (n, nbits) into (n, words) uint64, first bit most significant.

    imagehash's hex is the integer value of the whole bit string, so a code whose length is not a
    multiple of 64 (the 42-bit colour hash) is right-aligned, with leading zero bits.
    """
    bits = np.asarray(bits)
    if bits.ndim != 2:
        raise ValueError(f"bits must be 2-D (n, nbits), got shape {bits.shape}")
    n, nbits = bits.shape
    words = words_for_bits(max(nbits, 1))
    pad = words * 64 - nbits
    b = np.zeros((n, words * 64), dtype=np.uint8)
    b[:, pad:] = bits.astype(bool)
    # packbits is big-endian within each byte; viewing 8 bytes big-endian gives MSB-first words.
    packed = np.packbits(b, axis=1).reshape(n, words, 8)
    return packed.view(">u8").reshape(n, words).astype(np.uint64)


def unpack_bits(codes: np.ndarray, nbits: int | None = None) -> np.ndarray:
    """Inverse of pack_bits: (n, words) uint64 -> (n, nbits) bool (the last nbits bits)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint64)
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2-D (n, words), got shape {codes.shape}")
    n, words = codes.shape
    bits = np.unpackbits(codes.astype(">u8").view(np.uint8).reshape(n, words * 8), axis=1).astype(bool)
    if nbits is not None:
        bits = bits[:, words * 64 - nbits:]
    return bits


def to_hex(codes: np.ndarray, nbits: int | None = None) -> list[str]:
    """Hex strings of codes, as imagehash prints them (nbits/4 digits, default the full width)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint64)
    if codes.ndim == 1:
        codes = codes[None, :]
    words = codes.shape[1]
    ndig = (nbits + 3) // 4 if nbits is not None else words * 16
    out = []
    for row in codes:
        s = "".join(f"{int(w):016x}" for w in row)
        out.append(s[len(s) - ndig:])
    return out


def from_hex(strings, words: int | None = None) -> np.ndarray:
    """Parse hex strings into (n, words) uint64; `words` defaults to what the longest string needs."""
    strings = list(strings)
    if not strings:
        return np.zeros((0, words or 1), dtype=np.uint64)
    need = max(words_for_bits(4 * max(len(s), 1)) for s in strings)
    words = words or need
    if need > words:
        raise ValueError(f"hex string of {max(map(len, strings))} digits does not fit {words} words")
    out = np.zeros((len(strings), words), dtype=np.uint64)
    for i, s in enumerate(strings):
        try:
            v = int(s, 16)
        except ValueError:
            raise ValueError(f"not a hex code: {s!r}") from None
        for w in range(words - 1, -1, -1):
            out[i, w] = v & 0xFFFFFFFFFFFFFFFF
            v >>= 64
    return out


def hamming_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference all-pairs Hamming distances, (m, words) x (n, words) -> (m, n) int64, via unpackbits.

    Slow and obviously right: the oracle every native kernel is tested against.
    """
    a = np.ascontiguousarray(a, dtype=np.uint64)
    b = np.ascontiguousarray(b, dtype=np.uint64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"shapes {a.shape} and {b.shape} are not (m, w) and (n, w)")
    x = a[:, None, :] ^ b[None, :, :]
    return np.unpackbits(x.view(np.uint8), axis=-1).sum(axis=-1, dtype=np.int64)
