"""Tests for imgsim_fast.features.hash_files.hash_paths: good files hashed, every bad kind reported, the same answer
on 1 and 2 workers, input order kept, and a worker that dies costing only its file."""
import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from imgsim_fast.features import hashing

from imgsim_fast.features.extract import ExtractSpec, extract_chunk, extract_failed
from imgsim_fast.runtime import pool as pipeline
from imgsim_fast.io.loading import LoadFailure, load_image
from imgsim_fast.features.hash_files import HashResult, hash_paths

SEED = 7


def synthetic(seed: int, size=(120, 90)) -> Image.Image:
    """Distinct smooth pictures: each seed gives its own low-frequency pattern (so its own phash)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)


def header_only_png(w: int, h: int) -> bytes:
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


# Every bad file in the tree and the kind it must be reported with.
EXPECTED_FAILURES = {
    "bad/empty.jpg": "empty",
    "bad/cut.jpg": "truncated",
    "bad/cut.png": "truncated",
    "bad/noise.jpg": "not_image",
    "bad/words.png": "not_image",
    "bad/bomb.png": "too_large",
    "bad/folder.jpg": None,  # a folder with an image name is walked, not reported
    "bad/dangling.jpg": "missing",
    "bad/pipe.jpg": "not_regular_file",
    "bad/self.jpg": "symlink_loop",
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory, photos):
    """good/ (3 real JPEGs, 2 real PNGs, nested synthetic images) beside bad/ (each bad kind)."""
    root = tmp_path_factory.mktemp("tree")
    good = root / "good"
    (good / "nested" / "deeper").mkdir(parents=True)
    jpgs = [p for p in photos if p.endswith(".jpg")]
    pngs = sorted((p for p in photos if p.endswith(".png")), key=os.path.getsize)
    for p in jpgs[:3] + pngs[:2]:
        shutil.copy(p, good / os.path.basename(p))
    synthetic(SEED).save(good / "nested" / "a.png")
    synthetic(SEED + 1).save(good / "nested" / "b.JPG", quality=90)
    synthetic(SEED + 2).convert("L").save(good / "nested" / "deeper" / "grey.tif")
    synthetic(SEED + 3).convert("RGBA").save(good / "nested" / "deeper" / "alpha.webp")
    (good / "notes.txt").write_text("not an image, and not an image name: skipped")

    bad = root / "bad"
    bad.mkdir()
    buf = io.BytesIO()
    synthetic(SEED + 4, (400, 300)).save(buf, "JPEG")
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    synthetic(SEED + 5, (400, 300)).save(buf, "PNG")
    (bad / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (bad / "noise.jpg").write_bytes(np.random.default_rng(SEED).integers(0, 256, 3000, np.uint8).tobytes())
    (bad / "words.png").write_text("hello, this is text\n")
    (bad / "bomb.png").write_bytes(header_only_png(100_000, 100_000))
    (bad / "folder.jpg").mkdir()
    os.symlink(bad / "gone.jpg", bad / "dangling.jpg")
    os.mkfifo(bad / "pipe.jpg")
    os.symlink(bad / "self.jpg", bad / "self.jpg")
    os.symlink(root, bad / "loop")  # bad/loop -> root: a cycle once symlinks are followed
    return root


def good_files(root) -> list[str]:
    """The good images in walk order: entries sorted by name, depth first ("nested" < "usr_share_...")."""
    good = root / "good"
    nested = [good / "nested" / "a.png", good / "nested" / "b.JPG",
              good / "nested" / "deeper" / "alpha.webp", good / "nested" / "deeper" / "grey.tif"]
    photos = sorted(good / n for n in os.listdir(good) if n.endswith((".jpg", ".png")))
    return [str(p) for p in nested + photos]


def reference_codes(paths, kinds, hash_size=8) -> dict:
    """Oracle: load and hash each file on its own, in this process."""
    size = hashing.draft_size(kinds, "fast", hash_size)
    images = [load_image(p, min_size=size) for p in paths]
    return hashing.hash_images(images, kinds, "fast", hash_size)


def kinds_by_name(result: HashResult, root) -> dict:
    return {os.path.relpath(f.path, root): f.kind for f in result.failures}


def test_folder_with_good_and_bad_files(tree):
    result = hash_paths(tree, workers=1, progress=False)
    expected_good = good_files(tree)
    assert result.paths == expected_good
    assert kinds_by_name(result, tree) == {k: v for k, v in EXPECTED_FAILURES.items() if v}
    assert all(f.reason for f in result.failures)
    assert set(result.codes) == {"phash"} and result.codes["phash"].shape == (len(expected_good), 1)
    assert result.codes["phash"].dtype == np.uint64
    assert np.array_equal(result.codes["phash"], reference_codes(expected_good, ("phash",))["phash"])
    # A do-nothing hasher (all zeros, or one code repeated) fails here: the pictures differ.
    assert len(np.unique(result.codes["phash"])) == len(expected_good)


def test_two_workers_give_the_same_answer(tree):
    kinds = hashing.HASH_KINDS
    one = hash_paths(tree, kinds=kinds, workers=1, progress=False)
    # chunk_size=2 spreads the 9 good and 9 bad files over 9 tasks on both workers.
    two = hash_paths(tree, kinds=kinds, workers=2, chunk_size=2, progress=False)
    assert two.paths == one.paths == good_files(tree)
    assert two.failures == one.failures
    for kind in kinds:
        words = -(-hashing.code_bits(kind) // 64)
        assert one.codes[kind].shape == (len(one.paths), words)
        assert np.array_equal(one.codes[kind], two.codes[kind]), kind


def test_input_order_is_kept(tree):
    files = good_files(tree)[::-1] + [str(tree / "bad" / "empty.jpg")]
    for workers in (1, 2):
        result = hash_paths(files, workers=workers, chunk_size=1, progress=False)
        assert result.paths == files[:-1]
        assert [f.kind for f in result.failures] == ["empty"]
    assert np.array_equal(result.codes["phash"], reference_codes(files[:-1], ("phash",))["phash"])


def test_symlink_loop_is_reported_not_followed_forever(tree):
    result = hash_paths(tree, workers=1, follow_symlinks=True, progress=False)
    assert result.paths == good_files(tree)  # root reached again through bad/loop: not walked twice
    assert ("bad/loop", "symlink_loop") in kinds_by_name(result, tree).items()


def test_empty_and_missing_inputs(tmp_path):
    result = hash_paths(tmp_path, kinds=("phash", "colorhash"), progress=False)
    assert result.paths == [] and result.failures == []
    assert result.codes["phash"].shape == (0, 1) and result.codes["colorhash"].shape == (0, 1)
    result = hash_paths([tmp_path / "nowhere"], workers=2, progress=False)
    assert result.failures == [LoadFailure(str(tmp_path / "nowhere"), "file not found", "missing")]


def test_default_workers_and_progress(tree, capsys):
    result = hash_paths(tree / "good" / "nested", progress=None)  # stderr is not a terminal here
    assert len(result) == 4
    assert capsys.readouterr().err == ""
    hash_paths(tree / "good" / "nested", workers=1, progress=True)
    assert "4/4" in capsys.readouterr().err
    assert pipeline.default_workers() >= 1


def test_bad_arguments(tree):
    with pytest.raises(ValueError):
        hash_paths(tree, workers=0)
    with pytest.raises(ValueError):
        hash_paths(tree, chunk_size=0)
    with pytest.raises(ValueError):
        hash_paths(tree, kinds=("nohash",))


# Worker functions for the crash tests: module-level so the pool can pickle them by name.


def crashing_chunk(chunk, spec):
    """extract_chunk, except that a file named crash.* kills its worker process outright."""
    if any(os.path.basename(path).startswith("crash.") for _, path in chunk):
        os._exit(3)
    return extract_chunk(chunk, spec)


def raising_chunk(chunk, spec):
    """extract_chunk, except that a file named raise.* raises past it (as a bug in the worker would)."""
    if any(os.path.basename(path).startswith("raise.") for _, path in chunk):
        raise RuntimeError("boom")
    return extract_chunk(chunk, spec)


@pytest.mark.parametrize("fn,name,kind", [(crashing_chunk, "crash.png", "worker_crash"),
                                          (raising_chunk, "raise.png", "error")])
def test_worker_failure_costs_only_its_file(tmp_path, fn, name, kind):
    paths = []
    for i in range(7):
        p = tmp_path / (name if i == 3 else f"ok{i}.png")
        synthetic(SEED + 10 + i, (48, 48)).save(p)
        paths.append(str(p))
    spec = ExtractSpec(kinds=("phash",), digest=False, max_pixels=None, max_bytes=None)
    items = list(enumerate(paths))
    chunks = [items[i:i + 2] for i in range(0, len(items), 2)]
    done = []
    results = sorted((x for part in pipeline.run_pool(fn, chunks, spec, 2, done.append, extract_failed) for x in part),
                     key=lambda x: x[0])
    assert sum(done) == len(paths)
    failed = [(os.path.basename(r.path), r.kind) for _, r in results if isinstance(r, LoadFailure)]
    assert failed == [(name, kind)]
    hashed = [(paths[i], r.codes["phash"]) for i, r in results if not isinstance(r, LoadFailure)]
    assert [p for p, _ in hashed] == paths[:3] + paths[4:]
    assert np.array_equal(np.stack([c for _, c in hashed]), reference_codes(paths[:3] + paths[4:], ("phash",))["phash"])


def _session_processes(sid: int) -> dict[int, str]:
    """pid -> state of every process in session `sid` (from /proc/PID/stat)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if int(fields[3]) == sid:  # fields after the command: state, ppid, pgrp, session
            out[int(name)] = fields[0]
    return out


