"""The CUDA path against the CPU on one machine and one folder: embedding time and agreement, dedup groups.

    python scripts/gpu_check.py FOLDER [--repeat 4] [--json OUT.json]

Needs a CUDA device (torch.cuda.is_available()). What it reports: embedding time for the folder's files
(repeated `--repeat` times, after a warm-up) on the CPU, on CUDA with float16 autocast (the default there)
and on CUDA in float32; the cosine between each file's CPU vector and its CUDA ones (1.0 = the same); and
`find_duplicates` run twice on each device, alternately (the first run pays numba's compilation), with
whether the groups, their keepers, members and rules are the same. Speed is not asserted anywhere: this is
a measurement, run by hand where a GPU is lent (README "Native core").
"""
import argparse
import glob
import json
import os
import time

import numpy as np
import torch

from imgsim_fast.features.embedding import embed_paths
from imgsim_fast.jobs.dedup import find_duplicates


def _groups(res) -> list:
    """Each group as (tier, keeper, sorted (member, rule)): what a device change must leave alone."""
    out = []
    for g in res.groups:
        names = [os.path.basename(res.paths[m]) for m in g.members]
        out.append((g.tier, names[0], tuple(sorted(zip(names[1:], (m.rule for m in g.matches[1:]))))))
    return sorted(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--json")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit(f"gpu_check: torch {torch.__version__} sees no CUDA device")
    files = sorted(f for f in glob.glob(os.path.join(a.folder, "*")) if os.path.isfile(f))
    res = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "cpus": os.cpu_count(),
           "files": len(files)}
    vectors = {}
    for device, amp in (("cpu", "auto"), ("cuda", "auto"), ("cuda", None)):
        key = f"{device}-{amp or 'float32'}"
        embed_paths(files[:64], device=device, amp=amp, progress=False)  # warm-up: model, workers, kernels
        t = time.perf_counter()
        r = embed_paths(files * a.repeat, device=device, amp=amp, progress=False)
        res[f"embed {key} s"] = round(time.perf_counter() - t, 2)
        vectors[key] = r.vectors[:len(files)].astype(np.float32)
    for key in ("cuda-auto", "cuda-float32"):
        cos = (vectors["cpu-auto"] * vectors[key]).sum(1)
        res[f"cos cpu vs {key}"] = {"min": float(cos.min()), "p1": float(np.percentile(cos, 1))}
    groups = {}
    for i, device in enumerate(("cpu", "cuda", "cpu", "cuda")):
        t = time.perf_counter()
        r = find_duplicates(a.folder, device=device, progress=False)
        res[f"dedup run {i} {device} s"] = round(time.perf_counter() - t, 2)
        groups[device] = _groups(r)
        res[f"duplicate groups {device}"] = sum(g[0] == "duplicate" for g in groups[device])
    res["same groups"] = groups["cpu"] == groups["cuda"]
    res["only cpu"] = [str(g) for g in sorted(set(groups["cpu"]) - set(groups["cuda"]))]
    res["only cuda"] = [str(g) for g in sorted(set(groups["cuda"]) - set(groups["cpu"]))]
    text = json.dumps(res, indent=1)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
