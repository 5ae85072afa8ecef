"""`imgsim search`, and `imgsim query`, its alias from before issue 15: argument handling over jobs/search.search.

One vocabulary: example images (or a folder or .txt list of them: a batch), `--text` (CLIP), `--method` (a
hash kind, cnn or clip), the metadata filters of cli/catalog.add_filter_options, and with neither example
nor text the files the filters pass. `query` maps its flags onto the same path (--like -> the example,
--kind -> --method, --text -> the description filter) and keeps the JSON shape scripts read from it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from imgsim_fast.cli.types import positive_int
from imgsim_fast.io.names import display_path

__all__ = ["add_subcommands", "cmd_search", "cmd_query"]


def _is_batch(example: str) -> bool:
    return os.path.isdir(example) or example.lower().endswith((".txt", ".lst", ".list"))


def _copies_note(n: int) -> str:
    return f"  +{n} identical cop{'y' if n == 1 else 'ies'}" if n else ""


def _print_text(results, batch: bool) -> None:
    """Names through display_path: a newline or an escape sequence in a file name must not forge a result
    line or reach the terminal (README, "File names"). The path ends each line; identical copies follow it."""
    for r in results:
        if batch:
            print(f"# {display_path(r.query)}" + (f"  ERROR: {display_path(r.error)}" if r.error else ""))
        for h in r.hits:
            shown = display_path(h.path) + _copies_note(len(h.copies))
            print(f"{h.rank:4d}  {h.describe():<26}  {shown}" if r.method != "filter" else shown)


def _legacy_json(cat, result) -> list[dict]:
    """What `imgsim query --json` printed before it became an alias: file rows, or path and distance."""
    out = []
    for h in result.hits:
        if result.method == "filter":
            rec = cat.get(h.path)
            row = {"path": h.path, "width": rec.width, "height": rec.height, "taken": rec.taken,
                   "rating": rec.rating, "label": rec.label, "tags": cat.tags(rec.id)}
        else:
            row = {"path": h.path, "distance": h.distance if h.distance is not None else h.score}
        if h.copies:
            row["copies"] = h.copies
        out.append(row)
    return out


def cmd_search(args) -> int:
    from imgsim_fast.cli.catalog import _build_filter, open_catalog
    from imgsim_fast.io.tables import check_table_target
    from imgsim_fast.jobs.search import SearchResults, query_files, search, write_results

    examples = list(args.examples or [])
    if examples and args.text is not None:
        raise ValueError("give example images (or a folder / list file of them) or --text, not both")
    if args.out:
        check_table_target(args.out)  # before the search: a batch can take minutes
    if args.sheet and not examples and args.text is None:
        raise ValueError("--sheet draws the hits of an example or a --text query; give one")
    batch = len(examples) > 1 or any(_is_batch(e) for e in examples)
    where = _build_filter(argparse.Namespace(**dict(vars(args), text=args.contains)))  # --contains: description
    common = dict(method=args.method, model=args.model, k=args.top, where=where, collapse=not args.no_collapse)
    with open_catalog(args.catalog, near=examples) as cat:
        if args.text is not None:
            results = SearchResults([search(cat, text=args.text, **common)])
        elif batch:
            qs = [q for e in examples for q in query_files(e)]
            if not qs:
                raise ValueError(f"{examples[0]}: no query images found")
            results = search(cat, qs, exclude_self=args.exclude_self, workers=args.workers,
                             progress=False if args.no_progress else None, **common)
        elif examples:
            results = SearchResults([search(cat, examples[0], exclude_self=args.exclude_self, workers=args.workers,
                                            **common)])
        else:  # neither example nor text: the files the filters pass
            results = SearchResults([search(cat, **common)])
        legacy = _legacy_json(cat, results[0]) if getattr(args, "legacy_json", False) and args.json else None
    if args.sheet:
        from imgsim_fast.reports.sheet import contact_sheet

        if not batch:
            contact_sheet(results[0].query, results[0].hits, args.sheet)
        else:  # batch: a folder of sheets, one per query
            os.makedirs(args.sheet, exist_ok=True)
            for i, r in enumerate(results):
                stem = os.path.splitext(os.path.basename(r.query))[0]
                contact_sheet(r.query, r.hits, os.path.join(args.sheet, f"{i:05d}-{stem}.png"))
    if args.out:
        write_results(results, args.out)
    from imgsim_fast.io.names import display_path

    for path in (args.sheet, args.out):  # said beside the results (on stderr when stdout holds JSON)
        if path:
            print(f"wrote {display_path(path)}", file=sys.stderr if args.json else sys.stdout)
    if legacy is not None:
        json.dump(legacy, sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif args.json:
        json.dump([r.to_dict() for r in results] if batch else results[0].to_dict(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif not args.out:
        _print_text(results, batch)
    failed = sum(1 for r in results if r.error)
    if failed:
        print(f"{failed} of {len(results)} queries could not be read", file=sys.stderr)
    return 0 if failed < len(results) else 1


def cmd_query(args) -> int:
    """The alias: query's flags in search's terms, then search's own path."""
    ns = argparse.Namespace(**vars(args))
    ns.examples = [args.like] if args.like else []
    ns.method, ns.contains, ns.text = args.kind, args.text, None
    ns.model = ns.sheet = ns.out = ns.workers = None
    ns.exclude_self, ns.legacy_json, ns.no_progress = False, True, True  # one example: nothing to show
    return cmd_search(ns)


