"""The one progress bar of every command (tqdm on stderr), and a timed phase for work with no count.

Shown when stderr is a terminal (progress=None) or when asked (True); `--no-progress` passes False. A
pipe or a log file gets nothing, so scripts that read stderr see only messages (issue 15).
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time

__all__ = ["progress_bar", "phase", "shown"]


def shown(progress: bool | None) -> bool:
    """Whether a bar is drawn: progress None means "when stderr is a terminal"."""
    return sys.stderr.isatty() if progress is None else bool(progress)


def progress_bar(total: int | None, progress: bool | None, desc: str | None = None, unit: str = "img",
                 bar_format: str | None = None):
    """A tqdm bar on stderr; `desc` names the phase (decoding, embedding, ...)."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, disable=not shown(progress), smoothing=0.1, desc=desc,
                dynamic_ncols=True, bar_format=bar_format)


@contextlib.contextmanager
def phase(desc: str, progress: bool | None, tick: float = 0.5):
    """For a step that reports no count (clustering, a layout): a bar with no total whose elapsed time
    moves while the step runs, so a long step is never a silent terminal. Yields nothing useful."""
    bar = progress_bar(None, progress, desc, bar_format="{desc}: {elapsed}{postfix}")
    if bar.disable:
        yield
        return
    stop = threading.Event()

    def refresh():
        while not stop.wait(tick):
            bar.refresh()

    t = threading.Thread(target=refresh, daemon=True)
    t.start()
    start = time.perf_counter()
    try:
        yield
    finally:
        stop.set()
        t.join()
        bar.set_postfix_str(f"done in {time.perf_counter() - start:.1f} s", refresh=False)
        bar.close()
