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


def test_a_ctrl_c_while_the_forkserver_starts_is_handled_not_lost(monkeypatch):
    """The forkserver is started with SIGINT blocked, not ignored, in the starting thread: ignored, a Ctrl-C
    landing in that window was dropped and the command ran on to the end and exited 0 (seen in CI)."""
    from multiprocessing import forkserver

    from imgsim_fast.runtime import pool

    monkeypatch.setattr(forkserver, "ensure_running", lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        pool._start_forkserver(pool._WORKER_CONTEXT)
        time.sleep(1)  # had it been dropped, nothing comes
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # the mask is restored


def test_a_ctrl_c_before_the_command_starts_is_one_line(monkeypatch, capsys):
    """Imports and argument parsing run inside the handler too (a Ctrl-C there printed a traceback)."""
    import importlib

    cli = importlib.import_module("imgsim_fast.cli.main")

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["dedup", "x"]) == 130
    assert capsys.readouterr().err == "imgsim: interrupted\n"


def test_the_forkserver_starts_with_ctrl_c_blocked_or_ignored():
    """From its first instruction the forkserver must not act on SIGINT: it imports the warm-up module
    (a second) before it ignores SIGINT itself. Starting the resource tracker unblocks SIGINT, so it is
    started first; started inside the forkserver's start, it undid the block (a traceback, seen here)."""
    script = (
        "import time\n"
        "from multiprocessing import forkserver\n"
        "from imgsim_fast.runtime import pool\n"
        "pool._start_forkserver(pool._mp_context())  # with the warm-up preload, as a job starts it\n"
        "pid = forkserver._forkserver._forkserver_pid\n"
        "time.sleep(0.05)\n"
        "status = dict(line.split(':\\t') for line in open(f'/proc/{pid}/status').read().splitlines()\n"
        "              if line.startswith(('SigBlk', 'SigIgn')))\n"
        "print(int(status['SigBlk'], 16) | int(status['SigIgn'], 16))\n"
        # a worker, once the forkserver is ready: SIGINT ignored, as before the block, and not blocked
        "import pathlib\n"
        "with pool.process_pool(1) as ex:\n"
        "    text = ex.submit(pathlib.Path('/proc/self/status').read_text).result()\n"
        "status = dict(line.split(':\\t') for line in text.splitlines() if line.startswith(('SigBlk', 'SigIgn')))\n"
        "print(int(status['SigBlk'], 16), int(status['SigIgn'], 16))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    server, worker = out.stdout.splitlines()
    bit = 1 << (signal.SIGINT - 1)
    assert int(server) & bit, "the forkserver would act on a Ctrl-C"
    blocked, ignored = map(int, worker.split())
    assert ignored & bit and not blocked & bit, "a worker keeps the forkserver's block"
