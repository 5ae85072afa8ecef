// The NumPy argument helpers every bind_*.cpp uses: check an incoming array (TypeError when it is not an
// ndarray, ValueError for dtype, ndim or layout; never an assert) and hand a std::vector back to Python
// without a copy. The Python wrappers convert user input first; these checks guard the raw _core calls.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace imgsim_py {

namespace py = pybind11;

inline std::string type_name(const py::handle& obj) { return py::str(py::type::handle_of(obj).attr("__name__")); }

// A C-contiguous native-byte-order array of T with `ndim` dimensions; `dtype` names T in messages.
template <typename T>
py::array array_arg(const py::handle& obj, const char* what, int ndim, const char* dtype) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string(what) + " must be a numpy.ndarray of " + dtype + ", got " + type_name(obj));
    auto arr = py::reinterpret_borrow<py::array>(obj);
    if (!py::array_t<T>::check_(arr))
        throw py::value_error(std::string(what) + " must have dtype " + dtype + " (native byte order), got " +
                              std::string(py::str(arr.dtype())));
    if (arr.ndim() != ndim)
        throw py::value_error(std::string(what) + " must be " + std::to_string(ndim) + "-D, got " +
                              std::to_string(arr.ndim()) + "-D");
    if (!(arr.flags() & py::array::c_style))
        throw py::value_error(std::string(what) + " must be C-contiguous (numpy.ascontiguousarray makes it so)");
    return arr;
}

// Packed codes: rows of uint64 words.
inline py::array codes_arg(const py::handle& obj, const char* what, int ndim) {
    return array_arg<uint64_t>(obj, what, ndim, "uint64");
}

template <typename T>
const T* data_of(const py::array& a) {
    return static_cast<const T*>(a.data());
}

// A NumPy array of the given shape owning the vector's buffer (no copy).
template <typename T>
py::array_t<T> to_array(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
    auto holder = std::make_unique<std::vector<T>>(std::move(v));
    T* data = holder->data();
    py::capsule owner(holder.get(), [](void* p) { delete static_cast<std::vector<T>*>(p); });
    holder.release();
    return py::array_t<T>(std::move(shape), data, owner);
}

// The 1-D form.
template <typename T>
py::array_t<T> to_array(std::vector<T>&& v) {
    const auto n = static_cast<py::ssize_t>(v.size());
    return to_array(std::move(v), {n});
}

}  // namespace imgsim_py
