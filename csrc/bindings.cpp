// The pybind11 module imgsim_fast._core. Each bind_*.cpp registers one family of functions; this file
// only assembles them.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_hamming(py::module_& m);  // bind_hamming.cpp
void bind_mih(py::module_& m);      // bind_mih.cpp

PYBIND11_MODULE(_core, m) {
    m.doc() = "imgsim_fast native core: SIMD Hamming scans and multi-index hashing";
    bind_hamming(m);
    bind_mih(m);
}
