"""Runs the benchmarks: `python -m imgsim_fast.bench [hashing] [hamming] [--quick] [--out FILE]`."""
from __future__ import annotations

import argparse
import os
import sys
import time

from imgsim_fast.bench.report import machine_info, print_table, write_json

SECTIONS = ("hashing", "hamming", "index", "embedding", "catalog", "search", "accuracy", "keep", "dedup", "memory", "serve", "reuse", "cluster")
# Run only when named: its default sizes (up to 10^8 codes) take hours on two cores.
ON_REQUEST = ("scale",)


def main(argv=None) -> int:
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    p = argparse.ArgumentParser(prog="python -m imgsim_fast.bench", description=__doc__)
    p.add_argument("sections", nargs="*",
                   help=f"any of {', '.join(SECTIONS + ON_REQUEST)} (default: all but {', '.join(ON_REQUEST)})")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--photos", default=os.path.join(repo, ".cache", "photos"), help="folder of real photos")
    p.add_argument("--sizes", default="1e6,1e7,1e8", help="scale: catalog sizes for the hash self-join")
    p.add_argument("--embed-sizes", default="1e6", help="scale: catalog sizes for the embedding index ('' for none)")
    p.add_argument("--out", default=None, help="JSON output (default bench/results/<time>.json)")
    p.add_argument("--audit", action="store_true",
                   help="accuracy and dedup on the audit corpus (pictures from packages nothing was tuned on)")
    p.add_argument("--repeat", type=int, default=1,
                   help="dedup: rounds of every tool in turn, the median time reported (the machine is shared)")
    p.add_argument("--full-size", action="store_true",
                   help="dedup: the corpus with its pictures at the size they come in (up to 3840 x 2400), not "
                        "at most 1024 px")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error(f"--repeat must be at least 1, got {args.repeat}")
    sections = args.sections or list(SECTIONS)
    unknown = set(sections) - set(SECTIONS + ON_REQUEST)
    if unknown:
        p.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS + ON_REQUEST)}")
    rows = []
    if "hashing" in sections:
        from imgsim_fast.bench import hashing_bench

        rows += hashing_bench.run(args.photos, os.path.join(repo, ".cache"), quick=args.quick)
    if "hamming" in sections:
        from imgsim_fast.bench import hamming_bench

        sizes = (1_000_000,) if args.quick else (1_000_000, 10_000_000)
        rows += hamming_bench.run(sizes=sizes, seed=args.seed, quick=args.quick)
    if "index" in sections:
        from imgsim_fast.bench import index_bench

        rows += index_bench.run(quick=args.quick, seed=args.seed)
    if "embedding" in sections:
        from imgsim_fast.bench import embedding_bench

        rows += embedding_bench.run(args.photos, quick=args.quick)
    if "catalog" in sections:
        from imgsim_fast.bench import catalog_bench

        rows += catalog_bench.run(quick=args.quick, seed=args.seed)
    if "search" in sections:
        from imgsim_fast.bench import search_bench

        rows += search_bench.run(quick=args.quick, seed=args.seed)
    if "accuracy" in sections:
        from imgsim_fast.bench import accuracy

        rows += accuracy.run(args.photos, os.path.join(repo, ".cache"), quick=args.quick, audit=args.audit)
    if "keep" in sections:
        from imgsim_fast.bench import keep_bench

        rows += keep_bench.run(args.photos, os.path.join(repo, ".cache"), quick=args.quick)
    if "dedup" in sections:
        from imgsim_fast.bench import dedup_bench

        rows += dedup_bench.run(args.photos, os.path.join(repo, ".cache"), quick=args.quick, audit=args.audit,
                                repeat=args.repeat, full_size=args.full_size)
    if "memory" in sections:
        from imgsim_fast.bench import memory_bench

        rows += memory_bench.run(quick=args.quick)
    if "serve" in sections:
        from imgsim_fast.bench import serve_bench

        rows += serve_bench.run(quick=args.quick, seed=args.seed)
    if "reuse" in sections:
        from imgsim_fast.bench import reuse_bench

        rows += reuse_bench.run(args.photos, os.path.join(repo, ".cache"), quick=args.quick)
    if "scale" in sections:
        from imgsim_fast.bench import scale_bench

        rows += scale_bench.run(sizes=_sizes(p, args.sizes, "--sizes"),
                                embed_sizes=_sizes(p, args.embed_sizes, "--embed-sizes"), seed=args.seed)
    if "cluster" in sections:
        from imgsim_fast.bench import cluster_bench

        rows += cluster_bench.run(quick=args.quick, seed=args.seed)
    info = machine_info(args.seed)
    print_table(rows)
    out = args.out or os.path.join(repo, "bench", "results", time.strftime("%Y%m%d-%H%M%S") + ".json")
    write_json(out, info, rows)
    print(f"\nwrote {out}")
    return 0


def _sizes(p: argparse.ArgumentParser, text: str, flag: str) -> tuple[int, ...]:
    """'1e6,1e7' -> (1000000, 10000000); a bad entry is a usage error, not a traceback."""
    try:
        sizes = tuple(int(float(s)) for s in text.split(",") if s.strip())
    except ValueError:
        p.error(f"{flag} takes comma-separated sizes like 1e6,1e7, got {text!r}")
    if any(n < 2 for n in sizes):
        p.error(f"{flag}: every size must be at least 2, got {text!r}")
    return sizes


if __name__ == "__main__":
    sys.exit(main())
