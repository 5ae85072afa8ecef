// The SIMD dispatcher: which kernel table the Hamming functions use. Starts at the best target the CPU
// supports, lowered by IMGSIM_ISA (read once, at first use); tests switch it with set_active_isa.
#include <atomic>
#include <stdexcept>
#include <string>

#include "cpu_features.h"
#include "hamming_kernels.h"

namespace imgsim {
namespace {

constexpr int kUnset = -1;
std::atomic<int> g_active{kUnset};

}  // namespace

Isa active_isa() {
    int v = g_active.load(std::memory_order_acquire);
    if (v == kUnset) {
        int expected = kUnset;
        g_active.compare_exchange_strong(expected, static_cast<int>(initial_isa()), std::memory_order_acq_rel);
        v = g_active.load(std::memory_order_acquire);
    }
    return static_cast<Isa>(v);
}

void set_active_isa(Isa isa) {
    if (static_cast<int>(isa) > static_cast<int>(detected_isa())) {
        throw std::invalid_argument(std::string("SIMD target '") + isa_name(isa) +
                                    "' is not supported by this CPU (best: '" + isa_name(detected_isa()) + "')");
    }
    g_active.store(static_cast<int>(isa), std::memory_order_release);
}

const HammingKernels& active_kernels() {
    switch (active_isa()) {
#if defined(__x86_64__) || defined(__i386__)
        case Isa::avx512: return kAvx512Kernels;
        case Isa::avx2: return kAvx2Kernels;
#endif
        default: return kSerialKernels;
    }
}

}  // namespace imgsim
