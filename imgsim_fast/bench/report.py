"""Benchmark bookkeeping: machine description, timing helper, the table and the JSON file."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field


@dataclass
class Row:
    section: str
    name: str
    value: float
    unit: str
    peer: str | None = None
    peer_value: float | None = None
    params: dict = field(default_factory=dict)
    note: str = ""  # shown after the unit in the table

    @property
    def ratio(self) -> float | None:
        """How many times better ours is (both values are 'higher is better' rates)."""
        if self.peer_value in (None, 0):
            return None
        return self.value / self.peer_value


def best_time(fn, repeat: int = 3, min_time: float = 0.0) -> float:
    """Best wall time of `repeat` calls (the least disturbed by other processes), in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        if min_time and dt > min_time:
            break
    return best


def machine_info(seed: int) -> dict:
    from imgsim_fast.runtime.capabilities import capabilities

    info = capabilities(torch_info=False)
    info["seed"] = seed
    info["commit"] = _git_commit()
    info["platform"] = platform.platform()
    info["time_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    info["env"] = {k: os.environ[k] for k in ("IMGSIM_ISA", "OMP_NUM_THREADS", "OPENBLAS_CORETYPE") if k in os.environ}
    return info


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def print_table(rows: list[Row]) -> None:
    print(f"{'section':9} {'benchmark':46} {'ours':>14} {'peer':>14} {'ratio':>8}  unit / peer")
    for r in rows:
        peer = f"{r.peer_value:14.4g}" if r.peer_value is not None else " " * 14
        ratio = f"{r.ratio:7.2f}x" if r.ratio is not None else " " * 8
        print(f"{r.section:9} {r.name:46} {r.value:14.4g} {peer} {ratio}  {r.unit}" + (f" / {r.peer}" if r.peer else "")
              + (f"  [{r.note}]" if r.note else ""))


def write_json(path: str, info: dict, rows: list[Row]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    doc = {"machine": info, "results": [dict(asdict(r), ratio=r.ratio) for r in rows]}
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)
