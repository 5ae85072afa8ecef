"""Deep embeddings (EfficientNet-Lite0 offline by default, CLIP through transformers), batched on CPU or GPU.

Layout: `preprocess` (torch-free, runs in the decode workers), `efficientnet_lite` (the network),
`models` (loading, devices, image and text towers), `pipeline` (batched embedding of files).
Names are re-exported lazily, so a decode worker importing `preprocess` does not import torch.
"""
from __future__ import annotations

import importlib

__all__ = ["embed_paths", "embed_images", "embed_text", "load_model", "get_model", "EmbedResult",
           "EmbeddingModel", "ModelNotAvailableError", "resolve_device", "DEFAULT_MODEL", "PreprocessSpec"]

_WHERE = {"embed_paths": "batching", "embed_images": "batching", "embed_text": "batching",
          "get_model": "batching", "EmbedResult": "batching", "load_model": "models",
          "EmbeddingModel": "models", "ModelNotAvailableError": "lazy", "resolve_device": "models",
          "DEFAULT_MODEL": "models", "PreprocessSpec": "preprocess"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
