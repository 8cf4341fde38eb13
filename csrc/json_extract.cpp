// extract_json_field: validate every JSONL line and pull the string at a path, in parallel without the GIL.
// Only allocating the Python str objects needs the GIL: each text is measured while its line is validated, and
// decoded from the input straight into its str afterwards, in parallel again.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "buffer.h"
#include "json_field.h"
#include "modules.h"
#include "parallel.h"

namespace pytrain {
namespace {

constexpr size_t kMinBytesPerWorker = size_t{64} << 10;

json::Path parse_path(const py::sequence& path) {
    json::Path steps;
    for (const py::handle item : path) {
        if (PyLong_Check(item.ptr()) && !PyBool_Check(item.ptr())) {
            const long long index = item.cast<long long>();
            if (index < 0) throw py::value_error("path index must be >= 0, got " + std::to_string(index));
            steps.push_back({true, {}, static_cast<size_t>(index)});
        } else if (PyUnicode_Check(item.ptr())) {
            steps.push_back({false, item.cast<std::string>(), 0});
        } else {
            throw py::type_error("path elements must be str (object key) or int (array index), got " +
                                 py::str(py::type::of(item).attr("__name__")).cast<std::string>());
        }
    }
    return steps;
}

// Lines [first, last) of one worker, and the reasons it produced for them.
struct Shard {
    size_t first = 0, last = 0;
    std::vector<std::pair<size_t, std::string>> reasons;  // (line, reason) for the lines that have one
};

// Strings allocated with PyUnicode_New whose contents are written later, without the GIL: until they are
// handed to Python nothing else can reach them (str objects are not tracked by the garbage collector).
// Releases what it still owns; destroy it with the GIL held.
class PendingStrings {
  public:
    explicit PendingStrings(size_t n) : objs_(n, nullptr) {}
    ~PendingStrings() {
        for (PyObject* obj : objs_) Py_XDECREF(obj);
    }
    PendingStrings(const PendingStrings&) = delete;
    PendingStrings& operator=(const PendingStrings&) = delete;

    void allocate(size_t i, const json::Shape& shape) {
        objs_[i] = PyUnicode_New(static_cast<py::ssize_t>(shape.length), shape.max_char);
        if (objs_[i] == nullptr) throw py::error_already_set();
    }
    PyObject* get(size_t i) const { return objs_[i]; }
    PyObject* release(size_t i) { return std::exchange(objs_[i], nullptr); }

