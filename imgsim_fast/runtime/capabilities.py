"""What this installation runs on: SIMD target, Pillow flavour, numba, torch and CUDA.

Users and bug reports need to know, for instance, whether pillow-simd was silently replaced by plain
Pillow (any package depending on `pillow` does that), or which Hamming kernel the CPU got.
"""
from __future__ import annotations

import importlib.metadata as md
import os
import platform


def pillow_flavour() -> tuple[str, str]:
    """(distribution name, version) of the PIL that is actually imported: 'pillow-simd' or 'pillow'.

    Both install the same `PIL` package, and pip keeps pillow-simd's record even after plain Pillow has
    overwritten its files, so the record alone proves nothing: the imported version must match it
    (pillow-simd's versions end in .postN, Pillow's never do).
    """
    import PIL

    try:
        if md.version("pillow-simd") == PIL.__version__:
            return "pillow-simd", PIL.__version__
    except md.PackageNotFoundError:
        pass
    return "pillow", PIL.__version__


def capabilities(torch_info: bool = True) -> dict:
    """A dict describing the runtime. `torch_info=False` skips importing torch (it takes a second)."""
    from imgsim_fast.indexes import hamming

    flavour, pil_version = pillow_flavour()
    info = {
        "imgsim_fast": __import__("imgsim_fast").__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "simd_target": hamming.simd_target(),
        "simd_available": hamming.available_targets(),
        "simd_forced": os.environ.get("IMGSIM_ISA"),
        "pillow": flavour,
        "pillow_version": pil_version,
        "pillow_features": _pillow_features(),
        "numba": _version("numba"),
        "numpy": _version("numpy"),
    }
    if torch_info:
        try:
            import torch

            info["torch"] = torch.__version__
            info["cuda"] = bool(torch.cuda.is_available())
            info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except ImportError:
            info["torch"] = None
            info["cuda"] = False
            info["cuda_devices"] = []
    # What runs the default CNN on CPU (features/embedding/onnx_cpu.py): ONNX Runtime on a graph torch
    # exports (with onnx) or exported before, else torch. Told from the installed packages, so a benchmark's
    # record says it without importing torch.
    import glob

    from imgsim_fast.features.embedding.onnx_cpu import cache_dir

    torch_version = info["torch"] if torch_info else _version("torch")
    ort = _version("onnxruntime")
    graph = _version("onnx") or glob.glob(os.path.join(glob.escape(cache_dir()), "*.onnx"))
    info["onnxruntime"] = ort
    info["cnn_on_cpu"] = f"onnxruntime {ort}" if ort and graph and torch_version else (
        f"torch {torch_version}" if torch_version else None)
    return info


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _pillow_features() -> dict:
    from PIL import features

    return {name: bool(features.check(name)) for name in ("jpg", "zlib", "webp", "libtiff", "jpg_2000")}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
