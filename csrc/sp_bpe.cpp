// SentencePieceBpe: tokenizer.json's SentencePiece-style BPE pipeline (Llama-2, Mistral, TinyLlama) without Python
// or the GIL. Per document: split out added tokens (bpe_batch.h); in each remaining segment replace ' ' by "▁" and
// prepend "▁" as the normalizer Prepend or the Metaspace pre-tokenizer would; cut the segment into words (before
// every "▁" for Metaspace split=true, else one word); BPE each word over its characters, a character missing from
// the vocabulary falling back to its <0xNN> byte tokens.
//
// A word is often a whole document (no pre-tokenizer), so it is BPE'd in independent pieces: the word is cut
// before a "▁" at p unless some merge result ("straddler") containing "▁" past its first byte matches the text
// with that "▁" at p. tokenizers' merge loop only ever merges two adjacent symbols into a merge result, whose text
// is the text the two cover (fast_sentencepiece.py refuses merges of <0xNN> tokens, whose text is not theirs), so
// no merge can join the symbols left and right of such a cut: each side goes through the same merges, in the same
// order, as within the whole word, and the ids are the same. For the same reason the word is cut around a
// character that falls back to bytes (no merge takes a <0xNN> token). The word cache then serves the repeated pieces.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "bpe.h"
#include "bpe_batch.h"
#include "modules.h"
#include "utf8.h"

namespace pytrain {
namespace {

namespace py = pybind11;
using bpe::AddedTokens;
using bpe::WordCache;

constexpr char kMeta[] = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's space
constexpr size_t kMetaBytes = 3;

bool is_meta(const uint8_t* p, size_t left) { return left >= kMetaBytes && std::memcmp(p, kMeta, kMetaBytes) == 0; }

// When a segment gets a leading "▁": the normalizer Prepend (whenever the segment is not empty), the Metaspace
// pre-tokenizer's prepend_scheme always / first (unless it already starts with one; first: only the segment at
// the start of the document), or never.
enum class Prepend { kNormalizer, kAlways, kFirst, kNever };

Prepend prepend_from(const std::string& name) {
    if (name == "normalizer") return Prepend::kNormalizer;
    if (name == "always") return Prepend::kAlways;
    if (name == "first") return Prepend::kFirst;
    if (name == "never") return Prepend::kNever;
    throw py::value_error("prepend must be 'normalizer', 'always', 'first' or 'never', got '" + name + "'");
}

class SentencePieceBpe {
  public:
    SentencePieceBpe(const std::vector<std::pair<uint32_t, uint32_t>>& char_ids, const std::vector<uint32_t>& byte_ids,
                     const py::array_t<uint32_t, py::array::c_style | py::array::forcecast>& merges,
                     const std::vector<std::pair<py::bytes, uint32_t>>& whole_words, bool ignore_merges,
                     const std::vector<std::pair<py::bytes, uint32_t>>& added_tokens,
                     const std::vector<py::bytes>& straddlers, const std::string& prepend, bool split)
        : byte_ids_(byte_ids), merges_(bpe::merge_table_from(merges)), whole_words_(bpe::bytes_map_from(whole_words)),
          ignore_merges_(ignore_merges), added_(bpe::added_tokens_from(added_tokens)), prepend_(prepend_from(prepend)),
          split_(split) {
        if (byte_ids_.size() != 256) throw py::value_error("byte_ids must hold 256 ids");
        uint32_t top = 0;
        for (const auto& [cp, id] : char_ids) {
            if (cp > 0x10FFFF) throw py::value_error("char_ids holds a code point above U+10FFFF");
            top = std::max(top, cp);
        }
        char_ids_.assign(char_ids.empty() ? 0 : top + 1, -1);
        for (const auto& [cp, id] : char_ids) char_ids_[cp] = id;
        for (uint32_t cp = 0; cp < 0x80; ++cp) ascii_ids_[cp] = cp < char_ids_.size() ? char_ids_[cp] : -1;
        for (const py::bytes& straddler : straddlers) add_straddler(straddler);
    }

