"""Connecting to Ray: a running cluster (`--address`, or RAY_ADDRESS), else a local one on this machine."""
from __future__ import annotations

import os

__all__ = ["connect", "cluster_cpus", "cluster_gpus"]


def _ray():
    try:
        import ray
    except ImportError:
        raise ValueError("imgsim cluster needs Ray: pip install 'imgsim_fast[cluster]'") from None
    return ray


def connect(address: str | None = None, num_cpus: int | None = None):
    """The ray module, initialised: joined to `address` ('auto' finds a local `ray start` cluster), or
    already initialised by the caller (tests, notebooks), or a fresh local Ray with `num_cpus` workers."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
    except ConnectionError as e:
        raise ValueError(f"cannot reach the Ray cluster at {address}: {e}") from None
    _quiet_data()
    return ray


def _quiet_data() -> None:
    """Ray Data prints a progress report per operator; ours is one line per job (the CLI prints it)."""
    import logging

    from ray.data import DataContext

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    import warnings

    with warnings.catch_warnings():
        # Making the context sets every field, and Ray 2.60 warns about one of its own defaults
        # (use_push_based_shuffle, use_polars, ...) as if the caller had set them.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="ray.data.context")
        ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_operator_progress_bars = False


def cluster_cpus(ray) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def cluster_gpus(ray) -> int:
    return int(ray.cluster_resources().get("GPU", 0))
