// Portable Hamming kernels (__builtin_popcountll, no target attributes): the twin every SIMD target is
// tested against, and the fallback on CPUs without AVX2.
#include "hamming_kernels.h"

namespace imgsim {
namespace {

// W > 0: words known at compile time (1, 2, 4 unroll fully); W == 0: any `words`.
template <size_t W>
inline uint32_t row_distance(const uint64_t* q, const uint64_t* x, size_t words) {
    const size_t w = W ? W : words;
    uint32_t s = 0;
    for (size_t j = 0; j < w; ++j) s += static_cast<uint32_t>(__builtin_popcountll(q[j] ^ x[j]));
    return s;
}

template <size_t W, typename T>
void dist_impl(const uint64_t* q, const uint64_t* db, size_t n, size_t words, T* d) {
    const size_t w = W ? W : words;
    for (size_t i = 0; i < n; ++i) d[i] = static_cast<T>(row_distance<W>(q, db + i * w, words));
}

template <size_t W>
size_t filter_impl(const uint64_t* q, const uint64_t* db, size_t n, size_t words, uint32_t thresh,
                   uint32_t* idx, uint32_t* dist) {
    const size_t w = W ? W : words;
    size_t c = 0;
    for (size_t i = 0; i < n; ++i) {
        const uint32_t d = row_distance<W>(q, db + i * w, words);
        if (d <= thresh) {
            idx[c] = static_cast<uint32_t>(i);
            dist[c] = d;
            ++c;
        }
    }
    return c;
}

template <typename T>
void dist_any(const uint64_t* q, const uint64_t* db, size_t n, size_t words, T* d) {
    switch (words) {
        case 1: return dist_impl<1>(q, db, n, words, d);
        case 2: return dist_impl<2>(q, db, n, words, d);
        case 4: return dist_impl<4>(q, db, n, words, d);
        default: return dist_impl<0>(q, db, n, words, d);
    }
}

size_t filter_any(const uint64_t* q, const uint64_t* db, size_t n, size_t words, uint32_t thresh,
                  uint32_t* idx, uint32_t* dist) {
    switch (words) {
        case 1: return filter_impl<1>(q, db, n, words, thresh, idx, dist);
        case 2: return filter_impl<2>(q, db, n, words, thresh, idx, dist);
        case 4: return filter_impl<4>(q, db, n, words, thresh, idx, dist);
        default: return filter_impl<0>(q, db, n, words, thresh, idx, dist);
    }
}

}  // namespace

const HammingKernels kSerialKernels = {dist_any<uint32_t>, dist_any<uint16_t>, filter_any};

}  // namespace imgsim
