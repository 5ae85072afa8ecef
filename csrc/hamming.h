// Hamming distance over packed binary codes: the public C++ interface of the scan kernels.
// Codes are rows of `words` uint64 (64, 128, 256 bits -> 1, 2, 4 words; any words >= 1 is accepted),
// stored contiguously row-major. No Python here: bindings live in bind_*.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace imgsim {

// SIMD targets, lowest first. Every target computes bit-identical results.
enum class Isa : int { serial = 0, avx2 = 1, avx512 = 2 };

const char* isa_name(Isa isa);
// Highest target this CPU and OS support (CPUID feature bits and XGETBV-enabled register state).
Isa detected_isa();
// Target used by every function below. Starts at detected_isa(), lowered by IMGSIM_ISA=serial|avx2|avx512.
Isa active_isa();
// Switch target (tests run every kernel under every target). Throws std::invalid_argument when the
// CPU cannot run `isa`.
void set_active_isa(Isa isa);

// d[i] = popcount(q ^ db[i]) for i < n.
void hamming_one_to_many(const uint64_t* q, const uint64_t* db, size_t n, size_t words, uint32_t* d);

// out[i * n_b + j] = distance(a[i], b[j]); tiled for cache; threads <= 0 means all cores.
void hamming_many_to_many(const uint64_t* a, size_t n_a, const uint64_t* b, size_t n_b, size_t words,
                          uint16_t* out, int threads);

// For each query, the k nearest db rows (ties broken by smaller row index), ascending (distance, index).
// Output rows hold kk = min(k, n) entries: ids[q * kk + j], dists[q * kk + j].
void hamming_topk(const uint64_t* q, size_t n_q, const uint64_t* db, size_t n, size_t words, size_t k,
                  int64_t* ids, int32_t* dists, int threads);

// For each query, every db row within distance r, sorted by (distance, index). CSR layout as in faiss'
// RangeSearchResult: results of query i are ids[lims[i] .. lims[i + 1]).
struct RangeResult {
    std::vector<int64_t> lims;
    std::vector<int64_t> ids;
    std::vector<int32_t> dists;
};
RangeResult hamming_radius(const uint64_t* q, size_t n_q, const uint64_t* db, size_t n, size_t words,
                           uint32_t r, int threads);

}  // namespace imgsim
