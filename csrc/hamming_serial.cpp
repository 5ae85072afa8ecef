// Portable Hamming kernels (__builtin_popcountll, no target attributes): the twin every SIMD target is
// tested against, and the fallback on CPUs without AVX2. It has no SIMD blocks: hamming_impl.h's scalar
// loop does every row.
#include <cstddef>
#include <cstdint>

namespace imgsim {
namespace {

struct Serial {
    template <size_t W, typename T>
    static size_t dist_block(const uint64_t*, const uint64_t*, size_t, T*) {
        return 0;
    }
    template <size_t W>
    static size_t filter_block(const uint64_t*, const uint64_t*, size_t, uint32_t, uint32_t*, uint32_t*, size_t*) {
        return 0;
    }
};

}  // namespace
}  // namespace imgsim

#include "hamming_impl.h"

namespace imgsim {

const HammingKernels kSerialKernels = kernels_for<Serial>();

}  // namespace imgsim
