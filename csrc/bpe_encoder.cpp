// BpeEncoder: tokenizer.json's byte-level BPE pipeline without Python or the GIL. Per document: split out added
// tokens (leftmost-longest, as tokenizers' AddedVocabulary), pre-tokenize each remaining piece with the regex
// (bpe_pretokenize.h), BPE each pre-token (bpe.h) through the worker's word cache. Documents are spread over
// workers in contiguous, byte-balanced ranges; the output is the same for any worker count.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <iterator>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "bpe.h"
#include "bpe_pretokenize.h"
#include "modules.h"
#include "parallel.h"
#include "utf8.h"

namespace pytrain {
namespace {

namespace py = pybind11;
using bpe::Model;
using bpe::WordCache;

// Literal tokens found leftmost-longest: at the first position where any token starts, the longest one.
class AddedTokens {
  public:
    void add(std::string content, uint32_t id) {
        const uint8_t first = static_cast<uint8_t>(content[0]);
        auto& group = by_first_[first];
        group.push_back({std::move(content), id});
        std::stable_sort(group.begin(), group.end(),
                         [](const Token& a, const Token& b) { return a.content.size() > b.content.size(); });
        starts_[first] = true;
    }
    struct Found {
        size_t pos, length;
        uint32_t id;
    };
    // The first added token in text[from, n), or pos == n when there is none.
    Found next(const uint8_t* text, size_t n, size_t from) const {
        for (size_t i = from; i < n; ++i) {
            if (!starts_[text[i]]) continue;
            for (const Token& t : by_first_[text[i]]) {
                if (t.content.size() <= n - i && std::memcmp(text + i, t.content.data(), t.content.size()) == 0) {
                    return Found{i, t.content.size(), t.id};
                }
            }
        }
        return Found{n, 0, 0};
    }

  private:
    struct Token {
        std::string content;
        uint32_t id;
    };
    std::vector<Token> by_first_[256];
    bool starts_[256] = {};
};

std::vector<uint32_t> byte_ids_from(const std::vector<uint32_t>& ids) {
    if (ids.size() != 256) throw py::value_error("byte_ids must hold 256 ids");
    return ids;
}

bpe::MergeTable merge_table_from(const py::array_t<uint32_t, py::array::c_style | py::array::forcecast>& merges) {
    if (merges.ndim() != 2 || merges.shape(1) != 3) throw py::value_error("merges must be an (n, 3) array");
    bpe::MergeTable table;
    const size_t n = static_cast<size_t>(merges.shape(0));
    table.reserve(n);
    const uint32_t* row = merges.data();
    for (size_t rank = 0; rank < n; ++rank, row += 3) {
        table.insert(row[0], row[1], {static_cast<uint32_t>(rank), row[2]});
    }
    return table;
}

// Whether NFC leaves each text as it is, decided from its code points alone (kNfcChangingRanges): true means
// surely unchanged; false means NFC may change it (the caller normalizes such texts another way).
class NfcInert {
  public:
    static const NfcInert& instance() {
        static const NfcInert inert;
        return inert;
    }
    bool text(const uint8_t* p, size_t n) const {
        for (size_t i = 0; i < n;) {
            const uint8_t lead = p[i];
            if (lead < 0x80) {
                ++i;
                continue;
            }
            const int length = lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;  // valid UTF-8 (Python's own encoding)
            if (changing_[utf8::decode(p + i, length)]) return false;
            i += length;
        }
        return true;
    }

  private:
    NfcInert() : changing_(0x110000, 0) {
        for (const bpe::CodeRange& r : bpe::kNfcChangingRanges) {
            std::fill(changing_.begin() + r.first, changing_.begin() + r.last + 1, uint8_t{1});
        }
    }
    std::vector<uint8_t> changing_;
};

py::array_t<bool> nfc_unchanged(const py::list& texts) {
    const NfcInert& inert = NfcInert::instance();
    py::array_t<bool> out(static_cast<py::ssize_t>(texts.size()));
    bool* flags = out.mutable_data();
    for (size_t d = 0; d < texts.size(); ++d) {
        PyObject* item = PyList_GET_ITEM(texts.ptr(), static_cast<py::ssize_t>(d));
        if (!PyUnicode_Check(item)) throw py::type_error("texts must be str (item " + std::to_string(d) + ")");
        py::ssize_t size = 0;
        const char* utf8 = PyUnicode_AsUTF8AndSize(item, &size);
        if (utf8 == nullptr) throw py::error_already_set();
        flags[d] = inert.text(reinterpret_cast<const uint8_t*>(utf8), static_cast<size_t>(size));
    }
    return out;
}

py::list code_ranges(const bpe::CodeRange* begin, const bpe::CodeRange* end) {
    py::list out;
    for (const bpe::CodeRange* r = begin; r != end; ++r) out.append(py::make_tuple(r->first, r->last, r->cls));
    return out;
}

bpe::BytesMap bytes_map_from(const std::vector<std::pair<py::bytes, uint32_t>>& words) {
    bpe::BytesMap map;
    for (const auto& [word, id] : words) map.insert(std::string(word), id);
    return map;
}

class BpeEncoder {
  public:
    BpeEncoder(const std::vector<uint32_t>& byte_ids,
               const py::array_t<uint32_t, py::array::c_style | py::array::forcecast>& merges,
               const std::vector<std::pair<py::bytes, uint32_t>>& whole_words, bool ignore_merges,
               const std::vector<std::pair<py::bytes, uint32_t>>& added_tokens, const std::string& pattern,
               int max_digits)
        : model_(byte_ids_from(byte_ids), merge_table_from(merges), bytes_map_from(whole_words), ignore_merges),
          max_digits_(max_digits) {
        if (pattern == "gpt2") {
            pattern_ = bpe::Pattern::kGpt2;
        } else if (pattern == "llama3") {
            pattern_ = bpe::Pattern::kLlama3;
        } else {
            throw py::value_error("pattern must be 'gpt2' or 'llama3', got '" + pattern + "'");
        }
        if (max_digits < 1) throw py::value_error("max_digits must be >= 1");
        for (const auto& [content, id] : added_tokens) {
            std::string text = content;
            if (text.empty()) throw py::value_error("an added token is empty");
            added_.add(std::move(text), id);
        }
        bpe::CodeClasses::instance();  // build the table once, before any worker needs it
    }

