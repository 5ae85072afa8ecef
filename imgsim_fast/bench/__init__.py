"""Benchmarks: `python -m imgsim_fast.bench [section ...]`.

Each section compares imgsim_fast against the peer a user would otherwise reach for (imagehash, faiss),
in the same process run, and reports the ratio. Results print as a table and are written as JSON with
the machine, CPU, SIMD target, commit and seed. Peers come from `scripts/setup.sh --test`.
"""
