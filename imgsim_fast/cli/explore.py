"""`imgsim search` and `imgsim explore`: argument handling over search.py, sheet.py, explore.py and
report_html.py. cli.py calls `add_subcommands(sub)`; the catalog is found as for `imgsim query`."""
from __future__ import annotations

import argparse
import json
import os
import sys

from imgsim_fast.cli.types import non_negative_int, positive_int
from imgsim_fast.io.names import display_path

__all__ = ["add_subcommands", "cmd_search", "cmd_explore"]


def _open_catalog(path):
    from imgsim_fast.catalog.store import Catalog
    from imgsim_fast.cli.catalog import find_catalog

    path = path or find_catalog()
    if path is None:
        raise ValueError("no catalog found here or above; pass --catalog or run `imgsim index DIR` first")
    return Catalog(path)


def _filter(args):
    """The metadata filter, built as `imgsim query` builds it; `--contains` here is query's `--text`
    (search's --text is the CLIP text query)."""
    from imgsim_fast.cli.catalog import _build_filter

    return _build_filter(argparse.Namespace(**dict(vars(args), text=args.contains)))


def _is_batch(query: str) -> bool:
    return os.path.isdir(query) or query.lower().endswith((".txt", ".lst", ".list"))


def cmd_search(args) -> int:
    from imgsim_fast.io.atomic_write import check_target
    from imgsim_fast.jobs.search import query_files, search, search_batch, search_text, write_results

    if args.query is None and args.text is None:
        raise ValueError("search needs a query: an image, a folder or list file of images, or --text 'words'")
    if args.query is not None and args.text is not None:
        raise ValueError("give a query image (or folder / list file) or --text, not both")
    if args.out:
        check_target(args.out)  # before the search: a batch can take minutes
    where = _filter(args)
    with _open_catalog(args.catalog) as cat:
        if args.text is not None:
            results = search_text(cat, [args.text], method="clip", model=args.model, k=args.top, where=where)
        elif _is_batch(args.query):
            qs = query_files(args.query)
            if not qs:
                raise ValueError(f"{args.query}: no query images found")
            results = search_batch(cat, qs, method=args.method, model=args.model, k=args.top, where=where,
                                   exclude_self=args.exclude_self, workers=args.workers)
        else:
            results = [search(cat, args.query, method=args.method, model=args.model, k=args.top, where=where,
                              exclude_self=args.exclude_self, workers=args.workers)]
    if args.sheet:
        from imgsim_fast.reports.sheet import contact_sheet

        if len(results) == 1:
            contact_sheet(results[0].query, results[0].hits, args.sheet)
        else:  # batch: a folder of sheets, one per query
            os.makedirs(args.sheet, exist_ok=True)
            for i, r in enumerate(results):
                stem = os.path.splitext(os.path.basename(r.query))[0]
                contact_sheet(r.query, r.hits, os.path.join(args.sheet, f"{i:05d}-{stem}.png"))
    if args.out:
        write_results(results, args.out)
    if args.json:
        json.dump([r.to_dict() for r in results] if len(results) > 1 else results[0].to_dict(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif not args.out:
        # Names through display_path: a newline or an escape sequence in a file name must not forge a
        # result line or reach the terminal (README, "File names").
        for r in results:
            if len(results) > 1:
                print(f"# {display_path(r.query)}" + (f"  ERROR: {display_path(r.error)}" if r.error else ""))
            for h in r.hits:
                d = f"  d={h.distance}" if h.distance is not None else ""
                print(f"{h.rank:4d}  {h.score:.4f}{d}  {display_path(h.path)}")
    failed = sum(1 for r in results if r.error)
    if failed:
        print(f"{failed} of {len(results)} queries could not be read", file=sys.stderr)
    return 0 if failed < len(results) else 1


def cmd_explore(args) -> int:
    from imgsim_fast.jobs.explore import explore
    from imgsim_fast.reports.explore_html import write_report

    where = _filter(args)
    with _open_catalog(args.catalog) as cat:
        exp = explore(cat, k=args.k, features=args.features, model=args.model, where=where,
                      n_outliers=args.outliers, seed=args.seed)
        out = args.out or os.path.join(os.path.dirname(cat.path), "report.html")
    html_path, json_path = write_report(exp, out, json_path=args.json_out, workers=args.workers)
    sizes = ", ".join(str(c.size) for c in exp.clusters)
    print(f"{len(exp.paths)} images, {exp.k} clusters ({sizes}), features {exp.features}")
    print(f"report: {display_path(html_path)}\ndata:   {display_path(json_path)}")
    return 0


def _add_filters(p) -> None:
    """The metadata filters of `imgsim query` (its --text is --contains here)."""
    from imgsim_fast.cli.catalog import add_filter_options

    add_filter_options(p, text_flag="--contains")


def add_subcommands(sub) -> None:
    """Register `search` and `explore` on an argparse subparsers object."""
    from imgsim_fast.jobs.search import EMBED_METHODS, HASH_METHODS

    p = sub.add_parser("search", help="similar images: by example image (or a folder / list of them) or by text")
    p.add_argument("query", nargs="?", metavar="QUERY",
                   help="query image (need not be indexed); a folder or a .txt list runs a batch")
    p.add_argument("--text", help="text query (CLIP): 'a red car'")
    p.add_argument("--method", choices=HASH_METHODS + EMBED_METHODS, default="phash",
                   help="phash etc.: Hamming distance of hashes; cnn: EfficientNet-Lite0 embeddings; "
                        "clip: CLIP embeddings (default phash)")
    p.add_argument("--model", help="embedding model the catalog was indexed with (CLIP folder or hub name)")
    p.add_argument("--catalog", help="catalog file (default: nearest .imgsim/catalog.sqlite upwards)")
    p.add_argument("--top", type=positive_int, default=20, help="results per query (default 20)")
    p.add_argument("--exclude-self", action="store_true", help="leave the query file itself out of its results")
    _add_filters(p)
    p.add_argument("--sheet", metavar="PNG", help="contact sheet of the results (batch: a folder of sheets)")
    p.add_argument("--out", metavar="FILE", help="write results to FILE (.json; .parquet if pyarrow is installed)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--workers", type=positive_int, default=None, help="query decoding processes (default: all cores)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("explore", help="clusters, outliers, a map and statistics of a catalog, as an HTML report")
    p.add_argument("--catalog", help="catalog file (default: nearest .imgsim/catalog.sqlite upwards)")
    p.add_argument("--k", type=positive_int, default=None, help="number of clusters (default: chosen by silhouette)")
    p.add_argument("--features", default="auto", choices=("auto", "embedding") + HASH_METHODS,
                   help="what to cluster: auto (embeddings if indexed, else hashes)")
    p.add_argument("--model", help="embedding model to use (default: EfficientNet-Lite0 if indexed)")
    p.add_argument("--outliers", type=non_negative_int, default=12, help="outliers to list (default 12)")
    p.add_argument("--seed", type=int, default=0)
    _add_filters(p)
    p.add_argument("--out", metavar="HTML", help="report file (default: report.html beside the catalog)")
    p.add_argument("--json-out", metavar="JSON", help="data file (default: the report's path with .json)")
    p.add_argument("--workers", type=positive_int, default=None, help="thumbnail processes (default: all cores)")
    p.set_defaults(func=cmd_explore)