def add_subcommands(sub) -> None:
    """Register `search` and its alias `query` on an argparse subparsers object."""
    from imgsim_fast.cli.catalog import add_filter_options
    from imgsim_fast.jobs.search import EMBED_METHODS, HASH_METHODS

    p = sub.add_parser("search", help="similar images by example image(s) or text, or the files matching filters")
    p.add_argument("examples", nargs="*", metavar="EXAMPLE",
                   help="example image (need not be indexed); several, a folder or a .txt list run a batch; "
                        "none: list the files matching the filters")
    p.add_argument("--text", help="text query (CLIP): 'a red car'")
    p.add_argument("--method", choices=HASH_METHODS + EMBED_METHODS, default=None,
                   help="phash etc.: Hamming distance of hashes; cnn: EfficientNet-Lite0 embeddings; "
                        "clip: CLIP embeddings (default phash; clip for --text)")
    p.add_argument("--model", help="embedding model the catalog was indexed with (CLIP folder or hub name)")
    p.add_argument("--catalog", help="catalog file (default: the catalog of this folder or the nearest above with "
                                     "one, else of the examples' folders)")
    p.add_argument("--top", type=positive_int, default=20, help="results per query (default 20)")
    p.add_argument("--exclude-self", action="store_true", help="leave the query file itself out of its results")
    add_filter_options(p, text_flag="--contains")
    p.add_argument("--no-collapse", action="store_true",
                   help="list byte-identical files one by one (default: one hit, '+N identical copies')")
    p.add_argument("--sheet", metavar="PNG", help="contact sheet of the results (batch: a folder of sheets)")
    p.add_argument("--out", metavar="FILE", help="write results to FILE: .json, .csv or .parquet (the [arrow] extra)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--workers", type=positive_int, default=None, help="query decoding processes (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar (batches show one)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("query", help="alias of search with its older flags: filters, --like IMAGE, --kind HASH")
    p.add_argument("--catalog", help="catalog file (default: the catalog of this folder or the nearest above with "
                                     "one)")
    add_filter_options(p)
    p.add_argument("--like", metavar="IMAGE", help="rank the matches by similarity to this image (search's EXAMPLE)")
    p.add_argument("--kind", default="phash", help="what --like ranks by: a hash kind, cnn or clip (search's --method)")
    p.add_argument("--top", type=positive_int, default=20, help="at most this many results (default 20)")
    p.add_argument("--no-collapse", action="store_true", help="list byte-identical files one by one")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_query)
