"""`imgsim explore`: argument handling over jobs/explore.py and reports/explore_html.py (`imgsim search` is
cli/search.py). cli/main.py calls `add_subcommands(sub)`; the catalog is that of DIR (default: the current
folder) or of its nearest parent that has one, as for `imgsim search`."""
from __future__ import annotations

import argparse
import os

from imgsim_fast.cli.types import non_negative_int, positive_int
from imgsim_fast.io.names import display_path

__all__ = ["add_subcommands", "cmd_explore", "default_report_path"]


def _open_catalog(path, folder):
    from imgsim_fast.catalog.store import Catalog
    from imgsim_fast.cli.catalog import find_catalog, note_legacy_catalog

    if path:
        return Catalog(path)
    if folder is not None and not os.path.isdir(folder):
        raise ValueError(f"{folder}: no such folder")
    path = find_catalog(folder or ".")
    if path is None:
        where = f"for {folder} or above" if folder else "here or above"
        raise ValueError(f"no catalog found {where}; pass --catalog or run `imgsim index DIR` first")
    note_legacy_catalog(path)
    return Catalog(path)


def default_report_path(catalog_path: str) -> str:
    """explore.html beside the catalog: in the data folder, outside the photos (issue 15). An older
    version's catalog inside the photo folder gets its report in the data folder all the same."""
    from imgsim_fast.catalog.store import CATALOG_DIRNAME
    from imgsim_fast.io.data_dirs import collection_dir
    from imgsim_fast.reports.explore_html import REPORT_NAME

    parent = os.path.dirname(os.path.abspath(catalog_path))
    if os.path.basename(parent) == CATALOG_DIRNAME:
        return os.path.join(collection_dir(os.path.dirname(parent)), REPORT_NAME)
    return os.path.join(parent, REPORT_NAME)


def _filter(args):
    """The metadata filter, built as `imgsim query` builds it; `--contains` here is query's `--text`
    (search's --text is the CLIP text query)."""
    from imgsim_fast.cli.catalog import _build_filter

    return _build_filter(argparse.Namespace(**dict(vars(args), text=args.contains)))


def cmd_explore(args) -> int:
    from imgsim_fast.jobs.explore import explore
    from imgsim_fast.reports.explore_html import write_report

    from imgsim_fast.io.atomic_write import check_target

    where = _filter(args)
    progress = False if args.no_progress else None
    # --out names the HTML report, or with .json, .csv or .parquet a table of one row per file (the report
    # then goes to its default place).
    table = args.out if args.out and not args.out.lower().endswith((".html", ".htm")) else None
    if table:
        from imgsim_fast.io.tables import check_table_target

        check_table_target(table)
    for out in (None if table else args.out, args.json_out):  # unwritable outputs fail now, not after the work
        if out and os.path.isdir(os.path.dirname(os.path.abspath(out))):  # a missing folder is made later
            check_target(out)
    if args.out and not table and not args.json_out:
        from imgsim_fast.reports.explore_html import check_data_target, data_path

        check_data_target(data_path(args.out))
    with _open_catalog(args.catalog, args.dir) as cat:
        exp = explore(cat, k=args.k, features=args.features, model=args.model, where=where,
                      n_outliers=args.outliers, seed=args.seed, min_cluster_size=args.min_cluster_size,
                      map_method=args.map, progress=progress)
        out = (None if table else args.out) or default_report_path(cat.path)
    html_path, json_path = write_report(exp, out, json_path=args.json_out, workers=args.workers,
                                        progress=progress)
    sizes = f" (sizes {', '.join(str(c.size) for c in exp.clusters)})" if exp.clusters else ""
    print(f"{len(exp.paths)} images, features {exp.features}: {exp.verdict}{sizes}")
    print(f"report: {display_path(html_path)}\ndata:   {display_path(json_path)}")
    if table:
        from imgsim_fast.io.tables import write_table
        from imgsim_fast.jobs.explore import ROW_COLUMNS

        write_table(table, exp.to_rows(), ROW_COLUMNS)
        print(f"table:  {display_path(table)}")
    return 0


def _add_filters(p) -> None:
    """The metadata filters of `imgsim query` (its --text is --contains here)."""
    from imgsim_fast.cli.catalog import add_filter_options

    add_filter_options(p, text_flag="--contains")


def add_subcommands(sub) -> None:
    """Register `explore` on an argparse subparsers object."""
    from imgsim_fast.jobs.search import HASH_METHODS

    from imgsim_fast.jobs.explore_clusters import MIN_CLUSTER_SIZE
    from imgsim_fast.jobs.explore_map import MAP_METHODS

    p = sub.add_parser("explore", help="clusters, outliers, a map and statistics of a catalog, as an HTML report")
    p.add_argument("dir", nargs="?", metavar="DIR",
                   help="an indexed folder (default: the current one; its catalog, or that of a parent)")
    p.add_argument("--catalog", help="catalog file (default: the catalog of DIR or of its nearest indexed parent)")
    p.add_argument("--k", type=positive_int, default=None,
                   help="force k clusters (k-means: every file in one); default: the density clusters that are "
                        "there, or 'no clear cluster structure'")
    p.add_argument("--min-cluster-size", type=positive_int, default=MIN_CLUSTER_SIZE,
                   help=f"smallest group called a cluster (default {MIN_CLUSTER_SIZE})")
    p.add_argument("--map", choices=MAP_METHODS, default="umap",
                   help="2-D map: umap (neighbours stay near, default) or pca (faster, linear)")
    p.add_argument("--features", default="auto", choices=("auto", "embedding") + HASH_METHODS,
                   help="what to cluster: auto (embeddings if indexed, else hashes)")
    p.add_argument("--model", help="embedding model to use (default: EfficientNet-Lite0 if indexed)")
    p.add_argument("--outliers", type=non_negative_int, default=12, help="outliers to list (default 12)")
    p.add_argument("--seed", type=int, default=0)
    _add_filters(p)
    p.add_argument("--out", metavar="FILE",
                   help="report file (.html; thumbnails in NAME_files beside it; default: explore.html beside the "
                        "catalog, in the data folder), or a table of one row per file: .json, .csv or .parquet")
    p.add_argument("--json-out", metavar="JSON", help="data file (default: the report's path with .json)")
    p.add_argument("--workers", type=positive_int, default=None, help="thumbnail processes (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    p.set_defaults(func=cmd_explore)
