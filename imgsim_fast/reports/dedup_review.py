"""Dedup reports: JSON and CSV for machines; for people, a review page on which they decide.

The review page (`write_html`) is rendered from templates/review.html.j2 (Jinja2, autoescaped). Its
thumbnails are small JPEG files in a folder beside it (`report_files/` for `report.html`, named by
position, never after a user's file name) and load lazily, so a page of 10,000 groups opens quickly.
On the page a person changes a group's keeper, marks and unmarks files, filters duplicates from merely
similar pictures, and exports the decisions as a plan (JSON, format in plan.py) that
`imgsim dedup FOLDER... --apply PLAN` carries out. Every member carries plain words saying why it is in its group.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

from imgsim_fast.io.atomic_write import check_target, write_text
from imgsim_fast.io.names import display_path, path_text
from imgsim_fast.jobs.dedup.rows import ROW_COLUMNS, rows_of
from imgsim_fast.reports.render import render
from imgsim_fast.reports.thumbnails import THUMB_SIDE, make_thumbs, prepare_folder, thumbs_folder

__all__ = ["write_json", "write_csv", "write_out", "write_html", "render_review", "thumbs_folder",
           "THUMB_SIDE"]

def _as_text(doc: dict) -> dict:
    """`doc` with every path made valid Unicode by names.path_text (the rule for JSON and CSV reports); only
    the review page's plan data keeps exact paths, as a plan must name the very file."""
    for g in doc["groups"]:
        g["keep"] = path_text(g["keep"])
        g["files"] = [path_text(p) for p in g["files"]]
        for m in g["members"]:
            m["path"] = path_text(m["path"])
    for e in doc["errors"]:
        e["path"] = path_text(e["path"])
    return doc


# ------------------------------------------------------------------------------------------------
# Machine-readable


def write_json(result, path: str, extra: dict | None = None) -> None:
    doc = _as_text(result.to_dict())
    doc.update(extra or {})
    write_text(path, json.dumps(doc, indent=1) + "\n")


def write_csv(result, path: str) -> None:
    """One row per group member, groups numbered from 1; the keeper is the first row of its group."""
    write_out(result, path, "csv")


def write_out(result, path: str, fmt: str | None = None) -> None:
    """`result` to `path` in the format its extension names (io/tables.py): .json the document of
    write_json, .csv and .parquet its rows (jobs/dedup/rows.py). fmt forces one, whatever the name."""
    from imgsim_fast.io import tables

    fmt = fmt or tables.table_format(path)
    if fmt == "json":
        write_json(result, path)
    else:
        tables.write_table(path, rows_of(result.to_dict()), ROW_COLUMNS, fmt=fmt)


# ------------------------------------------------------------------------------------------------
# The review page


def render_review(doc: dict, sizes: list, *, thumbs: str = "report_files", roots=(), reference=(),
                  title: str = "imgsim dedup review", page_name: str = "report.html") -> str:
    """The review page's HTML for `doc` (DedupResult.to_dict()'s form: groups with "tier", members with "why"
    and "removable"). Files are numbered in group order; file i's
    thumbnail is thumbs/i.jpg (a URL relative to the page) of size sizes[i], or absent when that is None."""
    files = []
    inodes: dict[tuple[int, int], int] = {}
    for g in doc["groups"]:
        for m in g["members"]:
            # Exact absolute paths for the plan (a non-UTF-8 name stays lone surrogates, JSON-escaped).
            path = os.path.abspath(m["path"])
            tw, th = sizes[len(files)] or (0, 0)
            # Hard links to one file are byte-identical copies, and removing one frees nothing while another
            # link remains: the page counts bytes per inode, freed once every link of it is marked.
            try:
                st = os.stat(path, follow_symlinks=False)
                node, links = inodes.setdefault((st.st_dev, st.st_ino), len(inodes)), st.st_nlink
            except OSError:  # gone since the scan: counted as its own file
                node, links = inodes.setdefault((-1, len(files)), len(inodes)), 1
            files.append([path, m["digest"], m["bytes"], bool(m["removable"]), bool(m["reference"]), m["why"],
                          m["width"], m["height"], m["format"], tw, th, Path(path).as_uri(), display_path(m["path"]),
                          node, links])
    n_dup = sum(g["tier"] == "duplicate" for g in doc["groups"])
    data = {
        "roots": [os.path.abspath(r) for r in roots],
        "reference": [os.path.abspath(r) for r in reference],
        "report": path_text(page_name),
        "thumbs": thumbs,
        "files": files,
        "groups": [], "tiers": [g["tier"] for g in doc["groups"]], "exact": [bool(g["exact"]) for g in doc["groups"]],
    }
    k = 0
    for g in doc["groups"]:
        data["groups"].append(list(range(k, k + len(g["members"]))))
        k += len(g["members"])
    return render(
        "review.html.j2", title=title, n_duplicate=n_dup, n_similar=len(doc["groups"]) - n_dup,
        files_scanned=doc["files_scanned"], method=doc["method"], keep_order=", ".join(doc["keep_order"]),
        roots=[display_path(r) for r in data["roots"]],
        errors=[{**e, "shown": display_path(e["path"])} for e in doc["errors"]],
        data=data)


def write_html(result, path: str, title: str = "imgsim dedup review", *, roots=(), reference=(),
               workers: int | None = None) -> str:
    """The review page at `path` and its thumbnails in thumbs_folder(path); returns that folder.
    roots / reference: the folders the run scanned and its reference folders (they go into the plan)."""
    doc = result.to_dict()
    paths = [m["path"] for g in doc["groups"] for m in g["members"]]
    check_target(path)  # before the thumbnail folder is made: a page that cannot be written leaves nothing
    folder = thumbs_folder(path)
    prepare_folder(folder)
    sizes = make_thumbs(paths, folder, workers)
    write_text(path, render_review(doc, sizes, thumbs=quote(os.path.basename(folder)), roots=roots,
                                   reference=reference, title=title, page_name=os.path.basename(path)))
    return folder
