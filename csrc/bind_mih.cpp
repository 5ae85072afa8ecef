// pybind11 glue for multi-index hashing (mih.h): input checks (TypeError / ValueError), GIL release
// around every search and update, NumPy results, and the mapping of the index's errors to Python's.
// Conversions of user input live in imgsim_fast/indexes/mih.py, which hands over C-contiguous arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bind_args.h"
#include "mih.h"

namespace py = pybind11;
using imgsim::MihIndex;
using imgsim::MihSelfJoin;

namespace {

using imgsim_py::array_arg;
using imgsim_py::to_array;

py::array codes_arg(const MihIndex& ix, const py::handle& obj, const char* what) {
    py::array a = array_arg<uint64_t>(obj, what, 2, "uint64");
    if (static_cast<size_t>(a.shape(1)) != ix.words())
        throw py::value_error(std::string(what) + " must have shape (n, " + std::to_string(ix.words()) + ") for " +
                              std::to_string(64 * ix.words()) + "-bit codes, got (n, " + std::to_string(a.shape(1)) +
                              ")");
    return a;
}

uint32_t radius_arg(int64_t r) {
    if (r < 0) throw py::value_error("r must be >= 0, got " + std::to_string(r));
    return r > 0xFFFFFF ? 0xFFFFFFu : static_cast<uint32_t>(r);  // beyond any code width: everything
}

imgsim::MihPath path_arg(const std::string& s) {
    if (s == "auto") return imgsim::MihPath::automatic;
    if (s == "mih") return imgsim::MihPath::mih;
    if (s == "scan") return imgsim::MihPath::scan;
    throw py::value_error("path must be 'auto', 'mih' or 'scan', got '" + s + "'");
}

const char* path_name(imgsim::MihPath p) {
    switch (p) {
        case imgsim::MihPath::mih: return "mih";
        case imgsim::MihPath::scan: return "scan";
        default: return "auto";
    }
}

}  // namespace