def assert_kill_9_leaves_nothing(proc) -> None:
    """kill -9 the main process of a run started in its own session (start_new_session=True), then assert
    that no process of that session is alive (zombies aside) 5 s later."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        alive = {p: s for p, s in _session_processes(proc.pid).items() if s != "Z"}
        if not alive:
            break
        time.sleep(0.1)
    assert not alive, f"still running 5 s after kill -9 of the main process: {alive}"


def kill_session(sid: int) -> None:
    """Never leave a test's processes behind, even when it fails."""
    for pid in _session_processes(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_kill_9_of_the_main_process_leaves_nothing_running(tmp_path):
    # Issue 11: after `kill -9` of `imgsim hash`, the workers waited on their queue for good, holding the
    # forkserver and the resource tracker alive (~360 MB). The run gets a session of its own, so every
    # process it started (tracker, forkserver, workers) is found by session id whatever its parent now is.
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(SEED)
    for i in range(2):  # noise PNGs: slow to decode, so the run is still busy when it is killed
        Image.fromarray(rng.integers(0, 256, (700, 700, 3), dtype=np.uint8)).save(src / f"n{i}.png", compress_level=1)
    d = tmp_path / "many"
    d.mkdir()
    for j in range(600):
        os.link(src / f"n{j % 2}.png", d / f"c{j:04d}.png")
    proc = subprocess.Popen([sys.executable, "-m", "imgsim_fast", "hash", str(d), "--workers", "2", "--no-progress",
                             "-o", str(tmp_path / "out.json")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        # main + resource tracker + forkserver + 2 workers
        while len(_session_processes(proc.pid)) < 5 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed: give it more files"
        assert len(_session_processes(proc.pid)) >= 5
        assert_kill_9_leaves_nothing(proc)
    finally:
        kill_session(proc.pid)
