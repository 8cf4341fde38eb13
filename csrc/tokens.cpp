// narrow_tokens: the token writer's core. Concatenates per-document token-id lists (with optional BOS/EOS) into
// one little-endian uint16/uint32 array. Works on Python objects, so it holds the GIL; it reads them in place.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "byte_order.h"
#include "modules.h"

namespace pytrain {
namespace {

namespace py = pybind11;

// A list or tuple as a borrowed item array (other iterables are materialised once by PySequence_Fast).
class FastSequence {
  public:
    FastSequence(py::handle obj, const char* what)
        : seq_(py::reinterpret_steal<py::object>(PySequence_Fast(obj.ptr(), what))) {
        if (!seq_) throw py::error_already_set();
    }
    py::ssize_t size() const { return PySequence_Fast_GET_SIZE(seq_.ptr()); }
    PyObject** items() const { return PySequence_Fast_ITEMS(seq_.ptr()); }

  private:
    py::object seq_;
};

std::string where(size_t doc, size_t pos) {
    return " (document " + std::to_string(doc) + ", position " + std::to_string(pos) + ")";
}

[[noreturn]] void throw_does_not_fit(const std::string& id, const std::string& dtype, const std::string& context) {
    std::string msg = "token id " + id + " does not fit " + dtype;
    if (dtype == "uint16") msg += "; the tokenizer's vocabulary needs uint32";
    throw py::value_error(msg + context);
}

// Reads one token id and checks 0 <= id <= max_id. Only int (and subclasses) is accepted: converting anything
// else could run Python code that mutates the lists whose item arrays we are walking.
uint32_t read_id(PyObject* obj, uint32_t max_id, const std::string& dtype, size_t doc, size_t pos) {
    if (!PyLong_Check(obj)) {
        throw py::type_error(std::string("token ids must be int, got ") + Py_TYPE(obj)->tp_name + where(doc, pos));
    }
    const long long v = PyLong_AsLongLong(obj);
    if (v == -1 && PyErr_Occurred()) {  // beyond 64 bits
        PyErr_Clear();
        const std::string text = py::str(obj);
        if (text[0] == '-') throw py::value_error("token id " + text + " is negative" + where(doc, pos));
        throw_does_not_fit(text, dtype, where(doc, pos));
    }
    if (v < 0) throw py::value_error("token id " + std::to_string(v) + " is negative" + where(doc, pos));
    if (static_cast<unsigned long long>(v) > max_id) throw_does_not_fit(std::to_string(v), dtype, where(doc, pos));
    return static_cast<uint32_t>(v);
}

template <class Word>
void fill(const std::vector<FastSequence>& docs, int64_t bos, int64_t eos, uint32_t max_id, const std::string& dtype,
          uint8_t* out, int64_t* lengths) {
    for (size_t d = 0; d < docs.size(); ++d) {
        const uint8_t* start = out;
        if (bos >= 0) {
            store_le<Word>(out, static_cast<Word>(bos));
            out += sizeof(Word);
        }
        PyObject** items = docs[d].items();
        const size_t count = static_cast<size_t>(docs[d].size());
        for (size_t i = 0; i < count; ++i) {
            store_le<Word>(out, static_cast<Word>(read_id(items[i], max_id, dtype, d, i)));
            out += sizeof(Word);
        }
        if (eos >= 0) {
            store_le<Word>(out, static_cast<Word>(eos));
            out += sizeof(Word);
        }
        lengths[d] = static_cast<int64_t>((out - start) / sizeof(Word));
    }
}

py::tuple narrow_tokens(const py::handle& batch, const std::string& dtype, int64_t bos, int64_t eos) {
    uint32_t max_id;
    if (dtype == "uint16") {
        max_id = 0xFFFF;
    } else if (dtype == "uint32") {
        max_id = 0xFFFFFFFF;
    } else {
        throw py::value_error("dtype must be 'uint16' or 'uint32', got '" + dtype + "'");
    }
    for (const auto& [name, id] : {std::pair<const char*, int64_t>{"bos", bos}, {"eos", eos}}) {
        if (id > static_cast<int64_t>(max_id)) {
            throw_does_not_fit(std::to_string(id), dtype, std::string(" (the ") + name + " id)");
        }
    }

    const FastSequence outer(batch, "batch must be a list of token-id lists");
    std::vector<FastSequence> docs;
    docs.reserve(static_cast<size_t>(outer.size()));
    const int64_t extra = (bos >= 0) + (eos >= 0);
    int64_t total = 0;
    for (py::ssize_t d = 0; d < outer.size(); ++d) {
        docs.emplace_back(outer.items()[d], "each document must be a list or tuple of token ids");
        total += docs.back().size() + extra;
    }

    py::array tokens(py::dtype(dtype == "uint16" ? "<u2" : "<u4"), std::vector<py::ssize_t>{total});
    py::array_t<int64_t> lengths(static_cast<py::ssize_t>(docs.size()));
    auto* out = static_cast<uint8_t*>(tokens.mutable_data());
    if (max_id == 0xFFFF) {
        fill<uint16_t>(docs, bos, eos, max_id, dtype, out, lengths.mutable_data());
    } else {
        fill<uint32_t>(docs, bos, eos, max_id, dtype, out, lengths.mutable_data());
    }
    return py::make_tuple(std::move(tokens), std::move(lengths));
}

}  // namespace

void bind_tokens(py::module_& m) {
    m.def("narrow_tokens", &narrow_tokens, py::arg("batch"), py::arg("dtype"), py::arg("bos") = -1,
          py::arg("eos") = -1,
          R"doc(Concatenate documents of token ids into one array of a narrow dtype.

`batch` is a list (or tuple) of documents, each a list or tuple of ints. Each document becomes
[bos] + ids + [eos], with bos/eos left out when negative. Returns (tokens, lengths): tokens is one
little-endian array of `dtype` ("uint16" or "uint32"), lengths the int64 per-document lengths (bos/eos
included). Raises ValueError when an id is negative or does not fit the dtype.)doc");
}

}  // namespace pytrain