void bind_mih(py::module_& m) {
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const imgsim::MihIoError& e) {
            // OSError(errno, message, filename) picks the errno subclass (FileNotFoundError, ...).
            py::object err = py::reinterpret_steal<py::object>(PyObject_CallFunction(
                PyExc_OSError, "isO", e.err(), e.what(), py::str(e.path()).ptr()));
            if (err) PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(err.ptr())), err.ptr());
        } catch (const imgsim::MihKeyError& e) {
            PyErr_SetObject(PyExc_KeyError, py::int_(e.id()).ptr());
        } catch (const imgsim::MihConcurrentModification& e) {
            PyErr_SetString(PyExc_RuntimeError, e.what());
        }
    });

    py::class_<MihSelfJoin, std::shared_ptr<MihSelfJoin>>(m, "MihSelfJoin",
                                                          "Resumable self-join cursor (MihIndex.self_join).")
        .def(
            "next",
            [](MihSelfJoin& c, int64_t max_pairs) -> py::object {
                if (max_pairs < 1) throw py::value_error("max_pairs must be >= 1, got " + std::to_string(max_pairs));
                imgsim::SelfJoinChunk ch;
                bool more;
                {
                    py::gil_scoped_release nogil;
                    more = c.next(static_cast<size_t>(max_pairs), ch);
                }
                if (!more) return py::none();
                auto n = static_cast<py::ssize_t>(ch.a.size());
                return py::make_tuple(to_array(std::move(ch.a), {n}), to_array(std::move(ch.b), {n}),
                                      to_array(std::move(ch.dist), {n}));
            },
            py::arg("max_pairs"), "Next chunk (ids_a, ids_b, dists) of at most max_pairs pairs, or None at the end.");

    py::class_<MihIndex, std::shared_ptr<MihIndex>>(m, "MihIndex",
                                                    "Exact multi-index hashing over 64/128/256-bit codes.")
        .def(py::init([](int64_t bits, int64_t mm) {
                 if (bits != 64 && bits != 128 && bits != 256)
                     throw py::value_error("bits must be 64, 128 or 256, got " + std::to_string(bits));
                 if (mm < 0) throw py::value_error("m must be >= 0 (0 = automatic), got " + std::to_string(mm));
                 return std::make_shared<MihIndex>(static_cast<size_t>(bits / 64), static_cast<size_t>(mm));
             }),
             py::arg("bits") = 64, py::arg("m") = 0)
        .def_property_readonly("bits", [](const MihIndex& ix) { return 64 * ix.words(); })
        .def_property_readonly("words", &MihIndex::words)
        .def_static("auto_m", &MihIndex::auto_m, py::arg("bits"), py::arg("n"))
        .def("__len__", &MihIndex::size)
        .def("__contains__", [](const MihIndex& ix, int64_t id) { return ix.contains(id); })
        .def("ids", [](const MihIndex& ix) {
            std::vector<int64_t> v = ix.ids();
            auto n = static_cast<py::ssize_t>(v.size());
            return to_array(std::move(v), {n});
        })
        .def(
            "add",
            [](MihIndex& ix, const py::handle& codes_obj, const py::handle& ids_obj) {
                py::array codes = codes_arg(ix, codes_obj, "codes");
                size_t n = static_cast<size_t>(codes.shape(0));
                py::array ids;
                const int64_t* idp = nullptr;
                if (!ids_obj.is_none()) {
                    ids = array_arg<int64_t>(ids_obj, "ids", 1, "int64");
                    if (static_cast<size_t>(ids.shape(0)) != n)
                        throw py::value_error("ids has " + std::to_string(ids.shape(0)) + " entries for " +
                                              std::to_string(n) + " codes");
                    idp = static_cast<const int64_t*>(ids.data());
                }
                py::gil_scoped_release nogil;
                return ix.add(static_cast<const uint64_t*>(codes.data()), n, idp);
            },
            py::arg("codes"), py::arg("ids") = py::none(),
            "Add codes; returns the first id (ids=None numbers them after the largest id ever added).")
        .def(
            "remove",
            [](MihIndex& ix, const py::handle& ids_obj) {
                py::array ids = array_arg<int64_t>(ids_obj, "ids", 1, "int64");
                py::gil_scoped_release nogil;
                ix.remove(static_cast<const int64_t*>(ids.data()), static_cast<size_t>(ids.shape(0)));
            },
            py::arg("ids"))
        .def(
            "knn",
            [](MihIndex& ix, const py::handle& q_obj, int64_t k, int threads) {
                if (k < 0) throw py::value_error("k must be >= 0, got " + std::to_string(k));
                py::array q = codes_arg(ix, q_obj, "queries");
                size_t nq = static_cast<size_t>(q.shape(0));
                std::vector<int64_t> ids;
                std::vector<int32_t> dists;
                size_t kk;
                {
                    py::gil_scoped_release nogil;
                    kk = ix.knn(static_cast<const uint64_t*>(q.data()), nq, static_cast<size_t>(k), ids, dists, threads);
                }
                std::vector<py::ssize_t> shape{static_cast<py::ssize_t>(nq), static_cast<py::ssize_t>(kk)};
                return py::make_tuple(to_array(std::move(ids), shape), to_array(std::move(dists), shape));
            },
            py::arg("queries"), py::arg("k"), py::arg("threads") = 0)
        .def(
            "radius",
            [](MihIndex& ix, const py::handle& q_obj, int64_t r, int threads) {
                uint32_t rr = radius_arg(r);
                py::array q = codes_arg(ix, q_obj, "queries");
                size_t nq = static_cast<size_t>(q.shape(0));
                imgsim::RangeResult res;
                {
                    py::gil_scoped_release nogil;
                    res = ix.radius(static_cast<const uint64_t*>(q.data()), nq, rr, threads);
                }
                auto nl = static_cast<py::ssize_t>(res.lims.size());
                auto nr = static_cast<py::ssize_t>(res.ids.size());
                return py::make_tuple(to_array(std::move(res.lims), {nl}), to_array(std::move(res.ids), {nr}),
                                      to_array(std::move(res.dists), {nr}));
            },
            py::arg("queries"), py::arg("r"), py::arg("threads") = 0)
        .def(
            "self_join",
            [](std::shared_ptr<MihIndex> ix, int64_t r, int threads) {
                uint32_t rr = radius_arg(r);
                py::gil_scoped_release nogil;
                return std::make_shared<MihSelfJoin>(std::move(ix), rr, threads);
            },
            py::arg("r"), py::arg("threads") = 0)
        .def_property(
            "path", [](const MihIndex& ix) { return std::string(path_name(ix.path())); },
            [](MihIndex& ix, const std::string& s) { ix.set_path(path_arg(s)); })
        .def("stats",
             [](const MihIndex& ix) {
                 imgsim::MihStats s = ix.stats();
                 py::dict d;
                 d["bits"] = 64 * s.words;
                 d["m"] = s.m;
                 d["m_auto"] = s.m_auto;
                 d["substring_bits"] = s.substring_bits;
                 d["size"] = s.size;
                 d["rows"] = s.rows;
                 d["indexed_rows"] = s.indexed_rows;
                 d["memory_bytes"] = s.memory_bytes;
                 d["path"] = path_name(ix.path());
                 d["last_kind"] = s.last_kind;
                 d["last_queries"] = s.last_queries;
                 d["last_scanned"] = s.last_scanned;
                 d["last_probes"] = s.last_probes;
                 d["last_candidates"] = s.last_candidates;
                 return d;
             })
        .def(
            "save",
            [](const MihIndex& ix, const std::string& path) {
                py::gil_scoped_release nogil;
                ix.save(path);
            },
            py::arg("path"))
        .def_static(
            "load",
            [](const std::string& path) {
                py::gil_scoped_release nogil;
                return MihIndex::load(path);
            },
            py::arg("path"));
}
