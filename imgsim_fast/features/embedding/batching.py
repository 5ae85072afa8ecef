"""Batched embedding of image files: parallel decode workers feeding the model, per-file failures kept.

Decoding and resizing run in worker processes (`preprocess.prepare_chunk`), started with forkserver (spawn
where there is none), never fork: the parent holds torch's thread pools, which a forked child could find
locked. At most a few chunks per worker are in flight, so memory stays bounded however long the list, and
results come back in submission order, so the output keeps the input order. While the model runs on one
batch the workers decode the next ones; on CUDA the batch is copied from pinned memory without blocking and
the vectors come back through a pinned buffer one batch later, so the GPU is never waiting on the host copy.
"""
from __future__ import annotations

import collections
import functools
import math
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from imgsim_fast.io.loading import LoadFailure
from imgsim_fast.features.embedding.models import DEFAULT_MODEL, EmbeddingModel, load_model, resolve_device
from imgsim_fast.features.embedding.preprocess import PreprocessSpec, prepare_chunk, prepare_image
from imgsim_fast.runtime.progress import progress_bar

__all__ = ["EmbedResult", "embed_paths", "embed_images", "embed_text", "get_model"]

_OUT_DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass
class EmbedResult:
    """Vectors for the files that loaded, in input order; failures for the rest."""

    paths: list[str]
    vectors: np.ndarray  # (len(paths), dim), float32 or float16, unit L2 norm
    failures: list[LoadFailure] = field(default_factory=list)
    indices: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # row -> position in the input
    model: str = ""
    device: str = ""

    def __len__(self) -> int:
        return len(self.paths)


@functools.lru_cache(maxsize=4)
def _cached_model(name: str, device: str, amp, runtime: str) -> EmbeddingModel:
    return load_model(name, device, amp=amp, runtime=runtime)


def get_model(model, device=None, amp="auto", runtime="auto") -> EmbeddingModel:
    """An EmbeddingModel as given, or a name/path loaded once and cached (4 most recent) per device
    (runtime: as load_model takes it)."""
    if isinstance(model, EmbeddingModel):
        if device is not None and resolve_device(device) != model.device:
            raise ValueError(f"model is on {model.device}, device={device!r} asked; load it on that device")
        return model
    return _cached_model(os.fspath(model), str(resolve_device(device)), amp, runtime)


def _check_dtype(dtype) -> type:
    key = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if key not in _OUT_DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    return _OUT_DTYPES[key]


