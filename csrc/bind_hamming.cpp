// pybind11 glue for the Hamming kernels (hamming.h): input checks (TypeError / ValueError), GIL release
// around the scans, NumPy results. No algorithms here; conversions of user input live in
// imgsim_fast/indexes/hamming.py, which hands over C-contiguous uint64 arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bind_args.h"
#include "cpu_features.h"
#include "hamming.h"

namespace py = pybind11;

namespace {

// Codes wider than this could overflow the int32 distances (64 * words < 2^31).
constexpr size_t kMaxWords = size_t(1) << 24;

using imgsim_py::codes_arg;
using imgsim_py::to_array;

size_t words_of(const py::array& a) { return static_cast<size_t>(a.shape(a.ndim() - 1)); }

void check_words(size_t words, size_t other, const char* what) {
    if (words == 0) throw py::value_error("codes need at least one uint64 word, got shape (..., 0)");
    if (words > kMaxWords) throw py::value_error("codes wider than 2^24 words are not supported");
    if (other != words) {
        throw py::value_error(std::string(what) + ": codes have " + std::to_string(words) + " and " +
                              std::to_string(other) + " words; both sides need the same width");
    }
}

const uint64_t* ptr(const py::array& a) { return static_cast<const uint64_t*>(a.data()); }

imgsim::Isa isa_arg(const std::string& name) {
    imgsim::Isa isa;
    if (!imgsim::parse_isa(name.c_str(), &isa)) {
        throw py::value_error("unknown SIMD target '" + name + "'; expected serial, avx2 or avx512");
    }
    return isa;
}

py::array_t<int32_t> distance(const py::handle& q_obj, const py::handle& db_obj) {
    const py::array q = codes_arg(q_obj, "q", 1);
    const py::array db = codes_arg(db_obj, "db", 2);
    const size_t words = words_of(q);
    check_words(words, words_of(db), "hamming_distance");
    const size_t n = static_cast<size_t>(db.shape(0));
    py::array_t<int32_t> out(static_cast<py::ssize_t>(n));
    auto* d = reinterpret_cast<uint32_t*>(out.mutable_data());
    {
        py::gil_scoped_release nogil;
        imgsim::hamming_one_to_many(ptr(q), ptr(db), n, words, d);
    }
    return out;
}

py::array_t<uint16_t> matrix(const py::handle& a_obj, const py::handle& b_obj, int threads) {
    const py::array a = codes_arg(a_obj, "a", 2);
    const py::array b = codes_arg(b_obj, "b", 2);
    const size_t words = words_of(a);
    check_words(words, words_of(b), "hamming_matrix");
    if (words * 64 > 65535) throw py::value_error("hamming_matrix returns uint16: codes are limited to 1023 words");
    const size_t m = static_cast<size_t>(a.shape(0)), n = static_cast<size_t>(b.shape(0));
    py::array_t<uint16_t> out({static_cast<py::ssize_t>(m), static_cast<py::ssize_t>(n)});
    uint16_t* o = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        imgsim::hamming_many_to_many(ptr(a), m, ptr(b), n, words, o, threads);
    }
    return out;
}

py::tuple topk(const py::handle& q_obj, const py::handle& db_obj, int64_t k, int threads) {
    const py::array q = codes_arg(q_obj, "queries", 2);
    const py::array db = codes_arg(db_obj, "db", 2);
    const size_t words = words_of(q);
    check_words(words, words_of(db), "hamming_topk");
    if (k < 0) throw py::value_error("k must be >= 0, got " + std::to_string(k));
    const size_t m = static_cast<size_t>(q.shape(0)), n = static_cast<size_t>(db.shape(0));
    const size_t kk = std::min(static_cast<size_t>(k), n);
    const auto shape = std::vector<py::ssize_t>{static_cast<py::ssize_t>(m), static_cast<py::ssize_t>(kk)};
    py::array_t<int64_t> ids(shape);
    py::array_t<int32_t> dists(shape);
    int64_t* pi = ids.mutable_data();
    int32_t* pd = dists.mutable_data();
    {
        py::gil_scoped_release nogil;
        imgsim::hamming_topk(ptr(q), m, ptr(db), n, words, kk, pi, pd, threads);
    }
    return py::make_tuple(ids, dists);
}

py::tuple radius(const py::handle& q_obj, const py::handle& db_obj, int64_t r, int threads) {
    const py::array q = codes_arg(q_obj, "queries", 2);
    const py::array db = codes_arg(db_obj, "db", 2);
    const size_t words = words_of(q);
    check_words(words, words_of(db), "hamming_radius");
    if (r < 0) throw py::value_error("r must be >= 0, got " + std::to_string(r));
    const size_t m = static_cast<size_t>(q.shape(0)), n = static_cast<size_t>(db.shape(0));
    // Any r >= 64 * words admits every row; clamping keeps it in uint32.
    const uint32_t rr = static_cast<uint64_t>(r) > 64 * words ? static_cast<uint32_t>(64 * words) : static_cast<uint32_t>(r);
    imgsim::RangeResult res;
    {
        py::gil_scoped_release nogil;
        res = imgsim::hamming_radius(ptr(q), m, ptr(db), n, words, rr, threads);
    }
    return py::make_tuple(to_array(std::move(res.lims)), to_array(std::move(res.ids)), to_array(std::move(res.dists)));
}

}  // namespace

void bind_hamming(py::module_& m) {
    m.def("simd_target", [] { return std::string(imgsim::isa_name(imgsim::active_isa())); },
          "SIMD target in use: 'serial', 'avx2' or 'avx512'.");
    m.def("detected_target", [] { return std::string(imgsim::isa_name(imgsim::detected_isa())); },
          "Best SIMD target this CPU and OS support (CPUID + XGETBV).");
    m.def(
        "set_simd_target",
        [](const std::string& name) {
            try {
                imgsim::set_active_isa(isa_arg(name));
            } catch (const std::invalid_argument& e) {
                throw py::value_error(e.what());
            }
        },
        py::arg("name"), "Switch the SIMD target (ValueError if unknown or unsupported by this CPU).");
    m.def("hamming_distance", &distance, py::arg("q"), py::arg("db"),
          "Distances from q (w,) uint64 to each row of db (n, w) uint64 -> (n,) int32.");
    m.def("hamming_matrix", &matrix, py::arg("a"), py::arg("b"), py::arg("threads") = 0,
          "All-pairs distances (m, w) x (n, w) uint64 -> (m, n) uint16.");
    m.def("hamming_topk", &topk, py::arg("queries"), py::arg("db"), py::arg("k"), py::arg("threads") = 0,
          "k nearest rows per query, ascending (distance, index) -> (ids int64 (m, kk), dists int32 (m, kk)).");
    m.def("hamming_radius", &radius, py::arg("queries"), py::arg("db"), py::arg("r"), py::arg("threads") = 0,
          "Rows within distance r per query, sorted by (distance, index) -> CSR (lims, ids, dists).");
}
