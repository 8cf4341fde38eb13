// BpeEncoder: tokenizer.json's byte-level BPE pipeline without Python or the GIL. Per document: split out added
// tokens (bpe_batch.h), pre-tokenize each remaining piece with the regex (bpe_pretokenize.h), BPE each pre-token
// (bpe.h) through the worker's word cache; bpe_batch.h spreads the documents over workers.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "bpe.h"
#include "bpe_batch.h"
#include "bpe_pretokenize.h"
#include "modules.h"
#include "utf8.h"

namespace pytrain {
namespace {

namespace py = pybind11;
using bpe::AddedTokens;
using bpe::Model;
using bpe::WordCache;

std::vector<uint32_t> byte_ids_from(const std::vector<uint32_t>& ids) {
    if (ids.size() != 256) throw py::value_error("byte_ids must hold 256 ids");
    return ids;
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
            const size_t length = utf8::lead_length(lead);
            if (changing_[utf8::decode(p + i, static_cast<int>(length))]) return false;
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

class BpeEncoder {
  public:
    BpeEncoder(const std::vector<uint32_t>& byte_ids,
               const py::array_t<uint32_t, py::array::c_style | py::array::forcecast>& merges,
               const std::vector<std::pair<py::bytes, uint32_t>>& whole_words, bool ignore_merges,
               const std::vector<std::pair<py::bytes, uint32_t>>& added_tokens, const std::string& pattern,
               int max_digits)
        : model_(byte_ids_from(byte_ids), bpe::merge_table_from(merges), bpe::bytes_map_from(whole_words), ignore_merges),
          added_(bpe::added_tokens_from(added_tokens)), max_digits_(max_digits) {
        if (pattern == "gpt2") {
            pattern_ = bpe::Pattern::kGpt2;
        } else if (pattern == "llama3") {
            pattern_ = bpe::Pattern::kLlama3;
        } else {
            throw py::value_error("pattern must be 'gpt2' or 'llama3', got '" + pattern + "'");
        }
        if (max_digits < 1) throw py::value_error("max_digits must be >= 1");
        bpe::CodeClasses::instance();  // build the table once, before any worker needs it
    }

    // One document's ids, appended to out (DocumentBatcher calls it from its workers).
    void encode_document(const uint8_t* text, size_t n, WordCache& cache, std::vector<uint32_t>& out) const {
        thread_local std::vector<AddedTokens::Found> found;
        if (!added_.find_all(text, n, found)) return;  // interrupted: the call raises
        size_t pos = 0;
        for (const AddedTokens::Found& token : found) {
            encode_piece(text + pos, token.pos - pos, cache, out);
            out.push_back(token.id);
            pos = token.pos + token.length;
        }
        encode_piece(text + pos, n - pos, cache, out);
    }

    bpe::DocumentBatcher batcher;  // used by bpe::def_encode

  private:
    void encode_piece(const uint8_t* piece, size_t n, WordCache& cache, std::vector<uint32_t>& out) const {
        bpe::pretokenize(pattern_, max_digits_, piece, n,
                         [&](size_t offset, size_t length) { model_.encode_word(piece + offset, length, cache, out); });
    }

    Model model_;
    AddedTokens added_;
    bpe::Pattern pattern_;
    int max_digits_;
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
    py::class_<BpeEncoder> cls(m, "BpeEncoder", R"doc(Byte-level BPE encoder equal to a supported tokenizer.json.

Built by pytrain.tokenizer.fast_bpe, which checks that the tokenizer means exactly what this implements:
byte_ids (the id of each byte's byte-level character), merges ((n, 3) uint32 rows left, right, merged,
in rank order), whole_words ((bytes, id) for ignore_merges), added_tokens ((bytes, id), split out of
the text before pre-tokenization), pattern ("gpt2" or "llama3") and max_digits (llama3's \p{N}{1,D}).)doc");
    cls.def(py::init<const std::vector<uint32_t>&, const py::array_t<uint32_t, py::array::c_style | py::array::forcecast>&,
                      const std::vector<std::pair<py::bytes, uint32_t>>&, bool,
                      const std::vector<std::pair<py::bytes, uint32_t>>&, const std::string&, int>(),
             py::arg("byte_ids"), py::arg("merges"), py::arg("whole_words"), py::arg("ignore_merges"),
             py::arg("added_tokens"), py::arg("pattern"), py::arg("max_digits") = 3);
    bpe::def_encode(cls);
}

}  // namespace pytrain
