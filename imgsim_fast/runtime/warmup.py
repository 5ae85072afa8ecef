"""Forkserver preload for the pipeline's process pools: import the worker code and warm its kernels once.

Pool workers fork from the forkserver, so the numba phash kernel loaded here (about 0.5 s from numba's
cache) is ready in every worker instead of being paid again by each worker on its first chunk.
"""
from PIL import Image

from imgsim_fast.features import hashing

from imgsim_fast.features import extract  # noqa: F401  (the workers' function: extract_chunk)
from imgsim_fast.runtime import pool  # noqa: F401


def _warm() -> None:
    try:
        hashing.hash_images([Image.new("RGB", (64, 64))], kinds=hashing.HASH_KINDS)
    except Exception:  # never break the pool over a warm-up: a worker then pays on first use
        pass


_warm()
