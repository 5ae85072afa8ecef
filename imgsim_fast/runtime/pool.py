"""Hash folders or lists of image files on all cores: load + hash in chunks on a process pool.

Each worker loads a chunk of files (`loading.load_image`, JPEGs draft-decoded at `hashing.draft_size`)
and hashes them as one batch (`hashing.hash_images`); a bad file, or a worker that dies on one, becomes
a `LoadFailure` and the run goes on. Output order is the input order whatever the number of workers.
"""
from __future__ import annotations

import math
import multiprocessing
import multiprocessing.context
from multiprocessing import popen_forkserver, spawn
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from imgsim_fast.features import hashing
from imgsim_fast.features.codes import words_for_bits
from imgsim_fast.io.loading import (DEFAULT_EXTENSIONS, DEFAULT_MAX_PIXELS, DEFAULT_MEMORY_BUDGET, ImageLoadError, LoadFailure,
                      iter_image_files, load_image)
from imgsim_fast.runtime.progress import progress_bar

__all__ = ["HashResult", "default_workers", "hash_paths", "process_pool", "run_pool"]

# Decoded pixels a worker holds before hashing them as a batch. JPEGs arrive draft-reduced and small,
# so a whole chunk batches; full-size PNGs (8 MP wallpapers) flush every few files, which bounds a
# worker's memory near 100 MiB whatever the chunk size.
_BATCH_PIXELS = 32 * 1024 * 1024
# Default chunk: big enough to amortise a task's pickling and the numba call, small enough that every
# worker gets several chunks (load balance) and progress moves.
_MAX_AUTO_CHUNK = 32
_CHUNKS_PER_WORKER = 4


@dataclass
class HashResult:
    """Codes of the files that hashed, aligned row for row with `paths`, and what failed and why."""

    paths: list[str]
    codes: dict[str, np.ndarray]  # kind -> (len(paths), words) uint64
    failures: list[LoadFailure] = field(default_factory=list)
    kinds: tuple[str, ...] = ("phash",)
    passed_over: list[str] = field(default_factory=list)  # files in walked folders not named like images
    mode: str = "fast"
    hash_size: int = 8

    def __len__(self) -> int:
        return len(self.paths)

    def to_rows(self) -> list[dict]:
        """One row per hashed file: the path (names.path_text) and each kind's code in hex."""
        from imgsim_fast.features.codes import to_hex
        from imgsim_fast.io.names import path_text

        hexes = {k: to_hex(self.codes[k], hashing.code_bits(k, self.hash_size)) for k in self.kinds}
        return [{"path": path_text(p), **{k: hexes[k][i] for k in self.kinds}} for i, p in enumerate(self.paths)]

    def to_arrow(self):
        """The rows as a pyarrow Table (the [arrow] extra)."""
        from imgsim_fast.io.tables import to_arrow

        return to_arrow(self.to_rows(), ("path", *self.kinds))

    def to_pandas(self):
        """The rows as a pandas DataFrame (the [arrow] extra)."""
        from imgsim_fast.io.tables import to_pandas

        return to_pandas(self.to_rows(), ("path", *self.kinds))


class _Config(NamedTuple):
    kinds: tuple[str, ...]
    mode: str
    hash_size: int
    min_size: tuple[int, int] | None
    max_pixels: int | None
    max_bytes: int | None = DEFAULT_MEMORY_BUDGET


class _ChunkResult(NamedTuple):
    indices: list[int]  # input positions of the hashed files, ascending
    codes: dict[str, np.ndarray]  # kind -> (len(indices), words)
    failures: list[tuple[int, LoadFailure]]


