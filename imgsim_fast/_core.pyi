"""Type stubs for imgsim_fast._core, the native extension built from csrc/ (see setup.py).

Use the wrappers in imgsim_fast.indexes.hamming: they convert input to the C-contiguous uint64 arrays these
functions require (anything else raises TypeError or ValueError here).
"""
import numpy as np
import numpy.typing as npt

# --- Hamming scans (csrc/bind_hamming.cpp) -------------------------------------------------------

def simd_target() -> str:
    """SIMD target in use: 'serial', 'avx2' or 'avx512'."""

def detected_target() -> str:
    """Best SIMD target this CPU and OS support (CPUID + XGETBV)."""

def set_simd_target(name: str) -> None:
    """Switch the SIMD target; ValueError if unknown or unsupported by this CPU."""

def hamming_distance(q: npt.NDArray[np.uint64], db: npt.NDArray[np.uint64]) -> npt.NDArray[np.int32]:
    """q (words,), db (n, words) -> (n,) int32."""

def hamming_matrix(
    a: npt.NDArray[np.uint64], b: npt.NDArray[np.uint64], threads: int = 0
) -> npt.NDArray[np.uint16]:
    """(m, words) x (n, words) -> (m, n) uint16."""

def hamming_topk(
    queries: npt.NDArray[np.uint64], db: npt.NDArray[np.uint64], k: int, threads: int = 0
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """(ids (m, kk) int64, dists (m, kk) int32), kk = min(k, n), rows ascending by (distance, index)."""

def hamming_radius(
    queries: npt.NDArray[np.uint64], db: npt.NDArray[np.uint64], r: int, threads: int = 0
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """CSR (lims (m + 1,), ids, dists), each query's hits sorted by (distance, index)."""

# --- Multi-index hashing (csrc/bind_mih.cpp) ------------------------------------------------------
# Stubs for the MIH classes are appended here.

class MihSelfJoin:
    """Resumable self-join cursor returned by MihIndex.self_join."""
    def next(self, max_pairs: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int32]] | None:
        """Next chunk (ids_a, ids_b, dists), ids_a < ids_b, at most max_pairs long; None when done.
        RuntimeError if the index changed since the cursor started."""

class MihIndex:
    """Exact multi-index hashing over 64/128/256-bit codes (use imgsim_fast.indexes.mih.HammingIndex)."""
    def __init__(self, bits: int = 64, m: int = 0) -> None:
        """m = 0: round(bits / log2 N) at every rebuild. ValueError for other bits or m outside [bits/32, bits]."""
    @property
    def bits(self) -> int: ...
    @property
    def words(self) -> int: ...
    @property
    def path(self) -> str:
        """'auto', 'mih' or 'scan' (forced paths are for tests and benchmarks)."""
    @path.setter
    def path(self, value: str) -> None: ...
    @staticmethod
    def auto_m(bits: int, n: int) -> int: ...
    @staticmethod
    def load(path: str) -> MihIndex:
        """ValueError for a truncated, corrupt or foreign file; OSError when it cannot be read."""
    def __len__(self) -> int: ...
    def __contains__(self, id: int) -> bool: ...
    def ids(self) -> npt.NDArray[np.int64]: ...
    def add(self, codes: npt.NDArray[np.uint64], ids: npt.NDArray[np.int64] | None = None) -> int:
        """codes (n, words) C-contiguous; returns the first id. ValueError on a duplicate id (nothing added)."""
    def remove(self, ids: npt.NDArray[np.int64]) -> None:
        """KeyError if an id is absent (nothing removed)."""
    def knn(
        self, queries: npt.NDArray[np.uint64], k: int, threads: int = 0
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
        """(ids (q, kk), dists (q, kk)), kk = min(k, len), rows ascending by (distance, id)."""
    def radius(
        self, queries: npt.NDArray[np.uint64], r: int, threads: int = 0
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int32]]:
        """CSR (lims (q + 1,), ids, dists), each query's hits sorted by (distance, id)."""
    def self_join(self, r: int, threads: int = 0) -> MihSelfJoin: ...
    def stats(self) -> dict[str, object]: ...
    def save(self, path: str) -> None:
        """Temp file + fsync + atomic rename; OSError on failure."""
