"""The `imgsim` command line: thin argument handling over the Python API, no algorithms here."""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys

from . import __version__
from .dedup import DEFAULT_THRESHOLD


def _add_hash_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=("fast", "compat"), default="fast",
                   help="fast: reduced-size JPEG decoding (default); compat: prepare images exactly like "
                        "imagehash 4.3.2, giving identical codes")
    p.add_argument("--hash-size", type=int, default=8, help="8 gives 64-bit codes, 16 gives 256-bit (default 8)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def _hash(args, kinds):
    from .pipeline import hash_paths

    progress = False if args.no_progress else None
    return hash_paths(args.paths, kinds=kinds, mode=args.mode, hash_size=args.hash_size,
                      workers=args.workers, progress=progress)


def _report_failures(result) -> None:
    for f in result.failures:
        print(f"imgsim: skipped {f.path}: {f.reason}", file=sys.stderr)


def cmd_capabilities(args) -> int:
    from .capabilities import capabilities

    info = capabilities(torch_info=not args.short)
    if args.short:
        print(f"imgsim_fast {info['imgsim_fast']}, SIMD {info['simd_target']} "
              f"(available: {', '.join(info['simd_available'])}), {info['pillow']} {info['pillow_version']}, "
              f"numba {info['numba']}")
    elif args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:16} {v}")
    return 0


def cmd_hash(args) -> int:
    from .codes import to_hex
    from .hashing import code_bits

    kinds = args.kinds.split(",")
    result = _hash(args, kinds)
    _report_failures(result)
    out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    try:
        hexes = {k: to_hex(result.codes[k], code_bits(k, args.hash_size)) for k in kinds}
        if args.format == "csv":
            w = csv.writer(out)
            w.writerow(["path", *kinds])
            for i, p in enumerate(result.paths):
                w.writerow([p, *(hexes[k][i] for k in kinds)])
        else:
            doc = {
                "mode": args.mode, "hash_size": args.hash_size,
                "files": [{"path": p, **{k: hexes[k][i] for k in kinds}} for i, p in enumerate(result.paths)],
                "errors": [{"path": f.path, "kind": f.kind, "reason": f.reason} for f in result.failures],
            }
            json.dump(doc, out, indent=1)
            out.write("\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0 if result.paths or not result.failures else 1


def cmd_dedup(args) -> int:
    from .dedup import file_digest, group_duplicates

    result = _hash(args, ["phash"])
    _report_failures(result)
    digests = []
    for p in result.paths:
        try:
            digests.append(file_digest(p))
        except OSError as e:  # the file vanished between hashing and digesting: it cannot be an exact copy
            digests.append(f"unreadable:{p}:{e}")
    dd = group_duplicates(result.paths, result.codes["phash"], threshold=args.threshold, digests=digests)
    n_dup = sum(len(g.members) - 1 for g in dd.groups)
    print(f"{len(result.paths)} images hashed, {len(result.failures)} skipped; "
          f"{len(dd.groups)} duplicate groups, {n_dup} files that duplicate another "
          f"(pHash within {args.threshold} bits{', ' + args.mode + ' mode' if args.mode != 'fast' else ''})")
    for gi, g in enumerate(dd.groups, 1):
        tag = "exact copies" if g.exact else f"max distance {g.max_pair_distance}"
        print(f"\ngroup {gi}: {len(g.members)} files, {tag}")
        for i, d in zip(g.members, g.distances):
            print(f"  {d:3d}  {os.path.relpath(result.paths[i])}")
    if args.json:
        doc = dd.to_dict()
        doc["threshold"] = args.threshold
        doc["errors"] = [{"path": f.path, "kind": f.kind, "reason": f.reason} for f in result.failures]
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
        print(f"\nwrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsim", description="Find duplicate, near-duplicate and similar images.")
    parser.add_argument("--version", action="version", version=f"imgsim_fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("capabilities", help="show the SIMD target, Pillow flavour, numba, torch and CUDA")
    p.add_argument("--json", action="store_true")
    p.add_argument("--short", action="store_true", help="one line, without importing torch")
    p.set_defaults(func=cmd_capabilities)

    p = sub.add_parser("hash", help="perceptual hashes of images or folders")
    p.add_argument("paths", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--kinds", default="phash", help="comma-separated: phash,ahash,dhash,whash,colorhash")
    p.add_argument("--format", choices=("json", "csv"), default="json")
    p.add_argument("-o", "--output", help="write here instead of standard output")
    _add_hash_options(p)
    p.set_defaults(func=cmd_hash)

    p = sub.add_parser("dedup", help="report groups of duplicate and near-duplicate images (touches no file)")
    p.add_argument("paths", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--threshold", type=int, default=DEFAULT_THRESHOLD,
                   help="largest pHash Hamming distance counted as a duplicate (default %(default)s)")
    p.add_argument("--json", help="also write the groups as JSON to this file")
    _add_hash_options(p)
    p.set_defaults(func=cmd_dedup)

    from .cli_catalog import add_subcommands

    add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, OSError) as e:
        print(f"imgsim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imgsim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
