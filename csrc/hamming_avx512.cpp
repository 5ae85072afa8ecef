// AVX-512 Hamming kernels: vpopcntq (AVX512_VPOPCNTDQ) counts eight 64-bit words per instruction; the
// threshold compare yields a mask, and qualifying rows are written with vpcompressd.
// Only called when the dispatcher found AVX512F + AVX512BW + AVX512_VPOPCNTDQ with OS-enabled ZMM state.
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include "hamming_kernels.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vpopcntdq,avx2,popcnt"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vpopcntdq,avx2,popcnt")
#endif

namespace imgsim {
namespace {

// The unmasked forms of vpmovqd / vpmovqw / vbroadcasti64x4 start from
// _mm*_undefined_*(), which GCC 12 flags under -Wmaybe-uninitialized (GCC PR 105593); the all-ones
// zero-masked forms compile to the same instructions without the warning.
constexpr __mmask8 kAll = 0xFF;

inline __m512i load(const uint64_t* p) { return _mm512_loadu_si512(p); }
inline __m512i popxor(const uint64_t* p, __m512i qv) { return _mm512_popcnt_epi64(_mm512_xor_si512(load(p), qv)); }

// Sums of adjacent 64-bit lanes of the 16-lane concatenation (a, b): lane j = x[2j] + x[2j+1].
inline __m512i pair_sums(__m512i a, __m512i b) {
    const __m512i even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
    const __m512i odd = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
    return _mm512_add_epi64(_mm512_permutex2var_epi64(a, even, b), _mm512_permutex2var_epi64(a, odd, b));
}

// Distances of 8 consecutive codes starting at x, one per 64-bit lane, in order. qv is the query
// repeated to fill 512 bits.
template <size_t W>
inline __m512i block8(__m512i qv, const uint64_t* x) {
    if constexpr (W == 1) {
        return popxor(x, qv);
    } else if constexpr (W == 2) {
        return pair_sums(popxor(x, qv), popxor(x + 8, qv));
    } else {
        static_assert(W == 4, "specialised for 1, 2, 4 words");
        const __m512i a = pair_sums(popxor(x, qv), popxor(x + 8, qv));        // codes 0-3, half sums
        const __m512i b = pair_sums(popxor(x + 16, qv), popxor(x + 24, qv));  // codes 4-7
        return pair_sums(a, b);
    }
}

template <size_t W>
inline __m512i query_vector(const uint64_t* q) {
    if constexpr (W == 1) return _mm512_set1_epi64(static_cast<long long>(q[0]));
    if constexpr (W == 2) {
        const long long a = static_cast<long long>(q[0]), b = static_cast<long long>(q[1]);
        return _mm512_setr_epi64(a, b, a, b, a, b, a, b);
    }
    return _mm512_maskz_broadcast_i64x4(kAll, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)));
}

// The SIMD blocks hamming_impl.h calls: 8 rows per step for distances, 16 for the filter.
struct Avx512 {
    template <size_t W, typename T>
    static size_t dist_block(const uint64_t* q, const uint64_t* db, size_t n, T* d) {
        const __m512i qv = query_vector<W>(q);
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            const __m512i s = block8<W>(qv, db + i * W);
            if constexpr (sizeof(T) == 4) {
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i), _mm512_maskz_cvtepi64_epi32(kAll, s));
            } else {
                _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), _mm512_maskz_cvtepi64_epi16(kAll, s));
            }
        }
        return i;
    }

    template <size_t W>
    static size_t filter_block(const uint64_t* q, const uint64_t* db, size_t n, uint32_t thresh, uint32_t* idx,
                               uint32_t* dist, size_t* count) {
        const __m512i qv = query_vector<W>(q);
        const __m512i tv = _mm512_set1_epi64(static_cast<long long>(thresh));
        const __m512i lo32 = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        size_t c = *count, i = 0;
        // 16 rows per step: two 8-lane distance vectors, one 16-bit mask, one branch.
        for (; i + 16 <= n; i += 16) {
            const __m512i s0 = block8<W>(qv, db + i * W);
            const __m512i s1 = block8<W>(qv, db + (i + 8) * W);
            const __mmask16 m = static_cast<__mmask16>(_mm512_cmple_epu64_mask(s0, tv) |
                                                       (_mm512_cmple_epu64_mask(s1, tv) << 8));
            if (m == 0) continue;
            // low 32 bits of the 16 lanes of (s0, s1), in order
            const __m512i d32 = _mm512_permutex2var_epi32(s0, lo32, s1);
            const __m512i i32 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(i)), iota);
            _mm512_mask_compressstoreu_epi32(dist + c, m, d32);
            _mm512_mask_compressstoreu_epi32(idx + c, m, i32);
            c += static_cast<size_t>(__builtin_popcount(m));
        }
        *count = c;
        return i;
    }
};

}  // namespace
}  // namespace imgsim

#include "hamming_impl.h"

namespace imgsim {

const HammingKernels kAvx512Kernels = kernels_for<Avx512>();

}  // namespace imgsim

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // x86
