"""Packed codes: bit order, hex round trips and the reference distance everything else is checked against."""
import numpy as np
import pytest

from imgsim_fast.features.codes import from_hex, hamming_reference, pack_bits, to_hex, unpack_bits, words_for_bits


@pytest.mark.parametrize("nbits", [1, 7, 42, 63, 64, 65, 128, 256])
def test_pack_unpack_round_trip(nbits):
    rng = np.random.default_rng(nbits)
    bits = rng.random((9, nbits)) < 0.5
    codes = pack_bits(bits)
    assert codes.dtype == np.uint64 and codes.shape == (9, words_for_bits(nbits))
    assert np.array_equal(unpack_bits(codes, nbits), bits)
    assert np.array_equal(from_hex(to_hex(codes), codes.shape[1]), codes)


def test_bit_order_is_imagehash_hex():
    # imagehash prints int(''.join(bits), 2) in hex: the first bit is the most significant.
    bits = np.zeros((1, 64), bool)
    bits[0, 0] = True
    bits[0, 63] = True
    assert to_hex(pack_bits(bits)) == ["8000000000000001"]
    # A 42-bit colour hash is right-aligned and printed with ceil(42/4) = 11 digits.
    short = np.ones((1, 42), bool)
    assert to_hex(pack_bits(short), 42) == ["3ffffffffff"]
    # 256-bit codes: word 0 carries the first 64 bits.
    big = np.zeros((1, 256), bool)
    big[0, 0] = True
    c = pack_bits(big)
    assert c[0, 0] == np.uint64(1 << 63) and not c[0, 1:].any()


def test_from_hex_errors():
    with pytest.raises(ValueError, match="not a hex"):
        from_hex(["xyz"])
    with pytest.raises(ValueError, match="does not fit"):
        from_hex(["1" * 17], words=1)


def test_reference_distance_against_python_popcount():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2**64, size=(5, 3), dtype=np.uint64)
    b = rng.integers(0, 2**64, size=(4, 3), dtype=np.uint64)
    d = hamming_reference(a, b)
    for i in range(5):
        for j in range(4):
            assert d[i, j] == sum(bin(int(x) ^ int(y)).count("1") for x, y in zip(a[i], b[j]))
    assert hamming_reference(a[:0], b).shape == (0, 4)
