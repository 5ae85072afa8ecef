// The part of every Hamming kernel table that does not depend on the SIMD target, written once (as faiss'
// hamming-inl.h / hamming_impl.h): the switch on the code width, the scalar tail after the SIMD blocks,
// and the table itself. Each hamming_<target>.cpp includes it after its target pragma, so everything here
// is compiled for that target (the tail's __builtin_popcountll becomes POPCNT where the target has it).
//
// Everything is in an anonymous namespace on purpose: the same inline function compiled once for AVX-512
// and once for the portable target must not be merged by the linker (it could hand the AVX-512 copy to a
// CPU without it).
//
// The including file defines, before the #include, a struct `Target` with two static templates for
// W in {1, 2, 4} words (compile-time widths):
//   template <size_t W, typename T> static size_t dist_block(const uint64_t* q, const uint64_t* db,
//                                                            size_t n, T* d);
//     distances of the first rows (a multiple of its SIMD block), returns how many rows it did;
//   template <size_t W> static size_t filter_block(const uint64_t* q, const uint64_t* db, size_t n,
//                                                  uint32_t thresh, uint32_t* idx, uint32_t* dist,
//                                                  size_t* c);
//     the same prefix for filter_le: appends qualifying rows at idx/dist[*c], returns rows done.
// A target without SIMD blocks returns 0 from both, and the tail does all the work.
#pragma once

#include <cstddef>
#include <cstdint>

#include "hamming_kernels.h"

namespace imgsim {
namespace {

template <size_t W>
inline uint32_t tail_distance(const uint64_t* q, const uint64_t* x, size_t words) {
    const size_t w = W ? W : words;
    uint32_t s = 0;
    for (size_t j = 0; j < w; ++j) s += static_cast<uint32_t>(__builtin_popcountll(q[j] ^ x[j]));
    return s;
}

// W > 0: words known at compile time; W == 0: any width, no SIMD blocks.
template <class Target, size_t W, typename T>
void dist_rows(const uint64_t* q, const uint64_t* db, size_t n, size_t words, T* d) {
    size_t i = 0;
    if constexpr (W != 0) i = Target::template dist_block<W, T>(q, db, n, d);
    const size_t w = W ? W : words;
    for (; i < n; ++i) d[i] = static_cast<T>(tail_distance<W>(q, db + i * w, words));
}

template <class Target, size_t W>
size_t filter_rows(const uint64_t* q, const uint64_t* db, size_t n, size_t words, uint32_t thresh, uint32_t* idx,
                   uint32_t* dist) {
    size_t c = 0, i = 0;
    if constexpr (W != 0) i = Target::template filter_block<W>(q, db, n, thresh, idx, dist, &c);
    const size_t w = W ? W : words;
    for (; i < n; ++i) {
        const uint32_t d = tail_distance<W>(q, db + i * w, words);
        if (d <= thresh) {
            idx[c] = static_cast<uint32_t>(i);
            dist[c] = d;
            ++c;
        }
    }
    return c;
}

// The word-width dispatch: 1, 2 and 4 words (64, 128, 256 bits) get unrolled SIMD code, others the tail.
template <class Target, typename T>
void dist_any(const uint64_t* q, const uint64_t* db, size_t n, size_t words, T* d) {
    switch (words) {
        case 1: return dist_rows<Target, 1>(q, db, n, words, d);
        case 2: return dist_rows<Target, 2>(q, db, n, words, d);
        case 4: return dist_rows<Target, 4>(q, db, n, words, d);
        default: return dist_rows<Target, 0>(q, db, n, words, d);
    }
}

template <class Target>
size_t filter_any(const uint64_t* q, const uint64_t* db, size_t n, size_t words, uint32_t thresh, uint32_t* idx,
                  uint32_t* dist) {
    switch (words) {
        case 1: return filter_rows<Target, 1>(q, db, n, words, thresh, idx, dist);
        case 2: return filter_rows<Target, 2>(q, db, n, words, thresh, idx, dist);
        case 4: return filter_rows<Target, 4>(q, db, n, words, thresh, idx, dist);
        default: return filter_rows<Target, 0>(q, db, n, words, thresh, idx, dist);
    }
}

template <class Target>
constexpr HammingKernels kernels_for() {
    return HammingKernels{dist_any<Target, uint32_t>, dist_any<Target, uint16_t>, filter_any<Target>};
}

}  // namespace
}  // namespace imgsim
