"""`imgsim index`, and what the commands reading a catalog share: finding and opening it, and the metadata
filter options (search, its alias query, explore).

cli/main.py calls `add_subcommands(sub)`. The catalog of a folder defaults to the XDG data folder
(store.default_catalog_path: `~/.local/share/imgsim/catalogs/<name>/catalog.sqlite`), or to the
`<DIR>/.imgsim/catalog.sqlite` an older version made, while that exists; readers given no --catalog take
the catalog of the current folder or of the nearest parent folder that has one.
"""
from __future__ import annotations

import json
import os
import sys

from imgsim_fast.catalog.store import CATALOG_DIRNAME, default_catalog_path
from imgsim_fast.cli.types import iso_date, non_negative_int, positive_int, rating_filter
from imgsim_fast.io.names import display_path

__all__ = ["add_subcommands", "add_filter_options", "cmd_index", "find_catalog", "open_catalog"]


def _csv_list(values) -> list[str]:
    out = []
    for v in values or []:
        out += [t.strip() for t in v.split(",") if t.strip()]
    return out


def find_catalog(start: str = ".") -> str | None:
    """The catalog of `start` or of its nearest parent folder that has one (default_catalog_path: in the
    XDG data folder, or inside the folder where an older version put it)."""
    d = os.path.abspath(start)
    while True:
        p = default_catalog_path(d)
        if os.path.exists(p):
            return p
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


_NOTED: set[str] = set()


def note_legacy_catalog(path: str) -> None:
    """Say once per run that an in-folder catalog of an older version is in use (new ones go to the XDG
    data folder), so a user knows where it is and how to move it."""
    path = os.path.abspath(path)
    if os.path.basename(os.path.dirname(path)) != CATALOG_DIRNAME or path in _NOTED:
        return
    _NOTED.add(path)
    print(f"imgsim: using the catalog inside the folder, made by an older version: {display_path(path)} "
          "(new catalogs go to the XDG data folder; pass --catalog to choose)", file=sys.stderr)


def open_catalog(path, near=()):
    """The catalog at `path`, or else the one of this folder or the nearest above it with one, or else of the
    folders of `near` (example images or folders: `imgsim search photos/a.jpg` run beside photos/ finds the
    catalog `imgsim index photos/` made), opened for reading."""
    from imgsim_fast.catalog.store import Catalog

    if not path:
        # A missing example's folder too: a file indexed and deleted since is found by its stored features.
        starts = ["."] + [p if os.path.isdir(p) else os.path.dirname(os.path.abspath(p))
                          for p in near if not p.startswith("@")
                          and (os.path.exists(p) or os.path.isdir(os.path.dirname(os.path.abspath(p))))]
        path = next((c for c in map(find_catalog, starts) if c is not None), None)
        missing = [p for p in near if not os.path.exists(p)]
        if path is None and missing:  # a typo in the example's name, more likely than a missing catalog
            raise ValueError(f"{missing[0]}: no such file or folder")
        if path is None:
            raise ValueError("no catalog found here or above, nor beside the examples; pass --catalog or run "
                             "`imgsim index DIR` first")
        note_legacy_catalog(path)
    return Catalog(path)


def cmd_index(args) -> int:
    from imgsim_fast.cli.main import report_passed_over
    from imgsim_fast.catalog.indexer import index
    from imgsim_fast.io.loading import DEFAULT_EXTENSIONS

    catalog = args.catalog
    if catalog is None and args.dirs and os.path.exists(args.dirs[0]):  # a missing DIR: index() says so
        first = args.dirs[0] if os.path.isdir(args.dirs[0]) else os.path.dirname(os.path.abspath(args.dirs[0]))
        catalog = default_catalog_path(first)
        note_legacy_catalog(catalog)
    s = index(args.dirs, catalog, kinds=_csv_list([args.kinds]), mode=args.mode, hash_size=args.hash_size,
              embed_model=args.embed, sidecar_map=args.sidecar_map, workers=args.workers,
              batch_size=args.batch_size, progress=False if args.no_progress else None, repair=args.repair,
              extensions=args.extensions or DEFAULT_EXTENSIONS)
    report_passed_over(s.passed_over, args.verbose)
    for path, reason in s.failures:
        print(f"imgsim: skipped {display_path(path)}: {display_path(reason)}", file=sys.stderr)
    for note in s.repair_notes:
        print(f"imgsim: repaired: {display_path(note)}", file=sys.stderr)  # a note can name a path
    if args.repair and not s.repair_notes:
        print("imgsim: nothing damaged", file=sys.stderr)
    if args.json:
        from imgsim_fast.io.names import path_text

        doc = s.to_dict()
        doc["failures"] = [(path_text(p), reason) for p, reason in s.failures]  # text, as every JSON names files
        print(json.dumps(doc, indent=1))
    else:
        print(f"{s.seen} files: {s.unchanged} unchanged, {s.added} added, {s.modified} modified, "
              f"{s.touched} touched, {s.renamed} renamed, {s.copied} copies, {s.removed} removed, "
              f"{s.backfilled} completed; {s.decoded} decoded, {s.embedded} embedded, "
              f"{s.failed} errors, {s.walk_errors} walk errors ({s.seconds.get('total', 0):.2f} s)")
        if catalog is not None:  # where it went (by default in the XDG data folder, not beside the photos)
            print(f"catalog {display_path(catalog)}")
    return 1 if s.failed else 0  # README "Bad input": 1 = some files could not be indexed this run


