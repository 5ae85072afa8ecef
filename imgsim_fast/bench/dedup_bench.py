"""Dedup against its peers on one folder, in one run: time, peak memory, precision, recall, F1.

`python -m imgsim_fast.bench dedup [--quick]`. The folder is the held-out ("test") half of the accuracy
corpus (bench/corpus.py: real pictures with edited copies, and the look-alike non-duplicates), hard-linked
into one flat folder so every tool reads the same files. Each tool runs in a fresh subprocess (so start-up,
imports and model loading count, and memory is its own); peak memory is the largest total RSS of that
process and its children, sampled every 20 ms. Predicted pairs are all pairs inside each tool's groups;
labels and metrics are accuracy.evaluate's.

Peers, each at its default: czkawka (PyPI `czkawka`, the Rust engine's Python binding, default similarity),
imagededup's PHash (`find_duplicates`, max_distance_threshold 10), and imagehash.phash with every pair
within 10 bits (imagededup's threshold, brute force). imagededup's package imports its CNN and plotting
modules at import time, which need torchvision and matplotlib (not installable here beside pillow-simd);
the bench registers empty stand-ins for those two modules only, and the PHash code runs unchanged.
"""
from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time

from imgsim_fast.bench.report import Row

__all__ = ["TOOLS", "run"]

TOOLS = ("imgsim-auto", "imgsim-phash", "czkawka", "imagededup-phash", "imagehash-phash")


