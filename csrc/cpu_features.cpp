// CPU feature detection: CPUID feature bits plus XGETBV, so a target is reported only when the OS also
// saves its register state (an AVX-512 CPU under an OS or hypervisor without ZMM state must not run
// AVX-512 code; faiss and SimSIMD check XGETBV for the same reason).
#include "cpu_features.h"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define IMGSIM_X86 1
#endif

namespace imgsim {

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::serial: return "serial";
        case Isa::avx2: return "avx2";
        case Isa::avx512: return "avx512";
    }
    return "unknown";
}

bool parse_isa(const char* name, Isa* out) {
    if (name == nullptr) return false;
    for (Isa isa : {Isa::serial, Isa::avx2, Isa::avx512}) {
        if (std::strcmp(name, isa_name(isa)) == 0) {
            *out = isa;
            return true;
        }
    }
    return false;
}

#ifdef IMGSIM_X86
namespace {

// XGETBV(0): the XCR0 register, which says which register states the OS saves on context switch.
// Inline asm rather than _xgetbv() so this file needs no -mxsave.
uint64_t read_xcr0() {
    uint32_t eax = 0, edx = 0;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return (static_cast<uint64_t>(edx) << 32) | eax;
}

Isa detect() {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return Isa::serial;
    const bool popcnt = ecx & (1u << 23);
    const bool osxsave = ecx & (1u << 27);
    const bool avx = ecx & (1u << 28);
    if (!osxsave || !avx || !popcnt) return Isa::serial;
    const uint64_t xcr0 = read_xcr0();
    const bool os_ymm = (xcr0 & 0x6) == 0x6;    // SSE (bit 1) and AVX/YMM-high (bit 2) state
    const bool os_zmm = (xcr0 & 0xE6) == 0xE6;  // plus opmask (5), ZMM_Hi256 (6), Hi16_ZMM (7)
    if (__get_cpuid_max(0, nullptr) < 7) return Isa::serial;
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    const bool avx2 = ebx & (1u << 5);
    const bool avx512f = ebx & (1u << 16);
    const bool avx512bw = ebx & (1u << 30);
    const bool vpopcntdq = ecx & (1u << 14);
    if (avx2 && os_ymm && avx512f && avx512bw && vpopcntdq && os_zmm) return Isa::avx512;
    if (avx2 && os_ymm) return Isa::avx2;
    return Isa::serial;
}

}  // namespace
#endif

Isa detected_isa() {
#ifdef IMGSIM_X86
    static const Isa isa = detect();
    return isa;
#else
    return Isa::serial;
#endif
}

Isa initial_isa() {
    const Isa best = detected_isa();
    Isa asked;
    if (!parse_isa(std::getenv("IMGSIM_ISA"), &asked)) return best;
    return static_cast<int>(asked) < static_cast<int>(best) ? asked : best;
}

}  // namespace imgsim
