// CPU feature detection for the SIMD dispatcher: which Hamming targets this CPU and OS can run.
// Read once (CPUID + XGETBV); no Python here.
#pragma once

#include "hamming.h"

namespace imgsim {

// Parse a target name ("serial", "avx2", "avx512"); returns false for anything else.
bool parse_isa(const char* name, Isa* out);

// The target IMGSIM_ISA asks for, capped at detected_isa(): the starting value of active_isa().
// An unknown value is ignored (the Python layer warns), an unsupported one falls back to the best the
// CPU has; neither crashes.
Isa initial_isa();

}  // namespace imgsim
