"""Plans: the decisions a person made on the dedup review page, checked before anything is touched.

The review page (report.write_html) exports a plan; `imgsim dedup FOLDER... --apply PLAN --move-to DIR` (or
`--link hard|sym`, or `--delete --yes`) carries it out with the same manifest and undo as a normal run, changing
files only in the folders named there (the plan's own roots are what the plan says: anyone can edit it).

Format (JSON, version 1)::

    {
     "imgsim_plan": 1,
     "created": "2026-12-04T06:10:00.000Z",     # when the page exported it (ISO 8601)
     "report": "report.html",                    # the page it came from (for people only)
     "roots": ["/photos", "/phone"],             # absolute folders (or files) the dedup run scanned
     "reference": ["/photos/archive"],           # its --reference folders: nothing under them is removed
     "groups": [
      {"keep":   {"path": "/photos/a.jpg", "digest": "<BLAKE2b-128 hex of the file's bytes>"},
       "remove": [{"path": "/phone/a copy.jpg", "digest": "..."}]}
     ]
    }

Paths are absolute and exact: a file name that is not valid UTF-8 keeps its undecodable bytes as lone
surrogates (PEP 383), which JSON writes as \\udcXX escapes, so the plan names the very file that was
scanned. Only groups with something to remove are listed.

Refused as a whole (PlanError, nothing touched): a malformed plan; a path outside the plan's roots, or
(removals) outside the roots given on the command line; a removal under a reference folder; a file that
is a keeper and is also to be removed, or is to be removed twice. Skipped and reported, the rest going
ahead: a file whose bytes no longer have the plan's digest, or that is gone (when a keeper changed, its
whole group is skipped).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from imgsim_fast.jobs.dedup.actions import OPS, Action, quarantine_path
from imgsim_fast.io.digest import file_digest, is_digest
from imgsim_fast.jobs.dedup.keep import is_under

__all__ = ["PLAN_VERSION", "PlanError", "Entry", "PlanGroup", "Plan", "load_plan", "parse_plan", "check_plan",
           "stale_entries", "plan_to_actions"]

PLAN_VERSION = 1


class PlanError(ValueError):
    """The plan cannot be carried out at all; the message is one line for the user."""


@dataclass(frozen=True)
class Entry:
    path: str
    digest: str


@dataclass
class PlanGroup:
    keep: Entry
    remove: list[Entry]


@dataclass
class Plan:
    roots: list[str]
    reference: list[str]
    groups: list[PlanGroup]
    created: str = ""
    source: str = ""  # the plan file

    @property
    def removals(self) -> list[Entry]:
        return [e for g in self.groups for e in g.remove]


# ------------------------------------------------------------------------------------------------
# Reading


def _entry(obj, where: str) -> Entry:
    if not isinstance(obj, dict) or not isinstance(obj.get("path"), str) or not isinstance(obj.get("digest"), str):
        raise PlanError(f"{where}: expected {{\"path\": ..., \"digest\": ...}}")
    if not os.path.isabs(obj["path"]):
        raise PlanError(f"{where}: path is not absolute")
    if not is_digest(obj["digest"]):
        raise PlanError(f"{where}: digest is not a 32-digit hex BLAKE2b-128")
    return Entry(obj["path"], obj["digest"])


def _paths(obj, name: str) -> list[str]:
    if not isinstance(obj, list) or not all(isinstance(p, str) and os.path.isabs(p) for p in obj):
        raise PlanError(f"plan field {name!r} must be a list of absolute paths")
    return list(obj)


def parse_plan(doc, source: str = "") -> Plan:
    """A Plan from a decoded JSON document, or PlanError naming the first thing wrong with it."""
    if not isinstance(doc, dict) or "imgsim_plan" not in doc:
        raise PlanError(f"not an imgsim plan (version {PLAN_VERSION})")
    if doc["imgsim_plan"] != PLAN_VERSION:
        raise PlanError(f"a plan of version {json.dumps(doc['imgsim_plan'])[:20]}; this imgsim reads version "
                        f"{PLAN_VERSION}")
    roots = _paths(doc.get("roots"), "roots")
    if not roots:
        raise PlanError("plan has no roots")
    reference = _paths(doc.get("reference", []), "reference")
    groups_doc = doc.get("groups")
    if not isinstance(groups_doc, list):
        raise PlanError("plan field 'groups' must be a list")
    groups = []
    for gi, g in enumerate(groups_doc, 1):
        if not isinstance(g, dict) or not isinstance(g.get("remove"), list):
            raise PlanError(f"group {gi}: expected {{\"keep\": ..., \"remove\": [...]}}")
        groups.append(PlanGroup(_entry(g.get("keep"), f"group {gi} keep"),
                                [_entry(e, f"group {gi} remove {k}") for k, e in enumerate(g["remove"], 1)]))
    created = doc.get("created", "")
    return Plan(roots, reference, groups, created if isinstance(created, str) else "", source)


def load_plan(path: str) -> Plan:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PlanError(f"{path} is not a JSON plan: {e}") from None
    try:
        return parse_plan(doc, path)
    except PlanError as e:
        raise PlanError(f"{path}: {e}") from None


# ------------------------------------------------------------------------------------------------
# Checking


def check_plan(plan: Plan, roots: list[str] | None = None) -> None:
    """Raise PlanError unless every file is inside the plan's roots, every removal inside `roots` (the
    command line's, when given) and outside the reference folders, and no file is both kept and removed
    or removed twice. Paths are compared as real paths (keep.is_under), so links and '..' do not fool it."""
    for g in plan.groups:
        for e in [g.keep, *g.remove]:
            if not is_under(e.path, plan.roots):
                raise PlanError(f"{e.path} is outside the plan's roots ({', '.join(plan.roots)})")
        for e in g.remove:
            if roots and not is_under(e.path, roots):
                raise PlanError(f"{e.path} is outside the folders given on the command line")
            if plan.reference and is_under(e.path, plan.reference):
                raise PlanError(f"{e.path} is under a reference folder; the plan may not remove it")
    keepers = {os.path.realpath(g.keep.path) for g in plan.groups}
    seen: set[str] = set()
    for e in plan.removals:
        rp = os.path.realpath(e.path)
        if rp in keepers:
            raise PlanError(f"the plan removes {e.path}, which it also keeps")
        if rp in seen:
            raise PlanError(f"the plan removes {e.path} twice")
        seen.add(rp)


def _why_stale(e: Entry) -> str | None:
    if not os.path.lexists(e.path):
        return "file is gone"
    if os.path.islink(e.path) or not os.path.isfile(e.path):
        return "no longer a regular file"
    try:
        if file_digest(e.path) != e.digest:
            return "file changed since the review (digest differs)"
    except OSError as exc:  # unreadable now: skipped and reported, as a changed file is
        return f"cannot be read: {exc.strerror or exc}"
    return None


def stale_entries(plan: Plan) -> list[tuple[Entry, str]]:
    """(removal, reason) for every removal that must be skipped: it, or its group's keeper, is gone or
    no longer has the plan's digest. actions.execute checks again just before acting."""
    out = []
    for g in plan.groups:
        why = _why_stale(g.keep)
        if why:
            out.extend((e, f"its keeper {g.keep.path}: {why}") for e in g.remove)
            continue
        out.extend((e, w) for e in g.remove if (w := _why_stale(e)))
    return out


# ------------------------------------------------------------------------------------------------
# Acting


def plan_to_actions(plan: Plan, op: str, quarantine: str | None = None,
                    skip: set[str] = frozenset()) -> list[Action]:
    """One actions.Action per removal not in `skip` (paths); move / links put the original in the
    quarantine at the same relative place a normal run would (actions.quarantine_path)."""
    if op not in OPS:
        raise ValueError(f"unknown action {op!r}; expected one of {OPS}")
    if op != "delete" and not quarantine:
        raise ValueError(f"action {op!r} needs a quarantine folder for the originals")
    taken: set[str] = set()
    out = []
    for g in plan.groups:
        for e in g.remove:
            if e.path in skip:
                continue
            dest = None if op == "delete" else quarantine_path(e.path, plan.roots, quarantine, taken)
            out.append(Action(op, os.path.abspath(e.path), os.path.abspath(g.keep.path), dest, e.digest,
                              g.keep.digest))
    return out
