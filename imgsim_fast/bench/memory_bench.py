"""Memory of one pipeline worker: peak RSS while it hashes one PNG at the memory budget (issue 11).

The decode happens in a fresh process that has imported what a forkserver worker has (`_pool_warmup`),
so its peak resident size minus its size before the file is what that image cost a worker. The PNG is
one flat colour: a few hundred KB on disk, the full budget once decoded (the shape of a decompression
bomb that passes the header checks).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile

from PIL import Image

from imgsim_fast.io.loading import DEFAULT_MEMORY_BUDGET, decode_cost
from imgsim_fast.bench.report import Row

# Runs in the child: baseline after imports, then the worker's own chunk function on the one file. The
# high-water mark is /proc's VmHWM, not getrusage's ru_maxrss, which a child inherits from its parent
# across fork and exec (the bench process that just drew the PNG would set the baseline).
_CHILD = """
import json, sys
import imgsim_fast.runtime.warmup
from imgsim_fast.features import hashing
from imgsim_fast.features.extract import ExtractSpec, Extracted, extract_chunk
def hwm_kib():
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))
path, max_bytes, kinds, mode = sys.argv[1], int(sys.argv[2]), tuple(sys.argv[3].split(",")), sys.argv[4]
base = hwm_kib()
spec = ExtractSpec(kinds=kinds, mode=mode, digest=False, max_pixels=None, max_bytes=max_bytes)
(_, r), = extract_chunk([(0, path)], spec)
peak = hwm_kib()
failure = r if not isinstance(r, Extracted) else r.failure
print(json.dumps({"base_kib": base, "peak_kib": peak, "hashed": int(failure is None),
                  "failures": [] if failure is None else [failure.kind]}))
"""


def largest_square(max_bytes: int, mode: str = "RGB") -> int:
    """Side of the largest square image of `mode` whose decode_cost fits `max_bytes`."""
    fixed = decode_cost((0, 0), mode)
    side = math.isqrt((max_bytes - fixed) // (decode_cost((1, 1), mode) - fixed))
    while decode_cost((side, side), mode) > max_bytes:
        side -= 1
    return side


def flat_png(path: str, side: int, mode: str = "RGB", height: int | None = None) -> str:
    colour = {"RGB": (10, 200, 30), "RGBA": (10, 200, 30, 128), "L": 90}[mode]
    Image.new(mode, (side, height or side), colour).save(path, compress_level=1)
    return path


def worker_peak(path: str, max_bytes: int, kinds: str = "phash", mode: str = "fast") -> dict:
    """Run one worker's hashing of `path` in a fresh process: {base_kib, peak_kib, hashed, failures}."""
    out = subprocess.run([sys.executable, "-c", _CHILD, path, str(max_bytes), kinds, mode],
                         capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[Row]:
    budget = (128 << 20) if quick else DEFAULT_MEMORY_BUDGET
    rows = []
    with tempfile.TemporaryDirectory(prefix="imgsim-memory-") as d:
        for mode in ("RGB", "RGBA"):
            side = largest_square(budget, mode)
            path = flat_png(os.path.join(d, f"limit-{mode}.png"), side, mode)
            r = worker_peak(path, budget)
            params = {"budget_mib": budget >> 20, "side": side, "mode": mode, "png_bytes": os.path.getsize(path),
                      "base_mib": round(r["base_kib"] / 1024, 1), "hashed": r["hashed"]}
            rows.append(Row("memory", f"{mode} PNG {side}x{side} at the budget: worker peak RSS",
                            r["peak_kib"] / 1024, "MiB", params=params,
                            note=f"{(r['peak_kib'] - r['base_kib']) / 1024:.0f} MiB over the worker's "
                                 f"{r['base_kib'] / 1024:.0f} MiB; budget {budget >> 20} MiB"))
            os.unlink(path)
    return rows
