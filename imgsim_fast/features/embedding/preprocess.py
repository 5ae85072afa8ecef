"""Image preprocessing for the embedding models, torch-free so decode workers start without importing torch.

Workers turn a path into a uint8 (size, size, 3) array: decode (reduced-size JPEG decoding through
`loading.load_image(min_size=...)`), resize and crop with Pillow exactly as the model's training
preprocessing does. The float normalisation ((x - mean) / std) runs on the model's device, where it is
cheaper and where uint8 batches are 4x smaller to ship (pinned-memory copies on CUDA).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from imgsim_fast.io.loading import ImageLoadError, LoadFailure, load_image

__all__ = ["PreprocessSpec", "prepare_image", "load_and_prepare", "prepare_chunk"]


@dataclass(frozen=True)
class PreprocessSpec:
    """How one model wants its input. mean/std are per RGB channel, in 0..255 units.

    method "tf_center_crop" (EfficientNet eval, tensorflow/tpu models/official/efficientnet/preprocessing.py
    `_decode_and_center_crop`): a central square of side size/(size+crop_padding) of the short side, resized
    to size x size. method "shortest_edge" (CLIPImageProcessor): the short side resized to `resize` (the
    long side to int(resize * long / short)), then a central size x size crop, offsets (h - size) // 2.
    """

    method: str
    size: int
    resize: int = 0
    crop_padding: int = 32
    resample: int = Image.Resampling.BICUBIC
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)

    def __post_init__(self):
        if self.method not in ("tf_center_crop", "shortest_edge"):
            raise ValueError(f"unknown preprocessing method {self.method!r}")
        if self.size < 1 or (self.method == "shortest_edge" and self.resize < self.size):
            raise ValueError(f"bad sizes: size={self.size}, resize={self.resize} (crop larger than the resize "
                             "is not supported)")

    @property
    def min_decode_size(self) -> int:
        """Short side the decoder must keep so the crop is never upsampled by the draft mode."""
        if self.method == "tf_center_crop":
            return self.size + self.crop_padding
        return self.resize


def prepare_image(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """One decoded image (any mode) -> uint8 array (size, size, 3), RGB."""
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    w, h = img.size
    s = spec.size
    if spec.method == "tf_center_crop":
        crop = max(1, int(s / (s + spec.crop_padding) * min(w, h)))
        top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
        # TF decodes the crop window alone, so nothing outside it reaches the filter: crop, then resize.
        # TF resizes with bicubic without antialiasing; Pillow's bicubic antialiases when shrinking, a
        # deliberate difference (less aliasing, same class on real photos).
        out = img.crop((left, top, left + crop, top + crop)).resize((s, s), spec.resample)
    else:
        r = spec.resize
        if w <= h:
            nw, nh = r, int(r * h / w)
        else:
            nw, nh = int(r * w / h), r
        top, left = (nh - s) // 2, (nw - s) // 2
        # Resize the whole image, then crop, exactly as CLIPImageProcessor does (bit-identical). Resizing
        # only the crop's box would save work on wide images, but float box edges shift some pixels by
        # up to 2 levels.
        out = img.resize((nw, nh), spec.resample).crop((left, top, left + s, top + s))
    if out.mode != "RGB":
        out = out.convert("RGB")
    return np.array(out, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on read-only arrays


def load_and_prepare(path: str, spec: PreprocessSpec) -> np.ndarray:
    """Decode `path` at the smallest JPEG scale that keeps the crop sharp, then prepare_image()."""
    m = spec.min_decode_size
    img = load_image(path, min_size=(m, m))
    return prepare_image(img, spec)


def prepare_chunk(spec: PreprocessSpec, paths: list[str]) -> list[tuple[np.ndarray | None, LoadFailure | None]]:
    """Worker task: one (array, None) or (None, failure) per path; never raises for a bad file."""
    out = []
    for p in paths:
        try:
            out.append((load_and_prepare(p, spec), None))
        except ImageLoadError as exc:
            out.append((None, exc.to_failure()))
        except MemoryError:
            out.append((None, LoadFailure(p, "out of memory while decoding or resizing", "too_large")))
        except Exception as exc:  # a bug or an exotic decoder error must not end the whole run
            out.append((None, LoadFailure(p, f"{type(exc).__name__}: {exc}", "error")))
    return out


