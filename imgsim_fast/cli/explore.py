"""`imgsim explore`: argument handling over explore.py and report_html.py (`imgsim search` is cli/search.py).
cli.py calls `add_subcommands(sub)`; the catalog is found as for `imgsim search`."""
from __future__ import annotations

import argparse
import os

from imgsim_fast.cli.types import non_negative_int, positive_int
from imgsim_fast.io.names import display_path

__all__ = ["add_subcommands", "cmd_explore"]


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
    """Register `explore` on an argparse subparsers object."""
    from imgsim_fast.jobs.search import HASH_METHODS

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
