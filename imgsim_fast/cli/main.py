"""The `imgsim` command line: thin argument handling over the Python API, no algorithms here."""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import shlex
import sys

from imgsim_fast import __version__
from imgsim_fast.cli.types import Parser, bits, cosine, extension_list, positive_int


def _add_hash_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=("fast", "compat"), default="fast",
                   help="fast: reduced-size JPEG decoding (default); compat: prepare images exactly like "
                        "imagehash 4.3.2, giving identical codes")
    p.add_argument("--hash-size", type=int, choices=(8, 16), default=8,
                   help="8 gives 64-bit codes, 16 gives 256-bit (default 8)")
    p.add_argument("--workers", type=positive_int, default=None, help="processes (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    add_walk_options(p)


def add_walk_options(p: argparse.ArgumentParser) -> None:
    """--extensions and -v, for every command that walks folders (hash, dedup, index)."""
    from imgsim_fast.io.loading import DEFAULT_EXTENSIONS

    p.add_argument("--extensions", type=extension_list, default=None, metavar="LIST",
                   help="file name extensions to take from folders, comma-separated (e.g. jpg,png,heic; "
                        f"default: {', '.join(sorted(e[1:] for e in DEFAULT_EXTENSIONS))})")
    p.add_argument("-v", "--verbose", action="store_true", help="list the files passed over by extension")


def report_passed_over(paths: list[str], verbose: bool) -> None:
    """One stderr line counting the files the walk left out by extension; with -v, one line per file."""
    from imgsim_fast.io.names import display_path

    if paths:
        print(f"imgsim: {counted(len(paths), 'file', 'files')} passed over: not images by extension"
              f"{'' if verbose else ' (-v lists them)'}", file=sys.stderr)
    if verbose:
        for p in paths:
            print(f"imgsim: passed over {display_path(p)}", file=sys.stderr)


def check_paths_exist(paths) -> None:
    """A path named on the command line that does not exist is bad usage (exit 2), found before any work."""
    for p in paths:
        if not os.path.exists(p):
            raise ValueError(f"{p}: no such file or folder")


def _walk_extensions(args):
    from imgsim_fast.io.loading import DEFAULT_EXTENSIONS

    return DEFAULT_EXTENSIONS if args.extensions is None else args.extensions


def _exit_status(n_done: int, n_failed: int) -> int:
    """README "Exit status": 0 done, 1 some files failed, 2 nothing readable among what was named."""
    if n_failed and not n_done:
        return 2
    return 1 if n_failed else 0


def _hash(args, kinds):
    from imgsim_fast.features.hash_files import hash_paths

    check_paths_exist(args.paths)
    progress = False if args.no_progress else None
    result = hash_paths(args.paths, kinds=kinds, mode=args.mode, hash_size=args.hash_size,
                        workers=args.workers, progress=progress, extensions=_walk_extensions(args))
    report_passed_over(result.passed_over, args.verbose)
    return result


def _report_failures(result) -> None:
    from imgsim_fast.io.names import display_path

    for f in result.failures:  # names and reasons escaped: a file name must not drive the terminal
        print(f"imgsim: skipped {display_path(f.path)}: {display_path(f.reason)}", file=sys.stderr)


def cmd_capabilities(args) -> int:
    from imgsim_fast.runtime.capabilities import capabilities

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
    from imgsim_fast.io.tables import FORMATS, check_table_target, write_table

    kinds = args.kinds.split(",")
    fmt = args.format or "json"
    if args.output:  # the format: --format, else the name's extension (.json, .csv, .parquet), else JSON
        if args.format is None and os.path.splitext(args.output)[1].lower() in FORMATS:
            fmt = FORMATS[os.path.splitext(args.output)[1].lower()]
        check_table_target(args.output, fmt)  # before hashing: an output that cannot be written fails now
    result = _hash(args, kinds)
    _report_failures(result)
    from imgsim_fast.io.names import path_text

    rows, columns = result.to_rows(), ("path", *kinds)
    doc = {"mode": args.mode, "hash_size": args.hash_size, "files": rows,
           "errors": [{"path": path_text(f.path), "kind": f.kind, "reason": path_text(f.reason)}
                      for f in result.failures]}
    if args.output:  # written whole or not at all (no half file, no temporary left behind: atomic_write.py)
        write_table(args.output, rows, columns, json_doc=doc, fmt=fmt)
    elif fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(columns)
        w.writerows([r[c] for c in columns] for r in rows)
    else:
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    return _exit_status(len(result.paths), len(result.failures))


def counted(n: int, one: str, many: str) -> str:
    """`n` and the noun that goes with it: 1 file, 2 files."""
    return f"{n} {one if n == 1 else many}"


def print_groups(res, method: str, scanned: str | None = None, relative: bool = True) -> None:
    """The dedup summary and every group, in plain words: duplicates (acted on) first, then look-alikes.
    scanned: the summary's first words (default: how many images were scanned); relative: paths shown
    relative to the working directory (a cluster's feature set may name files of another machine)."""
    from imgsim_fast.io.names import display_path

    dup = [g for g in res.groups if g.tier == "duplicate"]
    n_dup = sum(len(res.removable(g)) for g in dup)
    model = res.features.model
    print(f"{scanned or counted(len(res.paths), 'image', 'images') + ' scanned'}, "
          f"{len(res.features.failures)} skipped; {counted(len(dup), 'duplicate group', 'duplicate groups')}, "
          f"{counted(n_dup, 'file that duplicates', 'files that duplicate')} a kept one; "
          f"{counted(len(res.groups) - len(dup), 'group', 'groups')} of look-alikes (reported, never acted on) "
          f"(method {method}{', embeddings ' + model if model else ''})")
    doc = res.to_dict()
    for gi, g in enumerate(doc["groups"], 1):
        kind = "duplicates" if g["tier"] == "duplicate" else "look-alikes, not duplicates"
        print(f"\ngroup {gi}: {len(g['members'])} files, {kind}{' (exact copies)' if g['exact'] else ''}")
        for k, m in enumerate(g["members"]):
            tag = "keep" if k == 0 else ("dup " if m["removable"] else ("ref " if m["reference"] else "    "))
            why = "" if k == 0 else f"  [{m['why']}]"
            print(f"  {tag} {display_path(os.path.relpath(m['path']) if relative else m['path'])}{why}")


def keep_order(text: str) -> tuple[str, ...]:
    """--keep, checked while the arguments are parsed (a typo must not wait for a whole scan)."""
    from imgsim_fast.jobs.dedup.keep import parse_order

    try:
        return parse_order(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_dedup(args) -> int:
    from imgsim_fast.jobs.dedup import Thresholds, find_duplicates
    from imgsim_fast.jobs.dedup import actions as act
    from imgsim_fast.io.atomic_write import check_target
    from imgsim_fast.reports import dedup_review as report
    from imgsim_fast.io.names import display_path

    if args.delete and (args.move_to or args.link):
        raise ValueError("--delete cannot be combined with --move-to or --link")
    if args.link and not args.move_to:
        raise ValueError("--link needs --move-to DIR: the originals go there, so the run can be undone")
    if args.yes and not args.delete:
        # Said alone it would run a plain scan, and the user who meant to delete would think it done.
        raise ValueError("--yes only confirms --delete: add --delete to delete the duplicates")
    op = "delete" if args.delete else (f"{args.link}link" if args.link else ("move" if args.move_to else None))
    if op == "delete" and not args.yes and not sys.stdin.isatty():
        # No terminal to ask: deleting without an explicit --yes is refused before anything is scanned.
        print("imgsim: refusing to delete without confirmation: no terminal to ask on; pass --yes",
              file=sys.stderr)
        return 2
    if args.move_to:
        from imgsim_fast.jobs.dedup.keep import is_under

        if os.path.exists(args.move_to) and not os.path.isdir(args.move_to):  # found now, not after the scan
            raise ValueError(f"--move-to {args.move_to}: not a folder (the quarantine is a folder; it is made "
                             "when missing)")
        inside = [p for p in list(args.paths) + list(args.reference or []) if is_under(args.move_to, [p])]
        if inside:
            raise ValueError(f"--move-to {args.move_to} is inside the scanned folder {inside[0]}: the next scan would "
                             "find the quarantined files again; choose a folder outside it")
    if args.apply:
        return _apply_plan(args, op)
    if not args.paths:
        raise ValueError("dedup needs image files or folders (or --apply PLAN)")
    check_paths_exist(list(args.paths) + list(args.reference or []))
    named = [(flag, out) for flag, out in (("--json", args.json), ("--csv", args.csv), ("--out", args.out),
                                            ("--html", args.html)) if out]
    for (f1, o1), (f2, o2) in itertools.combinations(named, 2):
        if os.path.abspath(o1) == os.path.abspath(o2):
            raise ValueError(f"{f1} and {f2} both name {o1}: give each report a file of its own")
    for out in (args.json, args.csv, args.html):  # a report that cannot be written fails now, not after the scan
        if out:
            check_target(out)
    if args.html:
        from imgsim_fast.reports.thumbnails import check_folder, thumbs_folder

        check_folder(thumbs_folder(args.html))
    if args.out:
        from imgsim_fast.io.tables import check_table_target

        check_table_target(args.out)
    given = {k: v for k, v in (("phash", args.threshold), ("dihedral", args.flip_threshold),
                               ("embed_cos", args.min_cosine)) if v is not None}
    t = Thresholds(**given)
    res = find_duplicates(args.paths, method=args.method, thresholds=t, fixed=tuple(given), flips=not args.no_flips,
                          reference=args.reference or [], keep_order=args.keep, workers=args.workers,
                          progress=False if args.no_progress else None, extensions=args.extensions,
                          catalog=args.catalog)
    report_passed_over(res.features.passed_over, args.verbose)
    _report_failures(res.features)
    print_groups(res, args.method)
    if args.json:
        report.write_json(res, args.json)
        print(f"\nwrote {display_path(args.json)}")
    if args.csv:
        report.write_csv(res, args.csv)
        print(f"wrote {display_path(args.csv)}")
    if args.out:
        report.write_out(res, args.out)
        print(f"wrote {display_path(args.out)}")
    if args.html:
        report.write_html(res, args.html, roots=list(args.paths) + list(args.reference or []),
                          reference=args.reference or [], workers=args.workers)
        print(f"wrote {display_path(args.html)}")
    status = _exit_status(len(res.paths), len(res.features.failures))
    if op is None and any(res.removable(g) for g in res.groups if g.tier == "duplicate"):
        review = "" if args.html else "; --html FILE writes a page to review them first"
        print("\nnothing changed: --move-to DIR sets the duplicates aside (imgsim undo puts them back; with --link "
              f"hard|sym a link to the kept file takes each one's place), --delete removes them for good{review}")
    if op is None or status == 2:
        return status
    roots = list(args.paths) + list(args.reference or [])
    plan = act.plan_actions(res, op, roots, args.move_to)
    if not plan:
        print("\nnothing to do")
        return status
    skipped = _run_actions(args, op, plan, roots, {})
    return 1 if status or skipped else 0


def _run_actions(args, op: str, actions: list, roots: list[str], header: dict, skipped_before: int = 0) -> int:
    """Confirm a delete, execute `actions` under a fresh manifest (dedup.actions), print what happened.
    Returns how many were skipped (a delete that is not confirmed skips them all). skipped_before: removals
    already skipped (a plan's changed files), counted in the summary with the run's own."""
    from imgsim_fast.jobs.dedup import actions as act
    from imgsim_fast.io.names import display_path

    if op == "delete" and not args.yes:
        try:
            answer = input(f"\nDelete {len(actions)} files for good (they cannot be undone)? Type 'yes': ")
        except EOFError:  # Ctrl-D, or input closed: no
            answer = ""
        if answer.strip().lower() != "yes":
            print("imgsim: nothing deleted", file=sys.stderr)
            return len(actions)
    run = act.new_run_id()  # time stamp + random suffix: runs in the same second get their own manifests
    manifest = args.manifest or os.path.join(args.move_to or ".", f"imgsim-manifest-{run}.jsonl")
    try:
        rep = act.execute(actions, manifest, {"op": op, "argv": sys.argv[1:], **header}, roots=roots,
                          quarantine=args.move_to, run_id=run)
    except KeyboardInterrupt:
        if op != "delete" and os.path.exists(manifest):  # what was done so far is in it, each step whole
            print("imgsim: stopped part way; undo what was done with: imgsim undo "
                  f"{shlex.quote(display_path(manifest))}", file=sys.stderr)
        raise
    verb = {"move": "moved to " + display_path(args.move_to or ""), "hardlink": "replaced by hard links",
            "symlink": "replaced by symbolic links", "delete": "deleted"}[op]
    print(f"\n{counted(len(rep.done), 'file', 'files')} {verb}; {len(rep.skipped) + skipped_before} skipped; "
          f"manifest {display_path(manifest)}")
    for a, why in rep.skipped:
        print(f"imgsim: skipped {display_path(a.path)}: {display_path(why)}", file=sys.stderr)
    if op != "delete":
        print(f"undo with: imgsim undo {shlex.quote(display_path(manifest))}")  # a path with spaces pastes whole
    return len(rep.skipped)


def _apply_plan(args, op: str | None) -> int:
    """dedup --apply PLAN: carry out a review page's plan (dedup/plan.py); no scan. A plan that fails its
    checks is refused before anything is touched; changed files are skipped and reported."""
    from imgsim_fast.jobs.dedup import plan as pl
    from imgsim_fast.io.names import display_path

    if args.json or args.csv or args.out or args.html:
        raise ValueError("--apply runs a plan and scans nothing, so it writes no --json, --csv, --out or --html")
    plan = pl.load_plan(args.apply)
    if op is not None and not args.paths:
        # The plan's roots are what the plan itself says: a plan edited by hand, or come from elsewhere, could
        # name any folder. What a run may change is what the person running it names.
        shown = " ".join(shlex.quote(display_path(r)) for r in plan.roots)
        raise ValueError(f"name the folders the plan may change files in: imgsim dedup FOLDER... --apply PLAN "
                         f"(its roots: {shown})")
    pl.check_plan(plan, list(args.paths) or None)
    stale = pl.stale_entries(plan)
    for e, why in stale:
        print(f"imgsim: skipped {display_path(e.path)}: {display_path(why)}", file=sys.stderr)
    # What the plan says it covers; the folders named on the command line bound what it may change.
    shown_roots = ", ".join(display_path(r) for r in plan.roots)
    print(f"plan {display_path(args.apply)} (roots {shown_roots}): {counted(len(plan.groups), 'group', 'groups')}, "
          f"{counted(len(plan.removals), 'file', 'files')} to remove, {len(stale)} skipped")
    if op is None:
        print("nothing changed: to carry it out, name the folders it may change and an action: imgsim dedup "
              "FOLDER... --apply PLAN --move-to DIR (with --link hard|sym) or --delete")
        return 1 if stale else 0
    actions = pl.plan_to_actions(plan, op, args.move_to, {e.path for e, _ in stale})
    if not actions:
        print("nothing to do")
        return 1 if stale else 0
    skipped = _run_actions(args, op, actions, [os.path.abspath(p) for p in args.paths] + list(plan.reference),
                           {"plan": os.path.abspath(args.apply)}, skipped_before=len(stale))
    return 1 if stale or skipped else 0


def cmd_undo(args) -> int:
    from imgsim_fast.jobs.dedup.actions import undo
    from imgsim_fast.io.names import display_path

    rep = undo(args.manifest)  # a manifest that fails its checks raises ManifestRefused: one line, exit 2
    print(f"{counted(len(rep.restored), 'file', 'files')} restored, {len(rep.already)} already in place, "
          f"{len(rep.conflicts)} left alone, {len(rep.lost)} deleted for good")
    for p in rep.lost:
        print(f"imgsim: cannot restore deleted file {display_path(p)}", file=sys.stderr)
    for p, why in rep.conflicts:
        print(f"imgsim: left {display_path(p)} alone: {display_path(why)}", file=sys.stderr)
    return 1 if rep.lost or rep.conflicts else 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="imgsim", description="Find duplicate, near-duplicate and similar images.")
    parser.add_argument("--version", action="version", version=f"imgsim_fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("capabilities", help="show the SIMD target, Pillow flavour, numba, torch and CUDA")
    p.add_argument("--json", action="store_true")
    p.add_argument("--short", action="store_true", help="one line, without importing torch")
    p.set_defaults(func=cmd_capabilities)

    p = sub.add_parser("hash", help="perceptual hashes of images or folders")
    p.add_argument("paths", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--kinds", default="phash", help="comma-separated: phash,ahash,dhash,whash,colorhash")
    p.add_argument("--format", choices=("json", "csv"), default=None,
                   help="default: from the --out name (.json, .csv, .parquet), else json")
    p.add_argument("-o", "--out", "--output", dest="output",
                   help="write here instead of standard output: .json, .csv or .parquet (the [arrow] extra)")
    _add_hash_options(p)
    p.set_defaults(func=cmd_hash)

    p = sub.add_parser("dedup", help="find duplicate and near-duplicate images; report (default), move, link "
                                      "or delete them")
    p.add_argument("paths", nargs="*", help="image files and/or folders (searched recursively); with --apply, "
                                            "the folders the plan may remove files from (needed to change any)")
    add_walk_options(p)
    p.add_argument("--apply", metavar="PLAN",
                   help="carry out a plan exported from the --html review page instead of scanning (with "
                        "--move-to DIR [--link hard|sym] or --delete; alone, only checks it)")
    p.add_argument("--method", choices=("auto", "phash", "embedding", "exact"), default="auto",
                   help="auto: hashes + embeddings to confirm and to add crops (default); phash: hashes only; "
                        "embedding: EfficientNet-Lite0 cosine only; exact: byte-identical only")
    p.add_argument("--threshold", type=bits(64), default=None,
                   help="largest pHash distance (bits of 64) that matches on its own (default 10)")
    p.add_argument("--flip-threshold", type=bits(64), default=None,
                   help="largest distance to a mirrored/rotated variant that matches on its own (default 8)")
    p.add_argument("--no-flips", action="store_true", help="do not match mirrored or 90/180/270-degree copies")
    p.add_argument("--min-cosine", type=cosine, default=None,
                   help="embedding similarity that matches on its own, whatever the hashes say (default 0.77 on "
                        "the learned similarity that auto uses)")
    p.add_argument("--reference", action="append", metavar="DIR",
                   help="folder whose files are always kept and never touched (repeatable; scanned too)")
    p.add_argument("--keep", type=keep_order, default="content,quality,camera,oldest",
                   help="keep-best order, best first, from: content (undistorted, most pixels inside the "
                        "borders), quality (not noisy, earliest generation, colour), camera (EXIF), size, "
                        "oldest, newest, shortest-path (default %(default)s)")
    p.add_argument("--json", help="write the groups as JSON to this file")
    p.add_argument("--csv", help="write one row per group member to this CSV file")
    p.add_argument("--out", metavar="FILE", help="write the groups to FILE by its extension: .json (as --json), "
                                                 ".csv (as --csv) or .parquet (the CSV's rows; the [arrow] extra)")
    p.add_argument("--html", help="write a review page to this file (thumbnails in NAME_files beside it): "
                                  "change keepers, mark files, export a plan for --apply")
    p.add_argument("--move-to", metavar="DIR",
                   help="move duplicates into DIR, keeping their relative paths (undo with imgsim undo)")
    p.add_argument("--link", choices=("hard", "sym"),
                   help="replace each duplicate by a hard or symbolic link to the kept file (its name then "
                        "shows the kept file's pixels and format: a caption.jpg name may hold a PNG); the "
                        "duplicate itself goes to --move-to DIR")
    p.add_argument("--delete", action="store_true", help="delete duplicates for good (asks, or needs --yes)")
    p.add_argument("--yes", action="store_true", help="do not ask before deleting")
    p.add_argument("--manifest", help="where to write the action manifest (default: in the --move-to folder, "
                                      "or the current folder for --delete)")
    p.add_argument("--catalog", metavar="FILE",
                   help="keep the files' features in this catalog: a later run reads only new or changed files")
    p.add_argument("--workers", type=positive_int, default=None, help="decode processes (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    p.set_defaults(func=cmd_dedup)

    p = sub.add_parser("undo", help="put back what an imgsim dedup action did, from its manifest")
    p.add_argument("manifest", help="the imgsim-manifest-*.jsonl file the action wrote")
    p.set_defaults(func=cmd_undo)

    from imgsim_fast.cli.catalog import add_subcommands as add_catalog
    from imgsim_fast.cli.explore import add_subcommands as add_explore
    from imgsim_fast.cli.search import add_subcommands as add_search

    add_catalog(sub)
    add_search(sub)
    add_explore(sub)
    from imgsim_fast.cli.cluster import add_subcommands as add_cluster
    add_cluster(sub)
    from imgsim_fast.cli.serve import add_subcommands as add_serve
    add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit status (README, "Bad input"): 0 done; 1 done, but some files failed; 2 bad usage or unusable
    input (a missing path, a damaged, locked, unreadable or too new catalog, an unknown model), always
    one line on stderr; 130 interrupted; 141 output closed early (a pipe into `head`)."""
    try:  # around the imports and the parser too: a Ctrl-C in the first second printed a traceback
        return _run(argv)
    except KeyboardInterrupt:
        print("imgsim: interrupted", file=sys.stderr)
        if argv is None:  # the command itself (a caller of main() passes its argv and gets 130 back)
            _exit_now(130)
        return 130


def _run(argv: list[str] | None) -> int:
    import sqlite3

    from imgsim_fast.catalog.store import CatalogError
    from imgsim_fast.io.loading import ImageLoadError

    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None:
        # After Ctrl-C the command ends at once (_exit_now), and the resource tracker, a process of its own
        # started with this one's -W options, then removes the pools' semaphores: its job, which it would
        # also announce as a warning.
        sys.warnoptions.append("ignore::UserWarning:multiprocessing.resource_tracker")
    try:
        rc = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, in the handler below, not as a warning at exit
        return rc
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, but not with 0, since the run was cut
        # short (128 + SIGPIPE, what a shell reports for a tool the signal killed).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except CatalogError as e:
        return _fail(e)
    except sqlite3.DatabaseError as e:  # damage the open-time check could not see (a page read later)
        return _fail(f"the catalog database is damaged or unreadable (sqlite: {e}); run "
                     "`imgsim index --repair DIR`")
    except (ValueError, OSError, ImageLoadError) as e:  # ImageLoadError: a query image that cannot be read
        return _fail(e)
    except RuntimeError as e:
        from imgsim_fast.features.embedding.lazy import ModelNotAvailableError  # torch-free

        if isinstance(e, ModelNotAvailableError):
            return _fail(e)
        raise


def _exit_now(rc: int) -> None:
    """Exit at once, without the interpreter's exit handlers: after Ctrl-C they join the pools' workers, and
    one whose pool the interrupt left open (a generator cut short) is never told to stop, so the command
    hung after "interrupted". Nothing is lost: a catalog write is committed or rolled back (SQLite), an
    output file is written whole or not at all (io/atomic_write), and the workers end with this process
    (runtime.pool._die_with)."""
    import multiprocessing.process
    import shutil

    # The one clean-up skipped that leaves something behind: multiprocessing's temporary folder (the
    # forkserver's socket), which its exit handler would have removed.
    tempdir = multiprocessing.process.current_process()._config.get("tempdir")
    if tempdir:
        shutil.rmtree(tempdir, ignore_errors=True)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(rc)


def _fail(e) -> int:
    """A user error: one line on stderr (messages from libraries can hold newlines), exit status 2. The
    message can quote a file name, so its control characters are escaped as names are (names.display_path)."""
    from imgsim_fast.io.names import display_path

    if isinstance(e, OSError) and e.filename is not None and e.strerror:  # not "[Errno 2] ...: '/x'"
        e = f"{e.filename}: {e.strerror[0].lower()}{e.strerror[1:]}"
    print("imgsim: error: " + display_path(" ".join(str(e).split())), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
