"""A CNN's forward pass on ONNX Runtime, on CPU: the same vectors as PyTorch's, several times sooner.

Measured on the development machine (2 cores, AVX-512), EfficientNet-Lite0, batches of 32 at 224 px:
PyTorch's eager CPU pass (channels-last, oneDNN) 15-23 images/s, ONNX Runtime's 42-123 on the same batches
in the same run, the vectors within 5e-7 of each other (`python -m imgsim_fast.bench embedding` compares
them again). The graph is exported once from the loaded, batch-norm-fused module by torch.onnx (the `onnx`
package), kept under $XDG_CACHE_HOME/imgsim/onnx (else ~/.cache) in a file named by a digest of the weights,
the export settings and torch's version, and loaded from there afterwards; a damaged file is exported again.
Without onnxruntime or onnx, or with IMGSIM_EMBED_RUNTIME=torch, the PyTorch pass runs.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import warnings

import numpy as np

__all__ = ["RUNTIME_ENV", "cache_dir", "session_for"]

RUNTIME_ENV = "IMGSIM_EMBED_RUNTIME"  # "torch" forces the PyTorch pass (the bench's same-run comparison)
OPSET = 17
_FORMAT = 1  # raise when the export changes (input/output names, the wrapped method): old files are not reused
_lock = threading.Lock()


def cache_dir() -> str:
    """imgsim's cache folder for exported graphs. XDG Base Directory: $XDG_CACHE_HOME when absolute."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "imgsim", "onnx")


def _digest(module, name: str, size: int) -> str:
    import torch

    h = hashlib.sha256(f"{name}:{size}:{OPSET}:{_FORMAT}:{torch.__version__}".encode())
    for key, t in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def _export(module, size: int, path: str) -> None:
    """module.forward_features as an ONNX graph (batch axis dynamic) written to `path` atomically."""
    import torch

    class Features(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.forward_features(x)

    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".part")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on the padding arithmetic, constant here
            torch.onnx.export(Features(module).eval(), (torch.zeros(1, 3, size, size),), tmp, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False,
                              opset_version=OPSET)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def session_for(module, name: str, size: int, threads: int):
    """An onnxruntime InferenceSession computing module.forward_features on (n, 3, size, size) float32,
    or None where ONNX Runtime cannot be used (not installed, forced off, the export failed)."""
    if os.environ.get(RUNTIME_ENV, "").lower() == "torch":
        return None
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    path = os.path.join(cache_dir(), f"{name}-{_digest(module, name, size)}.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # Threads that spin between batches would take the cores the decode workers need, and the arena keeps
    # its high-water mark (380 MB more at peak on the 846-file bench folder): off, both.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.enable_cpu_mem_arena = False
    with _lock:  # one export at a time in this process; another process writes its own temporary file
        for attempt in range(2):
            try:
                if attempt or not os.path.exists(path):
                    _export(module, size, path)
                sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
                # The graph must answer what the module answers: a stale or damaged file is exported again.
                x = np.linspace(-1, 1, 3 * size * size, dtype=np.float32).reshape(1, 3, size, size)
                import torch

                with torch.inference_mode():
                    want = module.forward_features(torch.from_numpy(x)).numpy()
                got = sess.run(None, {"x": x})[0]
                if got.shape == want.shape and np.allclose(got, want, rtol=1e-3, atol=1e-4):
                    return sess
            except Exception:  # noqa: BLE001 - a file onnxruntime cannot load, or an export torch refuses
                pass
        return None
