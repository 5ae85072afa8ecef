// AVX2 Hamming kernels. AVX2 has no vector popcount, so each 64-bit lane is counted with Mula's
// nibble-lookup (vpshufb) and summed with vpsadbw (W. Mula, N. Kurz, D. Lemire, "Faster Population
// Counts Using AVX2 Instructions", Computer Journal 2018). For 2- and 4-word codes the per-byte counts of
// a code's words are added before the single vpsadbw, so a 256-bit code costs one reduction.
// Only called when the dispatcher found AVX2 + POPCNT with OS-enabled YMM state.
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include "hamming_kernels.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,popcnt"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,popcnt")
#endif

namespace imgsim {
namespace {

inline __m256i popcount_bytes(__m256i v) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  //
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    const __m256i lo = _mm256_and_si256(v, low);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

inline __m256i load(const uint64_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// Distances of 4 consecutive codes starting at x, one per 64-bit lane, in order. qv holds the query
// repeated to fill 256 bits (W = 1, 2) or the query itself (W = 4).
template <size_t W>
inline __m256i block4(__m256i qv, const uint64_t* x) {
    const __m256i zero = _mm256_setzero_si256();
    if constexpr (W == 1) {
        return _mm256_sad_epu8(popcount_bytes(_mm256_xor_si256(load(x), qv)), zero);
    } else if constexpr (W == 2) {
        const __m256i b0 = popcount_bytes(_mm256_xor_si256(load(x), qv));      // codes 0, 1
        const __m256i b1 = popcount_bytes(_mm256_xor_si256(load(x + 4), qv));  // codes 2, 3
        const __m256i t = _mm256_add_epi8(_mm256_unpacklo_epi64(b0, b1), _mm256_unpackhi_epi64(b0, b1));
        // lanes now hold codes 0, 2, 1, 3
        return _mm256_permute4x64_epi64(_mm256_sad_epu8(t, zero), 0xD8);
    } else {
        static_assert(W == 4, "specialised for 1, 2, 4 words");
        const __m256i b0 = popcount_bytes(_mm256_xor_si256(load(x), qv));
        const __m256i b1 = popcount_bytes(_mm256_xor_si256(load(x + 4), qv));
        const __m256i b2 = popcount_bytes(_mm256_xor_si256(load(x + 8), qv));
        const __m256i b3 = popcount_bytes(_mm256_xor_si256(load(x + 12), qv));
        const __m256i a = _mm256_add_epi8(_mm256_unpacklo_epi64(b0, b1), _mm256_unpackhi_epi64(b0, b1));
        const __m256i c = _mm256_add_epi8(_mm256_unpacklo_epi64(b2, b3), _mm256_unpackhi_epi64(b2, b3));
        const __m256i t = _mm256_add_epi8(_mm256_permute2x128_si256(a, c, 0x20),
                                          _mm256_permute2x128_si256(a, c, 0x31));
        return _mm256_sad_epu8(t, zero);  // bytes are <= 32, no overflow
    }
}

template <size_t W>
inline __m256i query_vector(const uint64_t* q) {
    if constexpr (W == 1) return _mm256_set1_epi64x(static_cast<long long>(q[0]));
    if constexpr (W == 2) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
        return _mm256_broadcastsi128_si256(h);
    }
    return load(q);
}

// The low 32 bits of each 64-bit lane, packed into 128 bits.
inline __m128i narrow32(__m256i s) {
    return _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(s, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6)));
}

// The SIMD blocks hamming_impl.h calls: 4 rows per step for distances, 8 for the filter.
struct Avx2 {
    template <size_t W, typename T>
    static size_t dist_block(const uint64_t* q, const uint64_t* db, size_t n, T* d) {
        const __m256i qv = query_vector<W>(q);
        size_t i = 0;
        for (; i + 4 <= n; i += 4) {
            const __m128i v = narrow32(block4<W>(qv, db + i * W));
            if constexpr (sizeof(T) == 4) {
                _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), v);
            } else {
                _mm_storel_epi64(reinterpret_cast<__m128i*>(d + i), _mm_packus_epi32(v, v));
            }
        }
        return i;
    }

    template <size_t W>
    static size_t filter_block(const uint64_t* q, const uint64_t* db, size_t n, uint32_t thresh, uint32_t* idx,
                               uint32_t* dist, size_t* count) {
        const __m256i qv = query_vector<W>(q);
        // Distances are < 2^31, so the signed 64-bit compare is exact.
        const __m256i tv = _mm256_set1_epi64x(static_cast<long long>(thresh));
        size_t c = *count, i = 0;
        for (; i + 8 <= n; i += 8) {
            const __m256i s0 = block4<W>(qv, db + i * W);
            const __m256i s1 = block4<W>(qv, db + (i + 4) * W);
            const unsigned gt = static_cast<unsigned>(
                _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(s0, tv))) |
                (_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(s1, tv))) << 4));
            unsigned m = ~gt & 0xFFu;
            if (m == 0) continue;
            alignas(32) uint32_t tmp[8];
            _mm_store_si128(reinterpret_cast<__m128i*>(tmp), narrow32(s0));
            _mm_store_si128(reinterpret_cast<__m128i*>(tmp + 4), narrow32(s1));
            while (m) {
                const unsigned j = static_cast<unsigned>(__builtin_ctz(m));
                idx[c] = static_cast<uint32_t>(i + j);
                dist[c] = tmp[j];
                ++c;
                m &= m - 1;
            }
        }
        *count = c;
        return i;
    }
};

}  // namespace
}  // namespace imgsim

#include "hamming_impl.h"

namespace imgsim {

const HammingKernels kAvx2Kernels = kernels_for<Avx2>();

}  // namespace imgsim

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // x86
