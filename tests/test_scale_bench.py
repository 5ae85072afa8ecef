"""The scale benchmark (imgsim_fast.bench.scale_bench) at a tiny size: its checks must hold, and its
synthetic data must be what it claims (biased bits, planted pairs at known distances).

A join that lost a pair, reported one twice or invented one would fail the planted recall or the
brute-force comparison; an embedding path that returned the exact answer for every compact form would
show recall 1.0 for PCA-64, which the low-dimensional projection cannot reach.
"""
from __future__ import annotations

import numpy as np

from imgsim_fast.bench import scale_bench
from imgsim_fast.indexes.hamming import hamming_distance


def test_synthetic_codes_have_biased_bits_and_planted_pairs():
    codes, orig, copy, dist = scale_bench.synthetic_codes(20_000, seed=3, max_flips=6)
    assert codes.dtype == np.uint64 and codes.shape == (20_000,)
    bits = np.unpackbits(codes.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1)
    freq = bits.mean(axis=0)
    assert freq[0] > 0.97  # the DC bit is almost always set
    assert np.abs(freq - 0.5).max() > 0.3 and np.abs(freq[1:] - 0.5).min() < 0.2  # not all fair
    assert len(orig) >= 200 and len(set(orig.tolist()) & set(copy.tolist())) == 0
    # Planted distances are exact: recompute a few with the SIMD kernel.
    for a, b, d in list(zip(orig, copy, dist))[:50]:
        assert hamming_distance(codes[a:a + 1], codes[b:b + 1])[0] == d <= 6
    assert (dist == 0).any() and (dist >= 4).any()


def test_tiny_run_finds_every_planted_pair_and_equals_brute_force():
    lines = []
    rows = scale_bench.run(sizes=(3_000, 6_000), embed_sizes=(3_000,), seed=1, log=lines.append)
    joins = [r for r in rows if r.name.startswith("self-join n=")]
    radii = {r.params["r"] for r in joins}
    assert radii == {scale_bench.default_radius(), scale_bench.SMALL_RADIUS}
    assert len(joins) == 4
    for r in joins:
        p = r.params
        assert p["planted"] >= 10, "the check needs planted pairs to mean anything"
        assert p["planted_found"] == p["planted"]
        assert p["sample_equal"] and p["sample_missing"] == 0 and p["sample_extra"] == 0
        assert p["sample_pairs"] > 0
        assert p["peak_rss_bytes"] > 0 and r.value > 0
    growth = [r for r in rows if r.name.startswith("self-join growth")]
    assert {r.params["r"] for r in growth} == radii
    assert any(r.name.endswith("projected to 1e8") for r in rows)
    recall = {r.name.split()[2]: r.value for r in rows if r.name.startswith("embedding recall")}
    assert set(recall) == {"fp16_full", "pca128_fp16", "pca64_fp16"}
    assert recall["fp16_full"] > 0.95  # fp16 rounding barely moves the top 10
    assert recall["pca64_fp16"] < 1.0  # a 64-d projection of 512-d vectors does lose neighbours
    hnsw = [r for r in rows if r.name.startswith("HNSW")]
    assert len(hnsw) == 1 and hnsw[0].params["ours_ladder"]
