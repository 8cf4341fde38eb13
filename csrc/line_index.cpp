// index_lines: start offsets of the '\n'-terminated lines of a byte buffer, in two parallel passes
// (count the newlines of each part, then write each part's offsets at its prefix-sum position).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <vector>

#include "buffer.h"
#include "modules.h"
#include "parallel.h"

namespace pytrain {
namespace {

constexpr size_t kMinBytesPerWorker = size_t{1} << 20;  // below this a thread costs more than it saves

const uint8_t* find_newline(const uint8_t* p, const uint8_t* end) {
    if (p == end) return nullptr;  // memchr must not see the null pointer of an empty buffer
    return static_cast<const uint8_t*>(std::memchr(p, '\n', static_cast<size_t>(end - p)));
}

int64_t count_newlines(const uint8_t* p, const uint8_t* end) {
    int64_t n = 0;
    while ((p = find_newline(p, end)) != nullptr) {
        ++n;
        ++p;
    }
    return n;
}

py::array_t<int64_t> index_lines(const py::buffer& buf, int threads) {
    const ByteView view(buf);
    const uint8_t* data = view.data();
    const size_t size = view.size();
    const int workers = resolve_threads(threads, size / kMinBytesPerWorker);
    std::vector<int64_t> first(workers + 1, 0);  // first[w]: newlines before part w
    {
        py::gil_scoped_release nogil;
        run_parallel(workers, [&](int w) {
            const uint8_t* begin = data + split_point(size, workers, w);
            first[w + 1] = count_newlines(begin, data + split_point(size, workers, w + 1));
        });
        for (int w = 0; w < workers; ++w) first[w + 1] += first[w];
    }
    // The newline at byte p starts the next line at p + 1 (entry 1 + its rank). When the buffer ends with '\n',
    // the last newline's entry is the sentinel itself; otherwise one more entry closes the unterminated last line.
    const bool unterminated = size > 0 && data[size - 1] != '\n';
    const int64_t newlines = first[workers];
    py::array_t<int64_t> starts(newlines + 1 + (unterminated ? 1 : 0));
    int64_t* out = starts.mutable_data();
    out[0] = 0;
    out[starts.size() - 1] = static_cast<int64_t>(size);
    {
        py::gil_scoped_release nogil;
        run_parallel(workers, [&](int w) {
            int64_t* dst = out + 1 + first[w];
            const uint8_t* end = data + split_point(size, workers, w + 1);
            for (const uint8_t* p = data + split_point(size, workers, w); (p = find_newline(p, end)) != nullptr;) {
                *dst++ = ++p - data;
            }
        });
    }
    return starts;
}

}  // namespace

void bind_line_index(py::module_& m) {
    m.def("index_lines", &index_lines, py::arg("buf"), py::arg("threads") = 0,
          R"doc(Start offsets of the lines of `buf`, plus a final sentinel len(buf).

`buf` is any C-contiguous buffer (bytes, numpy uint8 array, memoryview of a read-only mmap); it is read in
place. Line i is buf[starts[i]:starts[i+1]] including its '\n'; a last line without '\n' is a line too, and
an empty buffer gives [0]. Returns an int64 array of n_lines + 1 entries, identical for every `threads`
(0 = one worker per CPU core). The GIL is released while scanning.)doc");
}

}  // namespace pytrain
