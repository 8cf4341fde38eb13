// What every tokenizer.json encoder in csrc/ shares: added tokens split out of the text (leftmost-longest, as
// tokenizers' AddedVocabulary), and the batch driver that spreads documents over workers in contiguous,
// byte-balanced ranges and frames the ids, so the output is the same for any worker count.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <iterator>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "bpe.h"
#include "parallel.h"

namespace pytrain::bpe {

namespace py = pybind11;

// Literal tokens found leftmost-longest: at the first position where any token starts, the longest one. Tokens
// are bucketed by their first two bytes (one-byte tokens apart), so a common first byte shared by many tokens
// (Mistral v0.3's 768 "[control_N]" tokens all start with '[') costs one bucket lookup, not a scan of them all.
class AddedTokens {
  public:
    AddedTokens() { std::fill(std::begin(single_), std::end(single_), int64_t{-1}); }
    void add(std::string content, uint32_t id) {
        const uint8_t first = static_cast<uint8_t>(content[0]);
        starts_[first] = true;
        if (content.size() == 1) {
            single_[first] = static_cast<int64_t>(id);
            return;
        }
        auto& group = by_pair_[pair_key(reinterpret_cast<const uint8_t*>(content.data()))];
        group.push_back({std::move(content), id});
        std::stable_sort(group.begin(), group.end(),
                         [](const Token& a, const Token& b) { return a.content.size() > b.content.size(); });
    }
    struct Found {
        size_t pos, length;
        uint32_t id;
    };
    // The first added token in text[from, n), or pos == n when there is none.
    Found next(const uint8_t* text, size_t n, size_t from) const {
        for (size_t i = from; i < n; ++i) {
            if (!starts_[text[i]]) continue;
            if (i + 1 < n && !by_pair_.empty()) {
                const auto group = by_pair_.find(pair_key(text + i));
                if (group != by_pair_.end()) {
                    for (const Token& t : group->second) {
                        if (t.content.size() <= n - i && std::memcmp(text + i, t.content.data(), t.content.size()) == 0) {
                            return Found{i, t.content.size(), t.id};
                        }
                    }
                }
            }
            if (single_[text[i]] >= 0) return Found{i, 1, static_cast<uint32_t>(single_[text[i]])};
        }
        return Found{n, 0, 0};
    }

  private:
    struct Token {
        std::string content;
        uint32_t id;
    };
    static uint16_t pair_key(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
    std::unordered_map<uint16_t, std::vector<Token>> by_pair_;  // tokens of 2+ bytes, longest first
    int64_t single_[256];                                       // one-byte tokens' ids, or -1
    bool starts_[256] = {};
};

inline MergeTable merge_table_from(const py::array_t<uint32_t, py::array::c_style | py::array::forcecast>& merges) {
    if (merges.ndim() != 2 || merges.shape(1) != 3) throw py::value_error("merges must be an (n, 3) array");
    MergeTable table;
    const size_t n = static_cast<size_t>(merges.shape(0));
    table.reserve(n);
    const uint32_t* row = merges.data();
    for (size_t rank = 0; rank < n; ++rank, row += 3) {
        table.insert(row[0], row[1], {static_cast<uint32_t>(rank), row[2]});
    }
    return table;
}

inline BytesMap bytes_map_from(const std::vector<std::pair<py::bytes, uint32_t>>& words) {
    BytesMap map;
    for (const auto& [word, id] : words) map.insert(std::string(word), id);
    return map;
}

inline AddedTokens added_tokens_from(const std::vector<std::pair<py::bytes, uint32_t>>& tokens) {
    AddedTokens added;
    for (const auto& [content, id] : tokens) {
        std::string text = content;
        if (text.empty()) throw py::value_error("an added token is empty");
        added.add(std::move(text), id);
    }
    return added;
}

// Runs a document encoder over a list of str without the GIL; owns the per-worker word caches.
class DocumentBatcher {
  public:
    // Encodes every str of `texts` with encoder.encode_document(text, bytes, the worker's WordCache, out), which
    // appends the document's ids to out. Returns (tokens, lengths, dropped), as def_encode documents.
    template <class Encoder>
    py::tuple encode(const py::list& texts, int threads, int64_t bos, int64_t eos, const std::string& dtype,
                     bool drop_empty, const Encoder& encoder) {
        if (dtype != "uint16" && dtype != "uint32") throw py::value_error("dtype must be 'uint16' or 'uint32'");
        const size_t n = texts.size();
        std::vector<py::object> alive(n);  // our own references: the list may change once the GIL is released
        std::vector<std::pair<const uint8_t*, size_t>> docs(n);
        size_t total_bytes = 0;
        for (size_t d = 0; d < n; ++d) {
            PyObject* item = PyList_GET_ITEM(texts.ptr(), static_cast<py::ssize_t>(d));
            if (!PyUnicode_Check(item)) {
                throw py::type_error("texts must be str, got " + std::string(Py_TYPE(item)->tp_name) +
                                     " (item " + std::to_string(d) + ")");
            }
            py::ssize_t size = 0;
            const char* utf8 = PyUnicode_AsUTF8AndSize(item, &size);
            if (utf8 == nullptr) throw py::error_already_set();
            alive[d] = py::reinterpret_borrow<py::object>(item);
            docs[d] = {reinterpret_cast<const uint8_t*>(utf8), static_cast<size_t>(size)};
            total_bytes += static_cast<size_t>(size);
        }

        const int workers = resolve_threads(threads, std::max<size_t>(1, total_bytes >> 16));
        std::vector<size_t> bounds(workers + 1, n);  // worker w encodes documents [bounds[w], bounds[w + 1])
        bounds[0] = 0;
        for (size_t d = 0, w = 1, seen = 0; d < n && w < static_cast<size_t>(workers); ++d) {
            seen += docs[d].second;
            while (w < static_cast<size_t>(workers) && seen >= split_point(total_bytes, workers, static_cast<int>(w))) {
                bounds[w++] = d + 1;
            }
        }
        std::vector<std::vector<uint32_t>> ids(workers);
        std::vector<int64_t> raw_lengths(n);
        {
            py::gil_scoped_release nogil;  // before locking: a thread waiting on the lock must not hold the GIL
            std::lock_guard<std::mutex> lock(mutex_);  // the word caches belong to one call at a time
            if (caches_.size() < static_cast<size_t>(workers)) caches_.resize(workers);
            run_parallel(workers, [&](int w) {
                std::vector<uint32_t>& out = ids[w];
                out.reserve((std::min(total_bytes, size_t{1} << 30) / workers) / 3);
                for (size_t d = bounds[w]; d < bounds[w + 1]; ++d) {
                    const size_t before = out.size();
                    encoder.encode_document(docs[d].first, docs[d].second, caches_[w], out);
                    raw_lengths[d] = static_cast<int64_t>(out.size() - before);
                }
            });
        }
        return frame(ids, raw_lengths, bos, eos, dtype, drop_empty);
    }