    // One document's ids, appended to out (DocumentBatcher calls it from its workers).
    void encode_document(const uint8_t* text, size_t n, WordCache& cache, std::vector<uint32_t>& out) const {
        thread_local std::vector<AddedTokens::Found> found;
        if (!added_.find_all(text, n, found)) return;  // interrupted: the call raises
        size_t pos = 0;
        for (const AddedTokens::Found& token : found) {
            if (token.pos > pos) encode_segment(text + pos, token.pos - pos, pos == 0, cache, out);
            out.push_back(token.id);
            pos = token.pos + token.length;
        }
        if (n > pos) encode_segment(text + pos, n - pos, pos == 0, cache, out);
    }

    bpe::DocumentBatcher batcher;  // used by bpe::def_encode

  private:
    struct Straddler {
        std::string text;
        size_t meta_at;  // byte offset of one of its "▁" (> 0)
    };

    void add_straddler(const std::string& text) {
        for (size_t k = 1; k + kMetaBytes <= text.size(); ++k) {
            if (is_meta(reinterpret_cast<const uint8_t*>(text.data()) + k, text.size() - k)) {
                by_byte_before_[static_cast<uint8_t>(text[k - 1])].push_back(Straddler{text, k});
            }
        }
    }

    // One segment between added tokens (n > 0): the normalized text, then its words.
    void encode_segment(const uint8_t* segment, size_t n, bool at_start, WordCache& cache,
                        std::vector<uint32_t>& out) const {
        thread_local std::string normalized;
        normalized.clear();
        const bool starts_with_space = segment[0] == ' ' || is_meta(segment, n);
        const bool prepend = prepend_ == Prepend::kNormalizer ||
                             (prepend_ == Prepend::kAlways && !starts_with_space) ||
                             (prepend_ == Prepend::kFirst && at_start && !starts_with_space);
        if (prepend) normalized.append(kMeta, kMetaBytes);
        for (size_t i = 0; i < n; ++i) {
            if (segment[i] == ' ') {
                normalized.append(kMeta, kMetaBytes);
            } else {
                normalized.push_back(static_cast<char>(segment[i]));
            }
        }
        const auto* text = reinterpret_cast<const uint8_t*>(normalized.data());
        const size_t size = normalized.size();
        if (!split_) {
            encode_word(text, size, cache, out);
            return;
        }
        size_t start = 0;  // Metaspace split=true: a new word before every "▁"
        for (size_t i = 1; i < size; ++i) {
            if (is_meta(text + i, size - i)) {
                encode_word(text + start, i - start, cache, out);
                start = i;
            }
        }
        encode_word(text + start, size - start, cache, out);
    }

    // tokenizers' BPE::tokenize of one word: with ignore_merges a word in the vocabulary is one token; else the
    // merges, run on the word's independent pieces (see the top of this file). A character outside the vocabulary
    // also ends a piece: it becomes <0xNN> byte tokens, which no merge takes (fast_sentencepiece.py checks), so
    // nothing merges across it either. (Llama-2's and Mistral's newline and tab are such characters.)
    void encode_word(const uint8_t* word, size_t n, WordCache& cache, std::vector<uint32_t>& out) const {
        if (ignore_merges_) {
            const int64_t whole = whole_words_.find(std::string_view(reinterpret_cast<const char*>(word), n));
            if (whole >= 0) {
                out.push_back(static_cast<uint32_t>(whole));
                return;
            }
        }
        size_t start = 0, characters = 0;
        for (size_t i = 0; i < n;) {
            if (Interrupt::poll_current(++characters)) return;  // the call raises; the rest is discarded
            const size_t length = std::min(utf8::lead_length(word[i]), n - i);
            if (char_id(word + i, length) < 0) {
                if (i > start) encode_piece(word + start, i - start, cache, out);
                for (size_t b = 0; b < length; ++b) out.push_back(byte_ids_[word[i + b]]);
                start = i + length;
            } else if (word[i] == static_cast<uint8_t>(kMeta[0]) && i > start && is_meta(word + i, n - i) &&
                       can_cut(word, n, i)) {
                encode_piece(word + start, i - start, cache, out);
                start = i;
            }
            i += length;
        }
        if (n > start) encode_piece(word + start, n - start, cache, out);
    }

