"""The CNN's forward pass on CPU through ONNX Runtime: the same network and weights, about twice torch's speed.

Measured on this project's machine (2 cores, EfficientNet-Lite0 at 224 px, batches of 32): torch eager 13-16
ms per image, ONNX Runtime 7 ms; outputs agree to 1e-5 (unit vectors: cosine 0.9999998 or more). Torch's
depthwise convolutions are its slow part on CPU; ONNX Runtime's CPU kernels fuse them with the activations.

The graph is exported from the torch module (torch.onnx, which needs the `onnx` package) once per weights,
code, input size, torch and ONNX Runtime versions and opset, and kept in the user's cache folder under a name ending in the SHA-256 of its bytes:
a file whose bytes do not match its name (truncated, flipped) is never loaded, but exported again. Where the
cache cannot be written the export is used from memory. A graph, exported now or cached, whose output
differs from torch's on a probe batch is not used. Without onnxruntime, or without onnx and no exported graph, torch runs the model.
"""
from __future__ import annotations

import glob
import hashlib
import inspect
import io
import os
import re
import warnings

import numpy as np

__all__ = ["OPSET", "available", "cache_dir", "Session"]

OPSET = 17
# Images per ONNX Runtime call, whatever the caller's batch: as fast per image as 16 or 32 (6.4 against
# 6.5-7.1 ms), and the memory it holds grows with it (EfficientNet-Lite0 at 224 px, 2 cores).
RUN_BATCH = 8
_PROBE_TOLERANCE = 1e-4  # largest difference from torch's features on the probe batch (measured: 1e-5)


def available() -> bool:
    """Whether ONNX Runtime can be imported here (importing it as _runtime does)."""
    try:
        _runtime()
    except ImportError:
        return False
    return True


def _runtime():
    """The onnxruntime module, imported with its telemetry off. Its Linux wheels (1.2x) record usage events
    for upload by default, from the import on: a device id and an event store under ~/.cache/Microsoft, a
    file in $TMPDIR. ORT_DISABLE_TELEMETRY=1, set before the import, turns all of it off (onnxruntime pull
    request 27379); this tool works offline and writes nothing it was not asked to. A value the user set
    stands."""
    if not os.environ.get("ORT_DISABLE_TELEMETRY"):  # unset or empty: an empty value leaves it on
        os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    import onnxruntime

    return onnxruntime


def cache_dir() -> str:
    """Where exported graphs are kept: in imgsim_fast's cache folder (data_dirs.cache_home)."""
    from imgsim_fast.io.data_dirs import cache_home

    return os.path.join(cache_home(), "onnx")


class Session:
    """An ONNX Runtime session running `module.forward_features` on float32 NCHW batches of `shape[1:]`.

    key: what the graph depends on besides the code (the model's name and weights digest); the digest of the
    module's source file, the input size, the torch and ONNX Runtime versions and the opset are added here.
    Every session, from a cached graph too, must reproduce torch's features on a probe batch (else
    RuntimeError: the caller runs torch). threads: ONNX Runtime's intra-op threads (torch's count, so both
    runtimes use the cores they are given)."""

    def __init__(self, module, shape: tuple[int, int, int, int], key: str, threads: int):
        import torch

        ort = _runtime()
        self.version = ort.__version__
        with open(inspect.getfile(type(module)), "rb") as f:
            code = _digest(f.read())[:8]
        size = "x".join(str(int(v)) for v in shape[1:])
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_",
                      f"{key}-{code}-{size}-torch{torch.__version__}-ort{ort.__version__}-opset{OPSET}")
        x, expected = _probe(module, shape)
        graph, damaged = _cached(name)
        exported = graph is None
        if exported:
            graph = _export(module, x)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        # No memory pattern: with it the arena holds the largest batch's whole plan (EfficientNet-Lite0, 32 at a
        # time: 760 MB more peak memory, against 106 MB for batches of RUN_BATCH without it, at the same speed).
        options.enable_mem_pattern = False
        # Idle intra-op threads sleep instead of spinning: the decode workers share the cores (the dedup
        # features on the bench folder: 21.2 s against 23.0 s spinning).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        try:
            got = self.run(x)
        except Exception as exc:  # a graph for another input (the name says which it is for)
            raise RuntimeError(f"the graph does not run: {exc}") from None
        if got.shape != expected.shape or not np.abs(got - expected).max() <= _PROBE_TOLERANCE:
            raise RuntimeError("the graph does not reproduce torch's features")
        if exported:
            _store(name, graph, damaged)

    def run(self, x: np.ndarray) -> np.ndarray:
        """forward_features of a float32 (n, 3, h, w) batch, RUN_BATCH images at a time."""
        x = np.ascontiguousarray(x, np.float32)
        parts = [self._session.run(None, {"x": x[s:s + RUN_BATCH]})[0] for s in range(0, max(len(x), 1), RUN_BATCH)]
        return np.concatenate(parts) if len(parts) != 1 else parts[0]


def _cached(name: str) -> tuple[bytes | None, list[str]]:
    """(the bytes of an exported graph kept under `name` that holds the bytes its digest suffix names, or None;
    the files under `name` that do not)."""
    damaged = []
    for path in sorted(glob.glob(os.path.join(glob.escape(cache_dir()), f"{glob.escape(name)}-*.onnx"))):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        if path.endswith(f"-{_digest(data)}.onnx"):
            return data, []
        damaged.append(path)
    return None, damaged


def _store(name: str, graph: bytes, damaged: list[str]) -> None:
    """Keep the graph for later runs, in place of the damaged files under its name; a cache that cannot be
    written only costs the next run an export. Writers racing on one name write the same name and bytes."""
    from imgsim_fast.io.atomic_write import replacing

    folder = cache_dir()
    try:
        os.makedirs(folder, exist_ok=True)
        for path in damaged:
            os.unlink(path)
        with replacing(os.path.join(folder, f"{name}-{_digest(graph)}.onnx"), "wb") as f:
            f.write(graph)
    except OSError:
        pass


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _probe(module, shape) -> tuple[np.ndarray, np.ndarray]:
    """(a seeded random batch of two inputs, torch's forward_features of it)."""
    import torch

    x = np.random.default_rng(0).normal(0, 1, (2, *shape[1:])).astype(np.float32)
    with torch.inference_mode():
        return x, module.forward_features(torch.from_numpy(x)).float().numpy()


def _export(module, x: np.ndarray) -> bytes:
    """The ONNX graph of module.forward_features for inputs shaped as x's, with a free batch size. Raises
    ImportError without the `onnx` package."""
    import onnx  # noqa: F401  (torch.onnx needs it; fail here with the name of what is missing)
    import torch

    class Features(torch.nn.Module):  # forward_features alone: torch.onnx exports a module's forward
        def __init__(self):
            super().__init__()
            self.net = module

        def forward(self, x):
            return self.net.forward_features(x)

    buf = io.BytesIO()
    with warnings.catch_warnings():  # the tracer's notes on the padding arithmetic (constant at a fixed size)
        warnings.simplefilter("ignore")
        torch.onnx.export(Features().eval(), torch.from_numpy(x), buf, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}}, opset_version=OPSET, dynamo=False)
    return buf.getvalue()