def _tree_rss(pid: int) -> int:
    """Resident bytes of pid and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(d))  # fields[1]: ppid
        rss[int(d)] = int(fields[21]) * page                    # fields[21]: rss in pages
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total


def _measure(cmd: list[str]) -> tuple[dict, float, int]:
    """(the tool's JSON answer, wall seconds, peak tree RSS bytes) of one subprocess."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            done.wait(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[-3:])} failed: {err.decode(errors='replace')[-2000:]}")
    return json.loads(out), wall, peak[0]


def _groups(tool: str, folder: str) -> list[list[str]]:
    """One tool's groups of file names (the subprocess side)."""
    if tool.startswith("imgsim-"):
        from imgsim_fast.jobs.dedup import find_duplicates

        res = find_duplicates([folder], method=tool.split("-", 1)[1], progress=False)
        return [[os.path.basename(res.paths[m]) for m in g.members] for g in res.groups if g.tier == "duplicate"]
    if tool == "czkawka":
        from czkawka import ImageSimilarity

        finder = ImageSimilarity()
        finder.set_directories([folder])
        return [[p.name for p in g] for g in finder.find_similar()]
    if tool == "imagededup-phash":
        import types

        for name in ("imagededup.methods.cnn", "imagededup.utils.plotter", "imagededup.utils.models"):
            m = types.ModuleType(name)
            m.CNN = m.plot_duplicates = m.CustomModel = None
            sys.modules[name] = m
        from imagededup.methods import PHash

        dup = PHash(verbose=False).find_duplicates(image_dir=folder, max_distance_threshold=10)
        return [[k, *v] for k, v in dup.items() if v]
    if tool == "imagehash-phash":
        import imagehash
        import numpy as np
        from PIL import Image

        names = sorted(os.listdir(folder))
        bits = []
        for n in names:
            with Image.open(os.path.join(folder, n)) as im:
                bits.append(imagehash.phash(im).hash.ravel())
        b = np.array(bits, dtype=bool)
        d = (b[:, None, :] != b[None, :, :]).sum(axis=2)
        ii, jj = np.nonzero(np.triu(d <= 10, k=1))
        return [[names[i], names[j]] for i, j in zip(ii.tolist(), jj.tolist())]
    raise ValueError(f"unknown tool {tool!r}")


def _folder(cache_dir: str, files, split: str, suffix: str = "") -> str:
    """Hard links of the split's corpus files in one flat folder (rebuilt when the corpus changes)."""
    folder = os.path.join(cache_dir, f"dedup_bench_{split}{suffix}")
    want = {os.path.basename(f.path): f.path for f in files if f.split == split}
    have = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    if have != set(want):
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        for name, src in want.items():
            os.link(src, os.path.join(folder, name))
    return folder


def run(photos_src: str, cache_dir: str, quick: bool = False, details: dict | None = None,
        tools=TOOLS, audit: bool = False, repeat: int = 1, full_size: bool = False) -> list[Row]:
    """Every tool on the held-out half's folder (audit: the audit corpus's, corpus.audit_pictures; full_size:
    the corpus built with its pictures at the size they come in, build_corpus(full_size=True)).

    repeat: rounds, each running every tool once in turn (so a slow spell of the shared machine falls on all
    of them); a tool's time is its median round, its memory the largest, its accuracy the round of median F1,
    and whether every round gave the same groups is reported (czkawka's threads do not: its groups differ
    from run to run), and how many rounds failed (a tool that failed every round is left out)."""
    from imgsim_fast.bench.accuracy import evaluate
    from imgsim_fast.bench.corpus import build_corpus

    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    files = build_corpus(photos_src, cache_dir, quick=quick, audit=audit, full_size=full_size)
    split = "audit" if audit else "test"
    folder = _folder(cache_dir, files, split, "-full" if full_size else "")
    index = {os.path.basename(f.path): i for i, f in enumerate(files)}
    runs: dict[str, list] = {}
    failed: dict[str, int] = {}
    for _ in range(repeat):
        for tool in tools:
            try:
                got = _measure([sys.executable, "-m", "imgsim_fast.bench.dedup_bench", "--tool", tool, folder])
            except (RuntimeError, ImportError) as e:
                print(f"dedup bench: {tool} failed a round: {e}", file=sys.stderr)
                failed[tool] = failed.get(tool, 0) + 1
                continue
            runs.setdefault(tool, []).append(got)
    rows, out = [], {}
    for tool, got in runs.items():
        metrics = []
        for groups, _, _ in got:
            pred = {tuple(sorted((index[a], index[b]))) for g in groups for a, b in itertools.combinations(g, 2)}
            metrics.append(evaluate(pred, files, split))
        # The median round by F1 speaks for the tool (the lower of the middle two, as the time's median is
        # not, for an even count: accuracy is not averaged); whether its rounds agreed is reported beside it.
        m = sorted(metrics, key=lambda x: x["f1"])[(len(metrics) - 1) // 2]
        answers = {json.dumps(sorted(sorted(g) for g in groups)) for groups, _, _ in got}
        out[tool] = {"seconds": statistics.median(w for _, w, _ in got), "seconds_each": [w for _, w, _ in got],
                     "peak_rss_mb": max(p for _, _, p in got) / 2**20,
                     **{k: m[k] for k in ("precision", "recall", "f1")},
                     "f1_each": [x["f1"] for x in metrics], "same_groups_every_round": len(answers) == 1,
                     "failed_rounds": failed.get(tool, 0),
                     "false_pairs": m["false_pairs"], "pairs": m["pairs"],
                     "false_per_1000": m.get("false_per_1000_by_negative")}
    n = sum(1 for f in files if f.split == split)
    for tool, r in out.items():
        params = {"files": n, "rounds": len(r["seconds_each"]),
                  "seconds_each": [round(w, 1) for w in r["seconds_each"]],
                  "f1_each": [round(f, 4) for f in r["f1_each"]], "same_groups": r["same_groups_every_round"],
                  "failed_rounds": r["failed_rounds"],
                  "peak_rss_mb": round(r["peak_rss_mb"]), "precision": round(r["precision"], 4),
                  "recall": round(r["recall"], 4), "f1": round(r["f1"], 4)}
        where = ("audit" if audit else "held-out") + (" full-size" if full_size else "")
        rows.append(Row("dedup", f"{tool} files/s ({where} folder)",
                        round(n / r["seconds"], 1), "files/s",
                        "czkawka" if tool != "czkawka" and "czkawka" in out else None,
                        round(n / out["czkawka"]["seconds"], 1) if "czkawka" in out and tool != "czkawka" else None,
                        params, f"F1 {r['f1']:.3f}, {r['peak_rss_mb']:.0f} MB"))
    if details is not None:
        details.update(out)
    return rows


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m imgsim_fast.bench.dedup_bench")
    p.add_argument("--tool", choices=TOOLS, help="run one tool on FOLDER and print its groups as JSON")
    p.add_argument("folder", nargs="?")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeat", type=int, default=1, help="rounds of every tool in turn; the median time counts")
    p.add_argument("--full-size", action="store_true", help="the corpus with its pictures at their own size")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error(f"--repeat must be at least 1, got {args.repeat}")
    if args.tool:
        json.dump(_groups(args.tool, args.folder), sys.stdout)
        return 0
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    d: dict = {}
    run(os.path.join(repo, ".cache", "photos"), os.path.join(repo, ".cache"), args.quick, d, repeat=args.repeat,
        full_size=args.full_size)
    print(f"{'tool':18} {'seconds':>8} {'peak MB':>8} {'P':>6} {'R':>6} {'F1':>6}")
    for tool, r in d.items():
        print(f"{tool:18} {r['seconds']:8.1f} {r['peak_rss_mb']:8.0f} {r['precision']:6.3f} {r['recall']:6.3f} "
              f"{r['f1']:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