  private:
    // One array of `dtype` holding [bos] + ids + [eos] per kept document, and the kept documents' lengths.
    static py::tuple frame(const std::vector<std::vector<uint32_t>>& ids, const std::vector<int64_t>& raw_lengths,
                           int64_t bos, int64_t eos, const std::string& dtype, bool drop_empty) {
        const uint32_t max_id = dtype == "uint16" ? 0xFFFF : 0xFFFFFFFF;
        if (bos > static_cast<int64_t>(max_id) || eos > static_cast<int64_t>(max_id)) {
            throw py::value_error("the bos/eos id does not fit " + dtype);
        }
        const int64_t extra = (bos >= 0) + (eos >= 0);
        size_t kept = 0, total = 0;
        for (int64_t length : raw_lengths) {
            if (drop_empty && length == 0) continue;
            ++kept;
            total += static_cast<size_t>(length + extra);
        }
        py::array tokens(py::dtype(dtype == "uint16" ? "<u2" : "<u4"), std::vector<py::ssize_t>{static_cast<py::ssize_t>(total)});
        py::array_t<int64_t> lengths(static_cast<py::ssize_t>(kept));
        int64_t* length_out = lengths.mutable_data();
        auto* out = static_cast<uint8_t*>(tokens.mutable_data());
        const size_t width = dtype == "uint16" ? 2 : 4;
        uint32_t max_seen = 0;
        {
            py::gil_scoped_release nogil;
            const auto put = [&](uint32_t id) {
                max_seen = std::max(max_seen, id);
                for (size_t b = 0; b < width; ++b) out[b] = static_cast<uint8_t>(id >> (8 * b));  // little-endian
                out += width;
            };
            // Documents are laid out worker after worker, so one running cursor over the parts follows them.
            size_t part = 0, offset = 0;
            for (size_t d = 0; d < raw_lengths.size(); ++d) {
                const int64_t length = raw_lengths[d];
                if (drop_empty && length == 0) continue;
                while (length > 0 && offset == ids[part].size()) {
                    ++part;
                    offset = 0;
                }
                if (bos >= 0) put(static_cast<uint32_t>(bos));
                for (int64_t i = 0; i < length; ++i) put(ids[part][offset++]);
                if (eos >= 0) put(static_cast<uint32_t>(eos));
                *length_out++ = length + extra;
            }
        }
        if (max_seen > max_id) throw py::value_error("token id " + std::to_string(max_seen) + " does not fit " + dtype);
        return py::make_tuple(std::move(tokens), std::move(lengths), raw_lengths.size() - kept);
    }

    std::vector<WordCache> caches_;
    std::mutex mutex_;
};

// Binds Encoder.encode: Encoder has `encode_document(text, n, cache, out) const` and a DocumentBatcher `batcher`.
template <class Encoder>
void def_encode(py::class_<Encoder>& cls) {
    cls.def(
        "encode",
        [](Encoder& self, const py::list& texts, int threads, int64_t bos, int64_t eos, const std::string& dtype,
           bool drop_empty) { return self.batcher.encode(texts, threads, bos, eos, dtype, drop_empty, self); },
        py::arg("texts"), py::arg("threads") = 0, py::arg("bos") = -1, py::arg("eos") = -1, py::arg("dtype") = "uint32",
        py::arg("drop_empty") = false,
        R"doc(Encode a list of str with `threads` workers (0 = one per core), without the GIL.

Returns (tokens, lengths, dropped): one little-endian `dtype` array of [bos] + ids + [eos] per document
(bos/eos left out when negative), the int64 length of each document kept, and how many documents were
dropped for having no tokens (only with drop_empty).)doc");
}

}  // namespace pytrain::bpe
