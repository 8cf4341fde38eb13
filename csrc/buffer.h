// Zero-copy access to Python inputs: any C-contiguous buffer as bytes, integer arrays as int64 vectors.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace pytrain {

namespace py = pybind11;

// Holds a read-only view of a C-contiguous buffer (bytes, memoryview of an mmap, numpy array, ...) for its
// lifetime; the exporter cannot be resized or closed meanwhile, so the bytes stay valid with the GIL released.
// Whatever the item format, the view is read as len(buffer) raw bytes.
class ByteView {
  public:
    explicit ByteView(py::handle obj) {
        if (PyObject_GetBuffer(obj.ptr(), &view_, PyBUF_C_CONTIGUOUS) != 0) throw py::error_already_set();
    }
    ~ByteView() { PyBuffer_Release(&view_); }
    ByteView(const ByteView&) = delete;
    ByteView& operator=(const ByteView&) = delete;

    const uint8_t* data() const { return static_cast<const uint8_t*>(view_.buf); }
    size_t size() const { return static_cast<size_t>(view_.len); }

  private:
    Py_buffer view_{};
};

using Int64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// A 1-D integer array (numpy array of any integer dtype, or a list of ints) as a C-contiguous int64 array.
// Floats and other dtypes are refused rather than silently truncated; an empty sequence is accepted.
inline Int64Array as_int64_vector(py::handle obj, const char* name) {
    py::array arr = py::array::ensure(obj);
    if (!arr) throw py::type_error(std::string(name) + " must be a 1-D array of integers");
    if (arr.ndim() != 1) {
        throw py::value_error(std::string(name) + " must be 1-D, got " + std::to_string(arr.ndim()) + " dimensions");
    }
    const char kind = arr.dtype().kind();
    if (arr.size() > 0 && kind != 'i' && kind != 'u') {
        throw py::type_error(std::string(name) + " must be an integer array, got dtype " +
                             py::str(arr.dtype()).cast<std::string>());
    }
    return Int64Array::ensure(arr);
}

}  // namespace pytrain
