"""`imgsim cluster index` and `imgsim cluster dedup`: argument handling over imgsim_fast.cluster (Ray).

main.py calls `add_subcommands(sub)`. Reports are those of `imgsim dedup` (reports/dedup_review.py), and
`--plan` writes a plan `imgsim dedup FOLDER... --apply PLAN` carries out.
"""
from __future__ import annotations

import json
import os
import shlex
import sys

from imgsim_fast.cli.types import bits, positive_int
from imgsim_fast.io.names import display_path

__all__ = ["add_subcommands"]


def _ray_options(p) -> None:
    p.add_argument("--address", default=None,
                   help="a running Ray cluster (ray://HOST:10001, or 'auto' for one started with `ray start` here); "
                        "default: RAY_ADDRESS, else a local Ray on this machine")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="CPUs of the local Ray (default: all cores); ignored with --address")


def cmd_cluster_index(args) -> int:
    from imgsim_fast.cli.main import report_passed_over
    from imgsim_fast.cluster.extract import index

    s = index(args.sources, args.out, embed=args.embed or False, shard_size=args.shard_size,
              extensions=args.extensions, address=args.address, num_cpus=args.workers)
    report_passed_over(s.passed_over, args.verbose)
    if args.json:
        print(json.dumps(s.to_dict(), indent=1))
    else:
        print(f"{s.files} files in {s.shards} shards: {s.written} written, {s.skipped} already there; "
              f"{s.failed} unreadable files ({s.seconds:.1f} s) -> {display_path(args.out)}")
    return 1 if s.failed else 0


def cmd_cluster_dedup(args) -> int:
    from imgsim_fast.cluster.dedup import cluster_dedup, write_plan
    from imgsim_fast.cluster.featureset import read_meta
    from imgsim_fast.cluster.sources import local_roots
    from imgsim_fast.io.atomic_write import check_target
    from imgsim_fast.jobs.dedup import Thresholds
    from imgsim_fast.reports import dedup_review as report

    for out in (args.json, args.csv, args.plan):
        if out:
            check_target(out)
    meta = read_meta(args.features)
    if meta is None:
        raise ValueError(f"{args.features} is not an imgsim feature set (run `imgsim cluster index` first)")
    roots = local_roots(meta["sources"])
    if args.plan and roots is None:
        raise ValueError("--plan needs a feature set of local folders: a plan names files `imgsim dedup --apply` "
                         "can reach")
    given = {k: v for k, v in (("phash", args.threshold), ("dihedral", args.flip_threshold),
                               ("similar_phash", args.similar_threshold)) if v is not None}
    res = cluster_dedup(args.features, args.method, Thresholds(**given), flips=not args.no_flips,
                        reference=args.reference or [], keep_order=args.keep, fixed=tuple(given),
                        address=args.address, num_cpus=args.workers, partitions=args.partitions)
    from imgsim_fast.cli.main import print_groups

    # The count is of the whole feature set, not of the files read back.
    print_groups(res, args.method, f"{res.files_scanned} images in the feature set", relative=False)
    st = res.join_stats
    print(f"\njoin: {st.files} files, {st.records} records shuffled ({st.shuffle_bytes / max(1, st.files):.0f} "
          f"bytes a file), {st.pairs} candidate pairs, {st.seconds['join']:.1f} s")
    if args.json:
        report.write_json(res, args.json)
        print(f"wrote {display_path(args.json)}")
    if args.csv:
        report.write_csv(res, args.csv)
        print(f"wrote {display_path(args.csv)}")
    if args.plan:
        write_plan(res, args.plan, roots, args.reference or [])
        folders = " ".join(shlex.quote(display_path(r)) for r in roots)
        print(f"wrote {display_path(args.plan)} (carry it out with imgsim dedup {folders} --apply "
              f"{shlex.quote(display_path(args.plan))} --move-to DIR)")
    return 1 if res.features.failures else 0


def add_subcommands(sub) -> None:
    from imgsim_fast.cli.main import add_walk_options, keep_order

    p = sub.add_parser("cluster", help="extraction and deduplication on a Ray cluster (pip install "
                                       "'imgsim_fast[cluster]')")
    csub = p.add_subparsers(dest="cluster_command", required=True)

    q = csub.add_parser("index", help="write dedup's features of SOURCES as Parquet shards, on Ray")
    q.add_argument("sources", nargs="+", help="folders and files, @LIST (one path or URL a line), or fsspec URLs "
                                              "(s3://, gs://, file://; s3fs or gcsfs when installed)")
    q.add_argument("--out", required=True, metavar="FEATURES", help="the feature set folder (a re-run with the "
                                                                    "same request completes it)")
    q.add_argument("--embed", nargs="?", const=True, default=None, metavar="MODEL",
                   help="embed too (default model efficientnet-lite0; on GPU actors when the cluster has GPUs)")
    q.add_argument("--shard-size", type=positive_int, default=256, help="files a shard (default %(default)s)")
    q.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_walk_options(q)
    _ray_options(q)
    q.set_defaults(func=cmd_cluster_index)

    q = csub.add_parser("dedup", help="duplicate groups of a feature set: the distributed pigeonhole join, then "
                                      "imgsim dedup's pair test and grouping")
    q.add_argument("features", metavar="FEATURES", help="a folder written by imgsim cluster index")
    q.add_argument("--method", choices=("phash", "exact", "auto", "embedding"), default="phash",
                   help="phash: hashes only (default); exact: byte-identical only; auto, embedding: need --embed "
                        "features, and find embedding candidates on the driver")
    q.add_argument("--threshold", type=bits(64), default=None, help="as imgsim dedup (default 10)")
    q.add_argument("--flip-threshold", type=bits(64), default=None, help="as imgsim dedup (default 8)")
    q.add_argument("--similar-threshold", type=bits(64), default=None,
                   help="pHash distance of the look-alike tier (default 18, as imgsim dedup). The join's radius is "
                        "the larger of this and --threshold, and its cost grows steeply with it: at 10^7 files "
                        "and more, pass --similar-threshold 10 (look-alikes then come from the hashes' own "
                        "radius only)")
    q.add_argument("--no-flips", action="store_true", help="do not match mirrored or rotated copies")
    q.add_argument("--reference", action="append", metavar="DIR", help="folder whose files are always kept")
    q.add_argument("--keep", type=keep_order, default="content,quality,camera,oldest", help="as imgsim dedup")
    q.add_argument("--partitions", type=positive_int, default=None,
                   help="reduce tasks of the join (default: twice the cluster's CPUs)")
    q.add_argument("--json", help="write the groups as JSON (as imgsim dedup --json)")
    q.add_argument("--csv", help="write one row per group member (as imgsim dedup --csv)")
    q.add_argument("--plan", help="write a plan of every duplicate group for imgsim dedup --apply")
    _ray_options(q)
    q.set_defaults(func=cmd_cluster_dedup)
