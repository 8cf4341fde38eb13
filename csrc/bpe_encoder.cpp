// BpeEncoder: tokenizer.json's byte-level BPE pipeline without Python or the GIL. Per document: split out added
// tokens (bpe_batch.h), pre-tokenize each remaining piece with the regex (bpe_pretokenize.h), BPE each pre-token
// (bpe.h) through the worker's word cache; bpe_batch.h spreads the documents over workers.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <utility>
#include <vector>

#include "bpe.h"
#include "bpe_batch.h"
#include "bpe_pretokenize.h"
#include "modules.h"

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
        size_t pos = 0;
        while (pos < n) {
            const AddedTokens::Found found = added_.next(text, n, pos);
            encode_piece(text + pos, found.pos - pos, cache, out);
            if (found.pos == n) break;
            out.push_back(found.id);
            pos = found.pos + found.length;
        }
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
    m.attr("bpe_tables_tokenizers_version") = bpe::kProbedTokenizersVersion;
    py::class_<BpeEncoder> cls(m, "BpeEncoder", R"doc(Byte-level BPE encoder equal to a supported tokenizer.json.

Built by pytrain.data.fast_bpe, which checks that the tokenizer means exactly what this implements:
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
