"""Hash files and folders on all cores: `imgsim hash`, and the query images of a search that are not in
the catalog. The workers run the extraction pass (features/extract.py) asked for hash codes only: each
file is read once and decoded once (JPEGs draft-decoded at `hashing.draft_size`); a bad file, or a worker
that dies on one, becomes a `LoadFailure` and the run goes on. Output order is the input order whatever
the number of workers.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from imgsim_fast.features import hashing
from imgsim_fast.features.codes import words_for_bits
from imgsim_fast.features.extract import ExtractSpec, extract_many
from imgsim_fast.io.loading import DEFAULT_EXTENSIONS, DEFAULT_MAX_PIXELS, DEFAULT_MEMORY_BUDGET, LoadFailure, iter_image_files
from imgsim_fast.runtime.pool import default_workers
from imgsim_fast.runtime.progress import progress_bar

__all__ = ["HashResult", "hash_paths"]

# Default chunk: big enough to amortise a task's pickling, small enough that every worker gets several
# chunks (load balance) and progress moves.
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
        process), 1 runs here with no pool (runtime/pool.py: the one pool; a script calling this needs
        no main guard).
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
    hashing.draft_size(kinds, mode, hash_size)  # validates kinds, mode and hash_size before any work
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
    # No digest: `imgsim hash` does not need one, and hashing the bytes would cost about as much as the
    # reduced-size decode of a JPEG.
    spec = ExtractSpec(kinds=kinds, mode=mode, hash_size=hash_size, digest=False, max_pixels=max_pixels,
                       max_bytes=max_bytes)
    if chunk_size is None:
        chunk_size = max(1, min(_MAX_AUTO_CHUNK, math.ceil(len(paths) / (_CHUNKS_PER_WORKER * workers))))
    # An explicit workers=N keeps even a single chunk in a worker process (a crashing decoder costs only it).
    in_process = workers == 1 or not paths or (auto and len(paths) <= chunk_size)
    bar = progress_bar(len(paths), progress)
    try:
        results = extract_many(list(enumerate(paths)), spec, workers, bar.update, chunk_size, in_process)
    finally:
        bar.close()
    ok, bad = [], []
    for i, r in results:
        failure = r if isinstance(r, LoadFailure) else r.failure
        if failure is not None:
            bad.append(failure)
        else:
            ok.append((i, r))
    codes = {}
    for k in kinds:
        words = words_for_bits(hashing.code_bits(k, hash_size))
        codes[k] = (np.ascontiguousarray(np.stack([r.codes[k] for _, r in ok]), dtype=np.uint64) if ok
                    else np.zeros((0, words), dtype=np.uint64))
    return HashResult(paths=[paths[i] for i, _ in ok], codes=codes, failures=failures + bad, kinds=kinds,
                      passed_over=passed_over, mode=mode, hash_size=hash_size)
