"""EfficientNet-Lite0 on ONNX Runtime (features/embedding/onnx_cpu.py): the features torch computes, a cached
graph used only while its bytes match their digest, and torch wherever the graph cannot be had."""
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from imgsim_fast.features.embedding import ModelNotAvailableError, embed_paths, load_model
from imgsim_fast.features.embedding import onnx_cpu

from conftest import PHOTO_DIR

# Through onnx_cpu, never `import onnxruntime` here: that import would record telemetry (see the last test).
if not onnx_cpu.available():
    pytest.skip("onnxruntime is not installed", allow_module_level=True)
pytest.importorskip("onnx")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return os.path.join(str(tmp_path / "cache"), "imgsim_fast", "onnx")


def _graphs(cache: str) -> list[str]:
    return sorted(glob.glob(os.path.join(cache, "*.onnx")))


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _photos(n: int) -> list[str]:
    files = sorted(f for f in glob.glob(os.path.join(PHOTO_DIR, "**", "*"), recursive=True)
                   if f.endswith((".jpg", ".png")))[:n]
    if len(files) < n:
        pytest.skip(f"real photos missing under {PHOTO_DIR} (scripts/fetch_photos.sh fetches them)")
    return files


def test_onnx_runtime_gives_torchs_features_on_real_photos(cache):
    ort = load_model("efficientnet-lite0", device="cpu")
    ref = load_model("efficientnet-lite0", device="cpu", runtime="torch")
    assert ort.runtime.startswith("onnxruntime ") and ref.runtime.startswith("torch ")
    files = _photos(12)
    # Batches of 11 and 1: ONNX Runtime runs them RUN_BATCH (8) at a time, so in parts of 8 and 3.
    assert onnx_cpu.RUN_BATCH == 8
    a = embed_paths(files, ort, batch_size=11, workers=1).vectors
    b = embed_paths(files, ref, batch_size=11, workers=1).vectors
    assert a.shape == b.shape == (12, 1280)
    # Unit vectors: 1e-5 apart (float32 kernels summing in another order), where different photos are far apart.
    assert np.abs(a - b).max() < 1e-4
    assert (a * b).sum(1).min() > 0.99999
    assert (a @ a.T)[np.triu_indices(12, 1)].max() < 0.99
    assert len(_graphs(cache)) == 1
    assert ort.embed_pixels(torch.zeros((0, 224, 224, 3), dtype=torch.uint8)).shape == (0, 1280)


def test_a_cached_graph_is_used_and_a_damaged_one_is_not(cache, monkeypatch):
    load_model("efficientnet-lite0", device="cpu")
    (graph,) = _graphs(cache)
    # Kept: a second load exports nothing.
    real_export = onnx_cpu._export
    monkeypatch.setattr(onnx_cpu, "_export", lambda *a: pytest.fail("exported again"))
    assert load_model("efficientnet-lite0", device="cpu").runtime.startswith("onnxruntime")
    # One flipped byte in the weights: the bytes no longer match the name's digest, so the graph is exported
    # again (and replaces it) rather than run with a damaged weight.
    data = bytearray(_read(graph))
    data[len(data) // 2] ^= 0xFF
    with open(graph, "wb") as f:
        f.write(bytes(data))
    calls = []
    monkeypatch.setattr(onnx_cpu, "_export", lambda *a: calls.append(1) or real_export(*a))
    model = load_model("efficientnet-lite0", device="cpu")
    assert calls == [1] and _graphs(cache) == [graph]
    assert _read(graph) != bytes(data)
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8))
    ref = load_model("efficientnet-lite0", device="cpu", runtime="torch")
    assert (model.embed_pixels(x) - ref.embed_pixels(x)).abs().max() < 1e-4


def test_a_cache_that_cannot_be_written_costs_only_the_export(cache, tmp_path, monkeypatch):
    os.makedirs(os.path.dirname(cache))
    open(cache, "w").close()  # a file where the folder would be: nothing can be stored under it
    model = load_model("efficientnet-lite0", device="cpu")
    assert model.runtime.startswith("onnxruntime") and os.path.isfile(cache)


def test_a_cached_graph_that_differs_from_torch_is_not_used(cache, monkeypatch):
    load_model("efficientnet-lite0", device="cpu")
    assert len(_graphs(cache)) == 1
    monkeypatch.setattr(onnx_cpu, "_PROBE_TOLERANCE", -1.0)  # whatever the graph gives now disagrees
    monkeypatch.setattr(onnx_cpu, "_export", lambda *a: pytest.fail("a cached graph is probed, not exported"))
    assert load_model("efficientnet-lite0", device="cpu").runtime.startswith("torch ")


def test_an_export_that_differs_from_torch_is_not_used(cache, monkeypatch):
    monkeypatch.setattr(onnx_cpu, "_PROBE_TOLERANCE", -1.0)  # no export can agree with torch now
    assert load_model("efficientnet-lite0", device="cpu").runtime.startswith("torch ")
    assert _graphs(cache) == []  # and it is not kept for later runs
    with pytest.raises(ModelNotAvailableError, match="cannot run on ONNX Runtime"):
        load_model("efficientnet-lite0", device="cpu", runtime="onnxruntime")


def test_runtime_is_checked():
    with pytest.raises(ValueError, match="runtime must be one of"):
        load_model("efficientnet-lite0", device="cpu", runtime="tensorrt")


def test_onnx_runtime_records_nothing_outside_our_cache(tmp_path):
    # ONNX Runtime's Linux wheels keep usage telemetry from the import on (a device id and an event store
    # under ~/.cache/Microsoft, a file in $TMPDIR) unless ORT_DISABLE_TELEMETRY=1 is set before it loads.
    home, tmp, cache = (tmp_path / d for d in ("home", "tmp", "cache"))
    for d in (home, tmp, cache):
        d.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(home), TMPDIR=str(tmp), XDG_CACHE_HOME=str(cache))
    code = ("import torch; from imgsim_fast.features.embedding import load_model; "
            "m = load_model('efficientnet-lite0', device='cpu'); assert m.runtime.startswith('onnxruntime'); "
            "m.embed_pixels(torch.zeros((2, 224, 224, 3), dtype=torch.uint8))")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
    made = sorted(os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path) for f in fs)
    assert [m for m in made if not m.startswith(os.path.join("cache", "imgsim_fast"))] == [], made
    assert any(m.endswith(".onnx") for m in made)