  private:
    std::vector<PyObject*> objs_;
};

// Decodes a measured JSON string into a fresh str allocated for its shape.
void fill_string(PyObject* str, const json::Text& text) {
    void* data = PyUnicode_DATA(str);
    switch (PyUnicode_KIND(str)) {
        case PyUnicode_1BYTE_KIND:
            json::widen_string(text.begin, text.end, static_cast<Py_UCS1*>(data));
            break;
        case PyUnicode_2BYTE_KIND:
            json::widen_string(text.begin, text.end, static_cast<Py_UCS2*>(data));
            break;
        default:
            json::widen_string(text.begin, text.end, static_cast<Py_UCS4*>(data));
            break;
    }
}

py::tuple extract_json_field(const py::buffer& buf, const py::handle& starts_obj, const py::sequence& path_obj,
                             int threads) {
    const ByteView view(buf);
    const Int64Array starts_arr = as_int64_vector(starts_obj, "starts");
    const json::Path path = parse_path(path_obj);
    const int64_t* starts = starts_arr.data();
    const size_t n_starts = static_cast<size_t>(starts_arr.size());
    if (n_starts == 0) throw py::value_error("starts must have n_lines + 1 entries (at least 1), got an empty array");
    const size_t n = n_starts - 1;
    if (starts[0] < 0 || static_cast<uint64_t>(starts[n]) > view.size()) {
        throw py::value_error("starts must lie within the buffer of " + std::to_string(view.size()) + " bytes");
    }
    for (size_t i = 0; i < n; ++i) {
        if (starts[i] > starts[i + 1]) {
            throw py::value_error("starts must be non-decreasing: starts[" + std::to_string(i) + "] = " +
                                  std::to_string(starts[i]) + " > starts[" + std::to_string(i + 1) + "] = " +
                                  std::to_string(starts[i + 1]));
        }
    }

    const uint8_t* data = view.data();
    const size_t bytes = static_cast<size_t>(starts[n] - starts[0]);
    const int workers = resolve_threads(threads, std::min(n, bytes / kMinBytesPerWorker));
    std::vector<Shard> shards(workers);
    std::vector<json::Text> found(n);
    py::array_t<uint8_t> status_arr(static_cast<py::ssize_t>(n));
    uint8_t* status = status_arr.mutable_data();

    // 1. Validate every line and measure the texts (no GIL).
    {
        py::gil_scoped_release nogil;
        run_parallel(workers, [&](int w) {
            // Contiguous lines holding about an equal share of the bytes.
            auto line_at = [&](int k) {
                const int64_t target = starts[0] + static_cast<int64_t>(split_point(bytes, workers, k));
                return static_cast<size_t>(std::lower_bound(starts, starts + n, target) - starts);
            };
            Shard& shard = shards[w];
            shard.first = w == 0 ? 0 : line_at(w);
            shard.last = w == workers - 1 ? n : line_at(w + 1);
            json::FieldExtractor extractor(path);
            std::string reason;
            for (size_t i = shard.first; i < shard.last; ++i) {
                status[i] = extractor.extract(data + starts[i], data + starts[i + 1], found[i], reason);
                if (!reason.empty()) shard.reasons.emplace_back(i, std::move(reason));
                reason.clear();
            }
        });
    }

    // 2. Allocate the str objects (GIL), 3. decode into them (no GIL), 4. hand them over in lists (GIL).
    PendingStrings strings(n);
    for (size_t i = 0; i < n; ++i) {
        if (status[i] == json::kOk) strings.allocate(i, found[i].shape);
    }
    {
        py::gil_scoped_release nogil;
        run_parallel(workers, [&](int w) {
            for (size_t i = shards[w].first; i < shards[w].last; ++i) {
                if (status[i] == json::kOk) fill_string(strings.get(i), found[i]);
            }
        });
    }
    py::list texts(n), reasons(n);
    const py::str empty("");
    for (size_t i = 0; i < n; ++i) {
        PyObject* text = status[i] == json::kOk ? strings.release(i) : Py_NewRef(Py_None);
        PyList_SET_ITEM(texts.ptr(), static_cast<py::ssize_t>(i), text);
        PyList_SET_ITEM(reasons.ptr(), static_cast<py::ssize_t>(i), Py_NewRef(empty.ptr()));
    }
    for (const Shard& shard : shards) {
        for (const auto& [line, reason] : shard.reasons) reasons[line] = py::str(reason);
    }
    return py::make_tuple(std::move(texts), std::move(status_arr), std::move(reasons));
}

}  // namespace

void bind_json_extract(py::module_& m) {
    m.def("extract_json_field", &extract_json_field, py::arg("buf"), py::arg("starts"), py::arg("path"),
          py::arg("threads") = 0,
          R"doc(Validate each JSON line and extract the string at `path`.

Line i is buf[starts[i]:starts[i+1]] without its trailing "\n" or "\r\n" (`starts` as from index_lines). Each
line must be exactly one RFC 8259 value (at most 512 nested containers). `path` lists object keys (str) and
array indices (int >= 0), e.g. ["messages", 0, "content"]; keys match after unescaping and the last of
duplicate keys wins, as in Python's json. Returns (texts, status, reasons), one entry per line:
  status  uint8: 0 OK, 1 BLANK (empty/whitespace line), 2 BAD_JSON, 3 MISSING_FIELD, 4 NOT_STRING, 5 EMPTY_TEXT
  texts   the decoded str when OK, else None
  reasons "" for OK and BLANK, else a short message without file or line, e.g.
          "invalid JSON at column 17: expected ',' or '}' after object member"
Strings decode like Python's json except that lone surrogates and ill-formed UTF-8 become U+FFFD (one per
maximal invalid subpart, like bytes.decode('utf-8', 'replace')), so every text is valid UTF-8. Parsing runs on
`threads` workers (0 = one per CPU core) without the GIL; results do not depend on the thread count.)doc");
}

}  // namespace pytrain
