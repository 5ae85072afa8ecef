"""Type stubs for imgsim_fast._core, the native extension built from csrc/ (see setup.py).

Use the wrappers in imgsim_fast.hamming: they convert input to the C-contiguous uint64 arrays these
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
