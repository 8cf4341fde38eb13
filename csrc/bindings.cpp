// pybind11 bindings for pytrain._native.
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_native, m) {
    m.doc() = "pytrain native core: JSONL indexer, JSON field extractor, token writer, sample index";
}