    // The id of the one-character token for the character at p (length bytes), or -1.
    int32_t char_id(const uint8_t* p, size_t length) const {
        if (p[0] < 0x80) return ascii_ids_[p[0]];  // most text: a small, always-cached table
        if (length < 2) return -1;                  // a sequence cut short (not in Python's UTF-8): its bytes
        const uint32_t cp = utf8::decode(p, static_cast<int>(length));
        return cp < char_ids_.size() ? char_ids_[cp] : -1;
    }

    // Whether no straddler matches the word with one of its "▁" at byte p (where the word has a "▁").
    bool can_cut(const uint8_t* word, size_t n, size_t p) const {
        for (const Straddler& s : by_byte_before_[word[p - 1]]) {
            if (s.meta_at <= p && p - s.meta_at + s.text.size() <= n &&
                std::memcmp(word + p - s.meta_at, s.text.data(), s.text.size()) == 0) {
                return false;
            }
        }
        return true;
    }

    void encode_piece(const uint8_t* piece, size_t n, WordCache& cache, std::vector<uint32_t>& out) const {
        const bool cacheable = n <= bpe::kMaxCachedWord;
        uint64_t hash = 0;
        if (cacheable) {
            hash = bpe::hash_bytes(piece, n);
            uint32_t count = 0;
            if (const uint32_t* ids = cache.find(piece, n, hash, count)) {
                out.insert(out.end(), ids, ids + count);
                return;
            }
        }
        thread_local std::vector<uint32_t> symbols;
        symbols.clear();
        for (size_t i = 0; i < n;) {  // every character of a piece has an id: encode_word cut out the others
            const size_t length = std::min(utf8::lead_length(piece[i]), n - i);
            symbols.push_back(static_cast<uint32_t>(char_id(piece + i, length)));
            i += length;
        }
        const size_t first = out.size();
        bpe::merge_ids(merges_, symbols.data(), symbols.size(), out);
        if (cacheable) cache.insert(piece, n, hash, out.data() + first, static_cast<uint32_t>(out.size() - first));
    }

    std::vector<int32_t> char_ids_;  // code point -> id of that one-character token, or -1
    int32_t ascii_ids_[0x80];        // the same for U+0000-U+007F
    std::vector<uint32_t> byte_ids_;  // byte -> id of its <0xNN> token
    bpe::MergeTable merges_;
    bpe::BytesMap whole_words_;
    bool ignore_merges_;
    AddedTokens added_;
    Prepend prepend_;
    bool split_;
    std::vector<Straddler> by_byte_before_[256];  // straddlers by the byte just before their "▁"
};

}  // namespace

void bind_sentencepiece_bpe(py::module_& m) {
    py::class_<SentencePieceBpe> cls(m, "SentencePieceBpe", R"doc(SentencePiece-style BPE encoder equal to a supported tokenizer.json.

Built by pytrain.tokenizer.fast_sentencepiece, which checks that the tokenizer means exactly what this
implements: char_ids ((code point, id) of every one-character token), byte_ids (the id of <0xNN> for
each byte), merges ((n, 3) uint32 rows left, right, merged, in rank order), whole_words ((UTF-8 bytes,
id) for ignore_merges), added_tokens ((bytes, id), split out of the text first), straddlers (the text of
every merge result with a "▁" past its first byte), prepend ("normalizer", "always", "first", "never")
and split (Metaspace's split: a word starts at every "▁").)doc");
    cls.def(py::init<const std::vector<std::pair<uint32_t, uint32_t>>&, const std::vector<uint32_t>&,
                      const py::array_t<uint32_t, py::array::c_style | py::array::forcecast>&,
                      const std::vector<std::pair<py::bytes, uint32_t>>&, bool,
                      const std::vector<std::pair<py::bytes, uint32_t>>&, const std::vector<py::bytes>&,
                      const std::string&, bool>(),
             py::arg("char_ids"), py::arg("byte_ids"), py::arg("merges"), py::arg("whole_words"),
             py::arg("ignore_merges"), py::arg("added_tokens"), py::arg("straddlers"), py::arg("prepend"),
             py::arg("split"));
    bpe::def_encode(cls);
}

}  // namespace pytrain
