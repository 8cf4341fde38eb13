// Token ids that a pack input already holds (a Megatron .bin), made pack-ready in one pass, and the pack's
// additive checksum.
//
// frame_ready_ids: a window of documents read from the file, as raw little-endian ids of the file's dtype, is
// checked against the vocabulary, narrowed to the pack's dtype and framed (BOS / EOS added only where a document
// lacks it) in a single pass with the GIL released: numpy did this in four passes over three fresh arrays
// (min/max, astype, np.insert), which made the Megatron -> pack conversion memory-bound at ~4x the bytes.
// token_sum: the sum of a pack's ids mod 2**64 (the manifest's tokens_sum), without numpy's widening copy.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "buffer.h"
#include "byte_order.h"
#include "modules.h"

// The hot loops get an AVX2 build beside the baseline one, picked at load time by the CPU (the baseline x86-64
// wheel has SSE2 only, which lacks unsigned 16-bit min/max: the uint16 check ran at half the speed).
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define PYTRAIN_AVX2_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define PYTRAIN_AVX2_CLONES
#endif

namespace pytrain {
namespace {

template <class Src>
bool out_of_range(Src v, Src hi) {
    if constexpr (std::is_signed_v<Src>) {
        return v > hi || v < Src(0);
    } else {
        return v > hi;
    }
}

// Checks ids [0, n) of `src` against [0, max_id] and, when `dst` is not null, narrows them into it, block by
// block so that each block is still in the L1 cache when it is copied. A block's smallest and largest ids are
// min/max reductions (vectorized at the source's own width); only a block holding a bad id is walked one by
// one. Returns the index of the first bad id, or -1.
template <class Src, class Dst>
int64_t check_and_narrow(const uint8_t* src, size_t n, uint64_t max_id, uint8_t* dst) {
    constexpr uint64_t kTop = static_cast<uint64_t>(std::numeric_limits<Src>::max());
    const bool unchecked = !std::is_signed_v<Src> && max_id >= kTop;  // no value of this dtype can be out of range
    const Src hi = static_cast<Src>(max_id < kTop ? max_id : kTop);
    constexpr size_t kBlock = 4096;
    for (size_t start = 0; start < n; start += kBlock) {
        const size_t end = start + kBlock < n ? start + kBlock : n;
        if (!unchecked) {
            Src low = std::numeric_limits<Src>::max(), high = std::numeric_limits<Src>::min();
            for (size_t i = start; i < end; ++i) {
                const Src v = load_le<Src>(src + i * sizeof(Src));
                low = v < low ? v : low;
                high = v > high ? v : high;
            }
            if (high > hi || out_of_range(low, hi)) {
                for (size_t i = start; i < end; ++i) {
                    if (out_of_range(load_le<Src>(src + i * sizeof(Src)), hi)) return static_cast<int64_t>(i);
                }
            }
        }
        if (dst == nullptr) continue;
        if constexpr (sizeof(Src) == sizeof(Dst)) {  // ids checked >= 0: the same bytes
            std::memcpy(dst + start * sizeof(Dst), src + start * sizeof(Src), (end - start) * sizeof(Src));
        } else {
            for (size_t i = start; i < end; ++i) {
                store_le<Dst>(dst + i * sizeof(Dst), static_cast<Dst>(load_le<Src>(src + i * sizeof(Src))));
            }
        }
    }
    return -1;
}

struct Frame {
    int64_t bos, eos;  // < 0: not added
};

// Checks every id of the window in file order (kept documents or not, so the error names the first bad id of
// the file) and writes the kept documents framed. Returns the first bad index, or -1 when all was written.
template <class Src, class Dst>
PYTRAIN_AVX2_CLONES int64_t fill(const uint8_t* src, const int64_t* lengths, const bool* keep, size_t docs, const std::vector<uint8_t>& need_bos,
             const std::vector<uint8_t>& need_eos, uint64_t max_id, Frame frame, uint8_t* dst, int64_t* out_lengths) {
    size_t kept = 0, at = 0;
    for (size_t d = 0; d < docs; ++d) {
        const size_t n = static_cast<size_t>(lengths[d]);
        const bool keeping = keep == nullptr || keep[d];
        uint8_t* const start = dst;
        if (keeping && need_bos[d]) {
            store_le<Dst>(dst, static_cast<Dst>(frame.bos));
            dst += sizeof(Dst);
        }
        const int64_t bad = check_and_narrow<Src, Dst>(src + at * sizeof(Src), n, max_id, keeping ? dst : nullptr);
        if (bad >= 0) return static_cast<int64_t>(at) + bad;
        at += n;
        if (!keeping) continue;
        dst += n * sizeof(Dst);
        if (need_eos[d]) {
            store_le<Dst>(dst, static_cast<Dst>(frame.eos));
            dst += sizeof(Dst);
        }
        out_lengths[kept++] = static_cast<int64_t>((dst - start) / sizeof(Dst));
    }
    return -1;
}

template <class Src>
int64_t id_at(const uint8_t* src, size_t i) {
    return static_cast<int64_t>(load_le<Src>(src + i * sizeof(Src)));
}

template <class Fn>
auto with_source_type(const std::string& dtype, Fn&& fn) {
    if (dtype == "uint8") return fn(uint8_t{});
    if (dtype == "int8") return fn(int8_t{});
    if (dtype == "int16") return fn(int16_t{});
    if (dtype == "uint16") return fn(uint16_t{});
    if (dtype == "int32") return fn(int32_t{});
    if (dtype == "int64") return fn(int64_t{});
    throw py::value_error("source dtype must be uint8, int8, int16, uint16, int32 or int64, got '" + dtype + "'");
}

py::tuple frame_ready_ids(const py::handle& raw_obj, const std::string& src_dtype, const py::handle& lengths_obj,
                          const py::object& keep_obj, int64_t max_id, int64_t bos, int64_t eos,
                          const std::string& out_dtype) {
    if (out_dtype != "uint16" && out_dtype != "uint32") {
        throw py::value_error("out_dtype must be 'uint16' or 'uint32', got '" + out_dtype + "'");
    }
    const uint64_t out_top = out_dtype == "uint16" ? 0xFFFF : 0xFFFFFFFF;
    if (max_id < 0 || static_cast<uint64_t>(max_id) > out_top) {
        throw py::value_error("max_id " + std::to_string(max_id) + " does not fit " + out_dtype);
    }
    if (bos > max_id || eos > max_id) throw py::value_error("bos and eos must be ids <= max_id (or negative: none)");
    const ByteView raw(raw_obj);
    const Int64Array lengths = as_int64_vector(lengths_obj, "lengths");
    const size_t docs = static_cast<size_t>(lengths.size());
    py::array_t<bool, py::array::c_style | py::array::forcecast> keep;
    if (!keep_obj.is_none()) {
        keep = py::array_t<bool, py::array::c_style | py::array::forcecast>::ensure(keep_obj);
        if (!keep || keep.ndim() != 1 || static_cast<size_t>(keep.size()) != docs) {
            throw py::value_error("keep must be a 1-D bool array with one entry per document");
        }
    }
    const bool* keep_ptr = keep_obj.is_none() ? nullptr : keep.data();
    const size_t width = with_source_type(src_dtype, [](auto v) { return sizeof(v); });
    size_t tokens = 0;
    for (size_t d = 0; d < docs; ++d) {
        if (lengths.data()[d] < 0) throw py::value_error("lengths must be >= 0");
        tokens += static_cast<size_t>(lengths.data()[d]);
    }
    if (tokens * width != raw.size()) {
        throw py::value_error("the lengths sum to " + std::to_string(tokens) + " ids, but raw holds " +
                              std::to_string(raw.size()) + " bytes of " + src_dtype);
    }
    // Which kept documents need BOS / EOS: from their first and last ids (checked later with the rest).
    std::vector<uint8_t> need_bos(docs), need_eos(docs);
    size_t out_tokens = 0, kept = 0;
    with_source_type(src_dtype, [&](auto v) {
        using Src = decltype(v);
        size_t at = 0;
        for (size_t d = 0; d < docs; ++d) {
            const size_t n = static_cast<size_t>(lengths.data()[d]);
            if (keep_ptr == nullptr || keep_ptr[d]) {
                need_bos[d] = bos >= 0 && (n == 0 || id_at<Src>(raw.data(), at) != bos);
                need_eos[d] = eos >= 0 && (n == 0 || id_at<Src>(raw.data(), at + n - 1) != eos);
                out_tokens += n + need_bos[d] + need_eos[d];
                ++kept;
            }
            at += n;
        }
        return 0;
    });
    py::array out(py::dtype(out_dtype == "uint16" ? "<u2" : "<u4"), std::vector<py::ssize_t>{static_cast<py::ssize_t>(out_tokens)});
    py::array_t<int64_t> out_lengths(static_cast<py::ssize_t>(kept));
    auto* dst = static_cast<uint8_t*>(out.mutable_data());
    int64_t* dst_lengths = out_lengths.mutable_data();
    int64_t bad;
    {
        py::gil_scoped_release nogil;
        bad = with_source_type(src_dtype, [&](auto v) {
            using Src = decltype(v);
            const Frame frame{bos, eos};
            return out_dtype == "uint16"
                       ? fill<Src, uint16_t>(raw.data(), lengths.data(), keep_ptr, docs, need_bos, need_eos,
                                             static_cast<uint64_t>(max_id), frame, dst, dst_lengths)
                       : fill<Src, uint32_t>(raw.data(), lengths.data(), keep_ptr, docs, need_bos, need_eos,
                                             static_cast<uint64_t>(max_id), frame, dst, dst_lengths);
        });
    }
    if (bad >= 0) {
        const int64_t value = with_source_type(src_dtype, [&](auto v) { return id_at<decltype(v)>(raw.data(), static_cast<size_t>(bad)); });
        return py::make_tuple(py::none(), py::none(), py::make_tuple(bad, value));
    }
    return py::make_tuple(std::move(out), std::move(out_lengths), py::none());
}

template <class Word>
PYTRAIN_AVX2_CLONES uint64_t sum_words(const uint8_t* p, size_t n) {
    uint64_t total = 0;
    for (size_t i = 0; i < n; ++i) total += load_le<Word>(p + i * sizeof(Word));
    return total;
}

uint64_t token_sum(const py::array& tokens) {
    const py::dtype dtype = tokens.dtype();
    if (dtype.kind() != 'u' || (dtype.itemsize() != 2 && dtype.itemsize() != 4)) {
        throw py::type_error("tokens must be a uint16 or uint32 array");
    }
    const ByteView view(tokens);
    py::gil_scoped_release nogil;
    return dtype.itemsize() == 2 ? sum_words<uint16_t>(view.data(), view.size() / 2)
                                 : sum_words<uint32_t>(view.data(), view.size() / 4);
}

}  // namespace

void bind_ready_ids(py::module_& m) {
    m.def("frame_ready_ids", &frame_ready_ids, py::arg("raw"), py::arg("src_dtype"), py::arg("lengths"),
          py::arg("keep"), py::arg("max_id"), py::arg("bos"), py::arg("eos"), py::arg("out_dtype"),
          R"doc(Check, narrow and frame a window of ready token ids in one pass (GIL released).

`raw`: the little-endian ids of `src_dtype` (uint8, int8, int16, uint16, int32 or int64) of documents of
`lengths` ids, back to back. Every id must lie in [0, max_id]. The documents where `keep` (a bool array, or
None for all) is true are written to one `out_dtype` ("uint16"/"uint32") array, each with BOS `bos` first
unless it already starts with it and EOS `eos` last unless it already ends with it (negative: never added).
Returns (tokens, lengths of the kept documents, None), or (None, None, (index, value)) for the first id out
of range, at `index` ids into `raw`.)doc");
    m.def("token_sum", &token_sum, py::arg("tokens"),
          "The sum of a uint16/uint32 array's values mod 2**64 (a pack's tokens_sum), GIL released.");
}

}  // namespace pytrain
