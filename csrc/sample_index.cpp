// build_sample_index: where each fixed-length training sample starts in a shuffled document stream (the loop of
// Megatron's build_sample_idx). One pass over samples and documents, O(num_samples + n_docs).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "buffer.h"
#include "modules.h"

namespace pytrain {
namespace {

void validate(const int64_t* offsets, size_t n_docs, const int64_t* order, size_t n_order, int64_t seq_len) {
    if (seq_len < 1) throw py::value_error("seq_len must be >= 1, got " + std::to_string(seq_len));
    for (size_t d = 0; d < n_docs; ++d) {
        if (offsets[d] > offsets[d + 1]) {
            throw py::value_error("doc_offsets must be non-decreasing: doc_offsets[" + std::to_string(d) + "] = " +
                                  std::to_string(offsets[d]) + " > doc_offsets[" + std::to_string(d + 1) +
                                  "] = " + std::to_string(offsets[d + 1]));
        }
    }
    if (n_order != n_docs) {
        throw py::value_error("doc_order must be a permutation of the " + std::to_string(n_docs) +
                              " document ids, got " + std::to_string(n_order) + " entries");
    }
    std::vector<bool> seen(n_docs, false);
    for (size_t k = 0; k < n_order; ++k) {
        const int64_t d = order[k];
        if (d < 0 || static_cast<size_t>(d) >= n_docs) {
            throw py::value_error("doc_order[" + std::to_string(k) + "] = " + std::to_string(d) +
                                  " is not a document id in [0, " + std::to_string(n_docs) + ")");
        }
        if (seen[d]) {
            throw py::value_error("doc_order is not a permutation: document " + std::to_string(d) + " appears twice");
        }
        seen[d] = true;
    }
}

py::array_t<int64_t> build_sample_index(const py::handle& offsets_obj, const py::handle& order_obj, int64_t seq_len) {
    const Int64Array offsets_arr = as_int64_vector(offsets_obj, "doc_offsets");
    const Int64Array order_arr = as_int64_vector(order_obj, "doc_order");
    if (offsets_arr.size() == 0) throw py::value_error("doc_offsets must have n_docs + 1 entries (at least 1)");
    const int64_t* offsets = offsets_arr.data();
    const int64_t* order = order_arr.data();
    const size_t n_docs = static_cast<size_t>(offsets_arr.size()) - 1;
    validate(offsets, n_docs, order, static_cast<size_t>(order_arr.size()), seq_len);

    const int64_t total = offsets[n_docs] - offsets[0];
    const int64_t num_samples = total >= 2 ? (total - 1) / seq_len : 0;
    py::array_t<int64_t> rows({num_samples + 1, int64_t{2}});
    int64_t* out = rows.mutable_data();
    {
        py::gil_scoped_release nogil;
        auto doc_length = [&](size_t k) { return offsets[order[k] + 1] - offsets[order[k]]; };
        // (k, off): the stream token at doc_order[k], offset off; kept on a token (never at the end of a
        // document, so never in an empty one) as long as tokens remain.
        size_t k = 0;
        int64_t off = 0;
        while (k < n_docs && doc_length(k) == 0) ++k;
        for (int64_t s = 0;; ++s) {
            out[2 * s] = static_cast<int64_t>(k);
            out[2 * s + 1] = off;
            if (s == num_samples) break;
            // Advance seq_len tokens: the last token of sample s is the first of sample s + 1.
            int64_t remaining = seq_len;
            while (remaining >= doc_length(k) - off) {
                remaining -= doc_length(k) - off;
                off = 0;
                ++k;
                if (remaining == 0) {
                    while (k < n_docs && doc_length(k) == 0) ++k;
                    break;
                }
            }
            off += remaining;
        }
    }
    return rows;
}

}  // namespace

void bind_sample_index(py::module_& m) {
    m.def("build_sample_index", &build_sample_index, py::arg("doc_offsets"), py::arg("doc_order"), py::arg("seq_len"),
          R"doc(Start positions of the training samples of one epoch, as an int64 array of shape (num_samples + 1, 2).

Document d spans tokens [doc_offsets[d], doc_offsets[d+1]); the epoch lays the documents end to end in the order
`doc_order` (a permutation of 0..n_docs-1), giving a stream of T tokens. Sample s is stream tokens
[s*seq_len, s*seq_len + seq_len] (seq_len + 1 tokens: inputs and shifted labels, so consecutive samples share a
token); num_samples = (T - 1) // seq_len, 0 when T < 2. Row s = (k, off) locates stream token s*seq_len: it lies
at offset `off` of document doc_order[k] (empty documents are skipped, so off < that document's length). Row
num_samples locates the last token of the last sample, hence sample s runs from row s to row s+1 inclusive. When
T == 0 the single row is (n_docs, 0).)doc");
}

}  // namespace pytrain