def default_workers(device: torch.device) -> int:
    """Decode workers: on CPU the model needs the cores (EfficientNet-Lite0 costs several times a
    reduced-size JPEG decode per image), so a quarter of them; on CUDA decoding is the bottleneck, so all
    but one (the feeding process)."""
    n = os.cpu_count() or 1
    return max(1, n // 4) if device.type == "cpu" else max(1, n - 1)


def _crash_failure(path: str) -> LoadFailure:
    return LoadFailure(path, "the decode worker process died on this file (a crash inside the image decoder?)",
                       "worker_crash")


def _pool(workers: int, ctx) -> ProcessPoolExecutor:
    """The pipeline's one pool (imgsim_fast.runtime.pool.process_pool): its workers exit when this process ends,
    even by kill -9, so an `imgsim index --embed` killed mid-run leaves no decode worker, forkserver or
    resource tracker behind (issue 11). Imported here, not at the top: only a run with workers needs it."""
    from imgsim_fast.runtime.pool import process_pool

    return process_pool(workers, ctx)


def _isolate(ctx, spec, files: list[str], task) -> list:
    """After a worker crash: run each file alone in a one-process pool, to blame only the guilty one."""
    out = []
    pool = _pool(1, ctx)
    try:
        for p in files:
            try:
                out.extend(pool.submit(task, spec, [p]).result())
            except BrokenProcessPool:
                out.append((None, _crash_failure(p)))
                pool.shutdown(wait=True)
                pool = _pool(1, ctx)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def _prepared_stream(paths: list[str], spec: PreprocessSpec, workers: int, chunk: int,
                     task=prepare_chunk) -> Iterator[tuple[np.ndarray | None, LoadFailure | None]]:
    """(array, None) or (None, failure) per path, in input order."""
    chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
    if workers == 0:
        for c in chunks:
            yield from task(spec, c)
        return
    ctx = None  # the one pool's context (runtime.pool): forkserver, warm, the caller's script not re-run
    window = 4 * workers  # chunks in flight: enough to hide decode jitter, bounded memory
    pool = _pool(workers, ctx)
    inflight: collections.deque = collections.deque()
    nxt = 0
    try:
        while nxt < len(chunks) or inflight:
            while nxt < len(chunks) and len(inflight) < window:
                inflight.append((chunks[nxt], pool.submit(task, spec, chunks[nxt])))
                nxt += 1
            files, fut = inflight.popleft()
            try:
                res = fut.result()
            except BrokenProcessPool:
                # A worker died (segfault or OOM kill in a decoder). Every future in flight fails with it:
                # redo those files one by one, then go on with a fresh pool.
                pending = [files] + [f for f, _ in inflight]
                inflight.clear()
                pool.shutdown(wait=True, cancel_futures=True)
                yield from _isolate(ctx, spec, [p for c in pending for p in c], task)
                pool = _pool(workers, ctx)
                continue
            yield from res
    except BaseException:  # Ctrl-C, or the consumer closing the stream early: no chunk in flight is wanted
        from imgsim_fast.runtime.pool import stop

        stop(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _Collector:
    """Runs batches through the model and writes the vectors; on CUDA reads each batch's result one
    batch later through a pinned buffer, so the host never stalls the GPU on a device-to-host copy."""

    def __init__(self, model: EmbeddingModel, capacity: int, out_dtype):
        self.model, self.out_dtype = model, out_dtype
        self.vectors = np.empty((capacity, model.dim), out_dtype)
        self.n = 0
        self.cuda = model.device.type == "cuda"
        self._pending = None

    def run(self, batch: np.ndarray) -> None:
        y = self.model.embed_pixels(torch.from_numpy(batch))
        rows = slice(self.n, self.n + batch.shape[0])
        self.n += batch.shape[0]
        if self.cuda:
            host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
            host.copy_(y, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._finish()
            self._pending = (rows, host, event)
        else:
            self.vectors[rows] = y.numpy()

    def _finish(self) -> None:
        if self._pending is not None:
            rows, host, event = self._pending
            event.synchronize()
            self.vectors[rows] = host.numpy()
            self._pending = None

    def result(self) -> np.ndarray:
        self._finish()
        return self.vectors[:self.n]


def embed_paths(paths: Iterable, model=DEFAULT_MODEL, batch_size: int | None = None, device=None,
                workers: int | None = None, dtype="float32", progress: bool | None = None, *,
                amp="auto") -> EmbedResult:
    """Embed image files. Files that cannot be loaded become `failures`; the rest go on.

    model: a name ("efficientnet-lite0", default), a CLIP folder or hub name, or a loaded EmbeddingModel.
    batch_size: images per forward pass (default 32 on CPU, 256 on CUDA).
    device: None -> CUDA if available, else CPU (reported in the result's `device`).
    workers: decode processes (0: decode in this process; None: see default_workers()).
    dtype: "float32" or "float16" for the returned vectors (always unit L2 norm).
    progress: a tqdm bar on stderr; None shows it only when stderr is a terminal.
    amp: autocast dtype on CUDA ("auto" = float16; "bfloat16"; None for float32).
    """
    paths = [os.fspath(p) for p in paths]
    out_dtype = _check_dtype(dtype)
    m = get_model(model, device, amp)
    if batch_size is None:
        batch_size = 256 if m.device.type == "cuda" else 32
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if workers is None:
        workers = default_workers(m.device)
    if not isinstance(workers, (int, np.integer)) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    # Chunks of a few files amortise the inter-process round trip; small enough that every worker has work.
    chunk = max(1, min(16, math.ceil(batch_size / max(1, workers))))
    if len(paths) <= chunk:
        workers = 0  # starting processes would cost more than decoding these few files here

    s = m.spec.size
    buf = np.empty((batch_size, s, s, 3), np.uint8)
    fill = 0
    ok_idx: list[int] = []
    failures: list[LoadFailure] = []
    coll = _Collector(m, len(paths), out_dtype)
    with progress_bar(len(paths), progress, f"embed {m.name}") as bar:
        for i, (arr, failure) in enumerate(_prepared_stream(paths, m.spec, int(workers), chunk)):
            bar.update(1)
            if failure is not None:
                failures.append(failure)
                continue
            buf[fill] = arr
            fill += 1
            ok_idx.append(i)
            if fill == batch_size:
                coll.run(buf)
                fill = 0
        if fill:
            coll.run(buf[:fill])
    vectors = coll.result()
    idx = np.asarray(ok_idx, np.int64)
    return EmbedResult([paths[i] for i in ok_idx], vectors, failures, idx, m.name, str(m.device))


def embed_images(images: Sequence, model=DEFAULT_MODEL, batch_size: int | None = None, device=None,
                 dtype="float32", *, amp="auto") -> np.ndarray:
    """Embed decoded images (PIL images, or uint8 arrays HxWx3 RGB / HxW grey) -> (n, dim) unit vectors."""
    from PIL import Image

    out_dtype = _check_dtype(dtype)
    m = get_model(model, device, amp)
    if batch_size is None:
        batch_size = 256 if m.device.type == "cuda" else 32
    coll = _Collector(m, len(images), out_dtype)
    for start in range(0, len(images), batch_size):
        batch = []
        for im in images[start:start + batch_size]:
            if isinstance(im, np.ndarray):
                if im.dtype != np.uint8 or not (im.ndim == 2 or (im.ndim == 3 and im.shape[2] == 3)):
                    raise ValueError(f"arrays must be uint8 HxWx3 (RGB) or HxW, got {im.shape} {im.dtype}")
                im = Image.fromarray(im)
            elif not isinstance(im, Image.Image):
                raise TypeError(f"expected PIL images or uint8 arrays, got {type(im).__name__}")
            batch.append(prepare_image(im, m.spec))
        if batch:
            coll.run(np.stack(batch))
    if not len(images):
        return np.empty((0, m.dim), out_dtype)
    return coll.result()


def embed_text(texts, model, device=None, *, amp="auto") -> np.ndarray:
    """Text queries -> float32 (n, dim) unit vectors, comparable with the same CLIP model's image vectors."""
    return get_model(model, device, amp).embed_text([texts] if isinstance(texts, str) else list(texts))