def default_workers() -> int:
    """CPUs this process may run on (affinity-aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def hash_paths(
    paths_or_roots,
    *,
    kinds: Sequence[str] = ("phash",),
    mode: str = "fast",
    hash_size: int = 8,
    workers: int | None = None,
    progress: bool | None = None,
    chunk_size: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = DEFAULT_MEMORY_BUDGET,
    recursive: bool = True,
    follow_symlinks: bool = False,
    extensions=DEFAULT_EXTENSIONS,
) -> HashResult:
    """Hash image files and folders (walked by `loading.iter_image_files`) with the `kinds` hashes.

    workers: processes; None uses every CPU this process may run on (one chunk or fewer runs in this
        process), 1 runs here with no pool. Pools use the "forkserver" start method where there is one
        (else "spawn"): forking a process that already runs numba or torch threads is unsafe. As with
        any spawn-style pool, a script calling this must guard its entry point with
        `if __name__ == "__main__":`.
    progress: a tqdm bar on stderr; None shows it only when stderr is a terminal.
    chunk_size: files per task; None picks up to 32, aiming at 4 chunks per worker.
    max_pixels, max_bytes: `loading.load_image`'s limits; max_bytes is the memory one image may cost a
        worker (default 768 MiB), so a pool needs about workers x (max_bytes + ~170 MiB of code).
    extensions: the file name extensions a folder walk takes (files named as roots are always taken);
        the files it passes over are listed in `passed_over`.

    A file that fails to load or hash, or whose worker process dies, is a LoadFailure in
    `failures` (walk failures first, then files in input order) and never stops the run.
    """
    kinds = tuple(kinds)
    min_size = hashing.draft_size(kinds, mode, hash_size)  # also validates kinds, mode and hash_size
    if workers is None:
        auto, workers = True, default_workers()
    else:
        auto = False
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int or None, got {workers!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")

    failures: list[LoadFailure] = []
    passed_over: list[str] = []
    paths = list(iter_image_files(paths_or_roots, recursive=recursive, follow_symlinks=follow_symlinks,
                                  extensions=extensions, on_error=failures.append, on_skip=passed_over.append))
    cfg = _Config(kinds, mode, hash_size, min_size, max_pixels, max_bytes)
    if chunk_size is None:
        chunk_size = max(1, min(_MAX_AUTO_CHUNK, math.ceil(len(paths) / (_CHUNKS_PER_WORKER * workers))))
    items = list(enumerate(paths))
    chunks = [items[i:i + chunk_size] for i in range(0, len(items), chunk_size)]
    in_process = workers == 1 or not chunks or (auto and len(chunks) == 1)
    workers = min(workers, len(chunks))

    bar = progress_bar(len(paths), progress)
    try:
        if in_process:
            results = []
            for chunk in chunks:
                results.append(_hash_chunk(chunk, cfg))
                bar.update(len(chunk))
        else:
            results = run_pool(_hash_chunk, chunks, cfg, workers, bar.update, _failed)
    finally:
        bar.close()
    result = _assemble(results, paths, failures, cfg)
    result.passed_over = passed_over
    return result


def _assemble(results: list[_ChunkResult], paths: list[str], walk_failures: list[LoadFailure],
              cfg: _Config) -> HashResult:
    indices = [i for r in results for i in r.indices]
    order = np.argsort(np.asarray(indices, dtype=np.int64), kind="stable")
    codes = {}
    for kind in cfg.kinds:
        words = words_for_bits(hashing.code_bits(kind, cfg.hash_size))
        parts = [r.codes[kind] for r in results if len(r.indices)]
        stacked = np.concatenate(parts) if parts else np.zeros((0, words), dtype=np.uint64)
        codes[kind] = np.ascontiguousarray(stacked[order], dtype=np.uint64)
    file_failures = sorted((pair for r in results for pair in r.failures), key=lambda p: p[0])
    return HashResult(
        paths=[paths[indices[j]] for j in order],
        codes=codes,
        failures=walk_failures + [f for _, f in file_failures],
        kinds=cfg.kinds,
        mode=cfg.mode,
        hash_size=cfg.hash_size,
    )


# --------------------------------------------------------------------------------------------------
# Worker side


def _hash_chunk(chunk: list[tuple[int, str]], cfg: _Config) -> _ChunkResult:
    """Load and hash `chunk` [(index, path)], batching up to _BATCH_PIXELS decoded pixels per call."""
    indices: list[int] = []
    parts: dict[str, list[np.ndarray]] = {k: [] for k in cfg.kinds}
    failures: list[tuple[int, LoadFailure]] = []
    batch: list[tuple[int, str, object]] = []
    batch_pixels = 0

    def flush():
        try:
            codes = hashing.hash_images([im for _, _, im in batch], cfg.kinds, cfg.mode, cfg.hash_size)
        except Exception:
            # One image spoiled the batch: hash one by one so only that one fails.
            for i, path, im in batch:
                try:
                    one = hashing.hash_images([im], cfg.kinds, cfg.mode, cfg.hash_size)
                except Exception as exc:
                    failures.append((i, LoadFailure(path, f"hashing failed: {type(exc).__name__}: {exc}",
                                                    "hash_error")))
                    continue
                indices.append(i)
                for k in cfg.kinds:
                    parts[k].append(one[k])
        else:
            indices.extend(i for i, _, _ in batch)
            for k in cfg.kinds:
                parts[k].append(codes[k])
        batch.clear()

    for i, path in chunk:
        try:
            im = load_image(path, min_size=cfg.min_size, max_pixels=cfg.max_pixels, max_bytes=cfg.max_bytes)
        except ImageLoadError as exc:
            failures.append((i, exc.to_failure()))
            continue
        except Exception as exc:  # a bug or an odd decoder: this file fails, the chunk goes on
            failures.append((i, LoadFailure(path, f"unexpected {type(exc).__name__}: {exc}", "error")))
            continue
        batch.append((i, path, im))
        batch_pixels += im.width * im.height
        if batch_pixels >= _BATCH_PIXELS:
            flush()
            batch_pixels = 0
    if batch:
        flush()
    codes = {}
    for k in cfg.kinds:
        words = words_for_bits(hashing.code_bits(k, cfg.hash_size))
        codes[k] = np.concatenate(parts[k]) if parts[k] else np.zeros((0, words), dtype=np.uint64)
    return _ChunkResult(indices, codes, failures)


# --------------------------------------------------------------------------------------------------
# Pool side


class _NoMainPopen(popen_forkserver.Popen):
    """Starts a worker without re-running the caller's main script in it.

    multiprocessing prepares every spawn-style child by importing the parent's `__main__` (as
    `__mp_main__`), so a script without `if __name__ == "__main__":` runs again in each worker (and in
    the forkserver, when '__main__' is preloaded) and starts pools of its own: the README example saved as
    a plain script turned all 546 files of a folder into failures (issue 12). Our workers only run
    functions of imgsim_fast, which they import by name, so the main module is left out of their
    preparation data.
    """

    def _launch(self, process_obj):
        real = spawn.get_preparation_data

        def without_main(name):
            data = real(name)
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
            return data

        spawn.get_preparation_data = without_main  # read once, by the base _launch, in this thread
        try:
            super()._launch(process_obj)
        finally:
            spawn.get_preparation_data = real


class _WorkerProcess(multiprocessing.context.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj):
        return _NoMainPopen(process_obj)


class _WorkerContext(multiprocessing.context.ForkServerContext):
    Process = _WorkerProcess


_WORKER_CONTEXT = _WorkerContext()


def _mp_context():
    if "forkserver" in multiprocessing.get_all_start_methods():
        # Workers fork from a server that has already imported NumPy, numba, Pillow and the hashing
        # module and run its kernels once (runtime/warmup.py), so a pool's first chunk starts at once
        # rather than ~0.5 s later. Takes effect when this process first starts its forkserver. The
        # caller's '__main__' is not preloaded (see _NoMainPopen).
        _WORKER_CONTEXT.set_forkserver_preload(["imgsim_fast.runtime.warmup"])
        return _WORKER_CONTEXT
    return multiprocessing.get_context("spawn")


def _die_with(main_pid: int) -> None:
    """Worker initializer: end this worker as soon as process `main_pid` (the pool's owner) ends.

    A worker's parent is the forkserver, not the main process, and the forkserver only exits once every
    worker has closed its copy of the forkserver's "alive" pipe; workers wait on a queue whose write end
    they hold themselves. So after a `kill -9` of the main process nothing ever ended (issue 11: the
    forkserver, the resource tracker and every worker, ~360 MB, alive for good). Each worker watches the
    main process: once it is gone the worker exits, the forkserver sees its alive pipe close and exits,
    and the resource tracker, left with no writer, exits too.
    """
    try:
        fd = os.pidfd_open(main_pid)  # Linux >= 5.3: readable when the process exits, no polling
    except ProcessLookupError:  # the main process died before this worker started
        os._exit(1)
    except (AttributeError, OSError):
        fd = None

    def watch():
        if fd is not None:
            select.select([fd], [], [])
        else:
            while _alive(main_pid):
                time.sleep(0.5)
        os._exit(1)  # mid-decode or idle on the queue: nothing in this worker outlives its owner

    threading.Thread(target=watch, name="imgsim-parent-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_pool(workers: int, ctx=None) -> ProcessPoolExecutor:
    """A ProcessPoolExecutor whose workers exit when this process ends, even by SIGKILL (`_die_with`).
    ctx: a multiprocessing context (default: the pipeline's forkserver with the warm-up preload)."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx or _mp_context(), initializer=_die_with,
                               initargs=(os.getpid(),))


def run_pool(fn: Callable, chunks: list, cfg, workers: int, on_progress: Callable[[int], None],
             failed: Callable) -> list:
    """fn(chunk, cfg) for every chunk on `workers` processes; a crash costs only the file that caused it.

    `fn` must be picklable (a module-level function); results come back in completion order, so a
    chunk's items should carry their input positions. failed(item, reason, kind, cfg) makes the result
    standing for one item whose worker died or raised; it runs in this process.

    At most 2 * workers chunks are in flight. When a worker dies, every in-flight chunk is suspect
    (the pool fails them all); their files are rerun one per task on a single-process pool, so the
    file that kills a worker again is pinpointed and recorded, and the rest of the queue continues
    on a fresh pool. Workers exit when this process ends, even by SIGKILL (`_die_with`).
    """
    ctx = _mp_context()
    queue = deque(chunks)
    results = []
    while queue:
        suspects = _run_window(fn, queue, cfg, workers, ctx, results, on_progress)
        for chunk in suspects:
            results.extend(_run_isolated(fn, chunk, cfg, ctx, on_progress, failed))
    return results


def _run_window(fn, queue: deque, cfg, workers: int, ctx, results: list, on_progress) -> list:
    """Run queued chunks until the queue is empty or the pool breaks; return the suspect chunks."""
    window = 2 * workers
    in_flight: dict = {}
    suspects: list = []
    pool = process_pool(workers, ctx)
    try:
        while queue or in_flight:
            broken = False
            while queue and len(in_flight) < window:
                chunk = queue.popleft()
                try:
                    in_flight[pool.submit(fn, chunk, cfg)] = chunk
                except BrokenProcessPool:
                    queue.appendleft(chunk)
                    broken = True
                    break
            if not broken:
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for fut in done:
                    chunk = in_flight.pop(fut)
                    exc = fut.exception()
                    if exc is None:
                        results.append(fut.result())
                        on_progress(len(chunk))
                    else:  # BrokenProcessPool, or an exception that escaped fn: isolate its files
                        suspects.append(chunk)
                        broken = broken or isinstance(exc, BrokenProcessPool)
            if broken:
                suspects.extend(in_flight.values())
                in_flight.clear()
                break
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return suspects


def _run_isolated(fn, chunk: list, cfg, ctx, on_progress, failed) -> list:
    """Rerun each item of a suspect chunk alone on one process; a crash names its file."""
    results = []
    pool = None
    try:
        for item in chunk:
            if pool is None:
                pool = process_pool(1, ctx)
            try:
                results.append(pool.submit(fn, [item], cfg).result())
            except BrokenProcessPool:
                pool.shutdown(wait=True)
                pool = None
                results.append(failed(item, "the worker process died while decoding this file", "worker_crash", cfg))
            except Exception as exc:
                results.append(failed(item, f"unexpected {type(exc).__name__}: {exc}", "error", cfg))
            on_progress(1)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return results


def _failed(item: tuple[int, str], reason: str, kind: str, cfg: _Config) -> _ChunkResult:
    i, path = item
    codes = {k: np.zeros((0, words_for_bits(hashing.code_bits(k, cfg.hash_size))), dtype=np.uint64)
             for k in cfg.kinds}
    return _ChunkResult([], codes, [(i, LoadFailure(path, reason, kind))])
