"""The one process pool: forkserver workers (warm, the caller's script never re-run) that die with their
owner, even by kill -9, and `run_pool`, which isolates a crashing decoder so it costs only its own file.
Every job that decodes (index, dedup, hash, search queries, report thumbnails) runs its workers here."""
from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.context
from multiprocessing import popen_forkserver, spawn
import os
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool



__all__ = ["default_workers", "process_pool", "run_pool"]

def default_workers() -> int:
    """CPUs this process may run on (affinity-aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


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
        _WORKER_CONTEXT.set_forkserver_preload(["imgsim_fast.runtime.warmup", "imgsim_fast.runtime.forkserver_ready"])
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

    Ctrl-C is the main process's to handle (shut the pool down, say "interrupted", exit 130): the terminal
    sends SIGINT to every process of the group, and each worker would otherwise print a KeyboardInterrupt
    traceback of its own.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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


def _start_forkserver(ctx) -> None:
    """Start the forkserver with Ctrl-C blocked (the mask is inherited through fork and exec): it imports
    the warm-up module before it ignores SIGINT itself, and a Ctrl-C in that second would print its
    traceback beside the main process's one-line "interrupted"; there the pending signal is dropped when
    it sets SIGINT to ignored, and it unblocks SIGINT for what it forks (runtime/forkserver_ready.py). Blocked,
    not ignored, in this process: a Ctrl-C that lands while the forkserver is being started waits for the
    unblock and is then handled (or, where another thread of the process takes it, is handled in the main
    thread at once, maybe inside the start). Ignored, it was lost, and the command ran on to the end and
    exited 0 (seen once in CI)."""
    if ctx is not _WORKER_CONTEXT:
        return
    from multiprocessing import forkserver, resource_tracker

    # The forkserver's start starts the resource tracker first, and that start unblocks SIGINT when it is
    # done (SIG_UNBLOCK, not a restore), which would undo the block below before the forkserver is spawned.
    resource_tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # this thread's mask: any thread may
    try:
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def process_pool(workers: int, ctx=None) -> ProcessPoolExecutor:
    """A ProcessPoolExecutor whose workers exit when this process ends, even by SIGKILL (`_die_with`).
    ctx: a multiprocessing context (default: the pipeline's forkserver with the warm-up preload)."""
    ctx = ctx or _mp_context()
    _start_forkserver(ctx)
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_die_with,
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
    except BaseException:
        stop(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return suspects


def stop(pool: ProcessPoolExecutor) -> None:
    """End a pool at once (Ctrl-C, an error): its queued work cancelled and its workers killed, where a plain
    shutdown would let every chunk in flight finish first (workers ignore SIGINT: _die_with)."""
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in list((getattr(pool, "_processes", None) or {}).values()):  # no public handle on the workers
        with contextlib.suppress(OSError, ValueError):
            proc.kill()


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