    // (tokens, lengths, dropped): see the binding's docstring.
    py::tuple encode(const py::list& texts, int threads, int64_t bos, int64_t eos, const std::string& dtype,
                     bool drop_empty) {
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
                    encode_document(docs[d].first, docs[d].second, caches_[w], out);
                    raw_lengths[d] = static_cast<int64_t>(out.size() - before);
                }
            });
        }
        return frame(ids, raw_lengths, bos, eos, dtype, drop_empty);
    }

  private:
    void encode_document(const uint8_t* text, size_t n, WordCache& cache, std::vector<uint32_t>& out) const {
        size_t pos = 0;
        while (pos < n) {
            const AddedTokens::Found found = added_.next(text, n, pos);
            encode_piece(text + pos, found.pos - pos, cache, out);
            if (found.pos == n) break;
            out.push_back(found.id);
            pos = found.pos + found.length;
        }
    }

    void encode_piece(const uint8_t* piece, size_t n, WordCache& cache, std::vector<uint32_t>& out) const {
        bpe::pretokenize(pattern_, max_digits_, piece, n,
                         [&](size_t offset, size_t length) { model_.encode_word(piece + offset, length, cache, out); });
    }

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

    Model model_;
    bpe::Pattern pattern_;
    int max_digits_;
    AddedTokens added_;
    std::vector<WordCache> caches_;
    std::mutex mutex_;
};

}  // namespace

void bind_bpe(py::module_& m) {
    m.attr("bpe_unicode_version") = bpe::kUnicodeVersion;
    m.attr("bpe_unicode_sentinels") = code_ranges(std::begin(bpe::kSentinelRanges), std::end(bpe::kSentinelRanges));
    py::dict folds;
    for (const bpe::FoldSet& set : bpe::kContractionFolds) {
        py::list codes;
        for (uint32_t code : set.codes) {
            if (code != 0) codes.append(code);
        }
        folds[py::str(std::string(1, set.letter))] = codes;
    }
    m.attr("bpe_contraction_folds") = folds;
    m.def("bpe_nfc_unchanged", &nfc_unchanged, py::arg("texts"),
          "Per text, whether NFC surely leaves it unchanged (its code points are all NFC-inert; see gen_bpe_unicode.py).");
    py::class_<BpeEncoder>(m, "BpeEncoder", R"doc(Byte-level BPE encoder equal to a supported tokenizer.json.

Built by pytrain.data.fast_bpe, which checks that the tokenizer means exactly what this implements:
byte_ids (the id of each byte's byte-level character), merges ((n, 3) uint32 rows left, right, merged,
in rank order), whole_words ((bytes, id) for ignore_merges), added_tokens ((bytes, id), split out of
the text before pre-tokenization), pattern ("gpt2" or "llama3") and max_digits (llama3's \p{N}{1,D}).)doc")
        .def(py::init<const std::vector<uint32_t>&, const py::array_t<uint32_t, py::array::c_style | py::array::forcecast>&,
                      const std::vector<std::pair<py::bytes, uint32_t>>&, bool,
                      const std::vector<std::pair<py::bytes, uint32_t>>&, const std::string&, int>(),
             py::arg("byte_ids"), py::arg("merges"), py::arg("whole_words"), py::arg("ignore_merges"),
             py::arg("added_tokens"), py::arg("pattern"), py::arg("max_digits") = 3)
        .def("encode", &BpeEncoder::encode, py::arg("texts"), py::arg("threads") = 0, py::arg("bos") = -1,
             py::arg("eos") = -1, py::arg("dtype") = "uint32", py::arg("drop_empty") = false,
             R"doc(Encode a list of str with `threads` workers (0 = one per core), without the GIL.

Returns (tokens, lengths, dropped): one little-endian `dtype` array of [bos] + ids + [eos] per document
(bos/eos left out when negative), the int64 length of each document kept, and how many documents were
dropped for having no tokens (only with drop_empty).)doc");
}

}  // namespace pytrain