def _build_filter(args):
    from imgsim_fast.catalog.query import And, AnyTag, Field, Range, Tag, Text

    parts = [Tag(t) for t in _csv_list(args.tag)]
    if args.any_tag:
        parts.append(AnyTag(tuple(_csv_list(args.any_tag))))
    parts += [Text(t) for t in args.text or []]
    if args.after:
        parts.append(Field("taken", ">=", args.after))
    if args.before:
        parts.append(Field("taken", "<", args.before))
    if args.camera:
        parts.append(Field("camera", "contains", args.camera))
    if args.rating:
        parts.append(Field("rating", *args.rating))
    if args.label:
        parts.append(Field("label", "=", args.label))
    for name in ("width", "height"):
        lo, hi = getattr(args, f"min_{name}"), getattr(args, f"max_{name}")
        if lo is not None or hi is not None:
            parts.append(Range(name, lo, hi))
    for spec in args.where or []:  # FIELD=VALUE, or FIELD=LO..HI
        name, _, value = spec.partition("=")
        if not value:
            raise ValueError(f"--where wants FIELD=VALUE or FIELD=LO..HI, got {spec!r}")
        if ".." in value:
            lo, _, hi = value.partition("..")
            parts.append(Range(name, _num(lo) if lo else None, _num(hi) if hi else None))
        else:
            parts.append(Field(name, "=", _num(value)))
    return And(tuple(parts)) if parts else None


def _num(s: str):
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    return s


def add_filter_options(p, text_flag: str = "--text") -> None:
    """The metadata filters shared by `search`, its alias `query`, and `explore`. `search` names the description
    filter `--contains`, since its own --text is the CLIP text query; _build_filter reads `args.text`."""
    p.add_argument("--tag", action="append", help="must have this tag (repeat or comma-separate: all of)")
    p.add_argument("--any-tag", action="append", help="comma-separated tags, at least one of them")
    p.add_argument(text_flag, action="append", help="description contains this (case-insensitive)")
    p.add_argument("--after", type=iso_date, help="taken on or after (ISO date, e.g. 2020-01-01)")
    p.add_argument("--before", type=iso_date, help="taken before (ISO date)")
    p.add_argument("--camera", help="make/model contains this")
    p.add_argument("--rating", type=rating_filter, metavar="[OP]STARS",
                   help="XMP star rating, e.g. '>=4', 5, '<2' (-1: rejected)")
    p.add_argument("--label", help="XMP colour label, e.g. red (case-insensitive)")
    p.add_argument("--min-width", type=non_negative_int)
    p.add_argument("--max-width", type=non_negative_int)
    p.add_argument("--min-height", type=non_negative_int)
    p.add_argument("--max-height", type=non_negative_int)
    p.add_argument("--where", action="append", metavar="FIELD=VALUE|LO..HI",
                   help="equality or inclusive range on any catalog field (size, format, make, ...)")


def add_subcommands(sub) -> None:
    """Register `index` on an argparse subparsers object (`query` is search's alias: cli/search.py)."""
    p = sub.add_parser("index", help="index folders into a catalog (incremental; resumes after a crash)")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="folders (or files) to index")
    p.add_argument("--catalog", help="catalog file (default: ~/.local/share/imgsim/catalogs/<DIR name>-<hash>/"
                                     "catalog.sqlite, under $XDG_DATA_HOME if set)")
    p.add_argument("--kinds", default="phash", help="hashes to keep, comma-separated (default phash)")
    p.add_argument("--mode", choices=("fast", "compat"), default="fast")
    p.add_argument("--hash-size", type=int, choices=(8, 16), default=8)
    p.add_argument("--embed", metavar="MODEL", help="also compute embeddings with this model")
    p.add_argument("--sidecar-map", metavar="FILE", help="CSV or JSON mapping path -> tags/description")
    p.add_argument("--workers", type=positive_int, default=None, help="hashing processes (default: all cores)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="files per committed batch (default 256)")
    p.add_argument("--repair", action="store_true",
                   help="recompute what is damaged in the catalog (array blocks failing their checksums, a "
                        "missing array file, a corrupt database) instead of refusing to run")
    p.add_argument("--json", action="store_true", help="print the work counts as JSON")
    p.add_argument("--no-progress", action="store_true")
    from imgsim_fast.cli.main import add_walk_options

    add_walk_options(p)
    p.set_defaults(func=cmd_index)
