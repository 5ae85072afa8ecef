"""Ctrl-C (README "Exit status": 130 interrupted): the terminal sends SIGINT to every process of the group,
the pool's workers and its forkserver too. The command must say one line, exit 130 at once, and leave no
process behind; before, each worker printed a KeyboardInterrupt traceback of its own, and the command could
hang after "interrupted" while the interpreter joined a pool's workers that no one told to stop."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

IMGSIM = [sys.executable, "-m", "imgsim_fast"]


def _gone(pgid: int, within: float) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


# Early (the forkserver importing its warm-up: it printed a traceback there) and later (workers decoding).
@pytest.mark.parametrize("after", [1.5, 2.0, 2.5, 4.0])
def test_ctrl_c_ends_the_command_in_one_line_with_no_process_left(tmp_path, photos, after):
    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(8):  # enough work that the interrupt lands mid-run on any machine
        for p in photos[:6]:
            shutil.copyfile(p, folder / f"{k}_{os.path.basename(p)}")
    tmp = tmp_path / "tmp"  # multiprocessing's temporary folder (the forkserver's socket) goes here
    tmp.mkdir()
    proc = subprocess.Popen(IMGSIM + ["dedup", str(folder), "--catalog", str(tmp_path / "c.sqlite"),
                                      "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "TMPDIR": str(tmp)})
    time.sleep(after)
    if proc.poll() is not None:
        pytest.skip(f"the run ended in under {after} s: nothing to interrupt")
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: the whole group
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("still running 60 s after Ctrl-C")
    assert proc.returncode == 130, (proc.returncode, err)
    assert err.decode() == "imgsim: interrupted\n", err.decode()
    assert _gone(proc.pid, 10), "a worker, forkserver or tracker outlived the command"
    assert os.listdir(tmp) == []  # the exit at once still removes multiprocessing's folder
