// Internal: the per-target Hamming scan primitives (one table per SIMD target) that the dispatcher picks
// from and hamming_search.cpp builds on. Every table computes bit-identical results.
#pragma once

#include <cstddef>
#include <cstdint>

#include "hamming.h"

namespace imgsim {

struct HammingKernels {
    // d[i] = popcount(q ^ db[i]) for i < n (rows of `words` uint64).
    void (*dist_u32)(const uint64_t* q, const uint64_t* db, size_t n, size_t words, uint32_t* d);
    // Same, narrowed to uint16 (caller guarantees 64 * words <= 65535).
    void (*dist_u16)(const uint64_t* q, const uint64_t* db, size_t n, size_t words, uint16_t* d);
    // The rows i < n (n < 2^32) with distance <= thresh, in ascending i: idx[c] = i, dist[c] = distance.
    // Returns c. The compare is done in SIMD registers, so rejected rows cost no scalar work: this is
    // what makes top-k pruning and radius search cheap when few rows qualify.
    size_t (*filter_le)(const uint64_t* q, const uint64_t* db, size_t n, size_t words, uint32_t thresh,
                        uint32_t* idx, uint32_t* dist);
};

extern const HammingKernels kSerialKernels;  // hamming_serial.cpp
#if defined(__x86_64__) || defined(__i386__)
extern const HammingKernels kAvx2Kernels;    // hamming_avx2.cpp
extern const HammingKernels kAvx512Kernels;  // hamming_avx512.cpp
#endif

// The table of active_isa() (hamming_dispatch.cpp).
const HammingKernels& active_kernels();

}  // namespace imgsim
