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
#include "interrupt.h"
#include "parallel.h"

namespace pytrain::bpe {

namespace py = pybind11;

// Literal tokens split out of a text leftmost-longest, as tokenizers' AddedVocabulary does (aho-corasick's
// LeftmostLongest): from the start, the first position where any token starts, the longest token there, then on
// after it. In time linear in the text, however many tokens there are and however they overlap (100k
// "<|tok_N|>" tokens, or "aaa...ab" over a run of a's): one Aho-Corasick pass over the text from its end, with the
// tokens reversed, finds at each position the longest token starting there (the longest reversed token that is a
// suffix of the reversed text read so far: the automaton state's output); a forward pass then takes them greedily.
// Building costs the tokens' total length (a trie of the reversed tokens, failure links by depth).
class AddedTokens {
  public:
    struct Found {
        size_t pos, length;
        uint32_t id;
    };

    AddedTokens() : nodes_(1) { std::fill(std::begin(root_child_), std::end(root_child_), 0u); }
    explicit AddedTokens(const std::vector<std::pair<std::string, uint32_t>>& tokens) : AddedTokens() {
        Interrupt interrupt;  // called with the GIL held, from Python
        for (const auto& [content, id] : tokens) {
            if (content.empty()) throw py::value_error("an added token is empty");
            uint32_t node = 0;
            for (auto c = content.rbegin(); c != content.rend(); ++c) node = child_or_new(node, static_cast<uint8_t>(*c));
            nodes_[node].id = static_cast<int64_t>(id);  // a content given twice keeps the last id (bpe_support.py refuses that)
            interrupt.check();
        }
        link();
    }

    // Every token in text[0, n), leftmost-longest and not overlapping, in order, into `found`; false when the
    // call was interrupted midway (it raises; `found` is incomplete).
    bool find_all(const uint8_t* text, size_t n, std::vector<Found>& found) const {
        found.clear();
        if (nodes_.size() == 1) return true;
        thread_local std::vector<Found> longest;  // the longest token starting at each position that has one, from the end
        longest.clear();
        uint32_t state = 0;
        for (size_t i = n; i-- > 0;) {
            if (Interrupt::poll_current(n - i)) return false;
            state = step(state, text[i]);
            if (nodes_[state].out_length) longest.push_back(Found{i, nodes_[state].out_length, nodes_[state].out_id});
        }
        size_t next = 0;
        for (auto f = longest.rbegin(); f != longest.rend(); ++f) {
            if (f->pos >= next) {
                found.push_back(*f);
                next = f->pos + f->length;
            }
        }
        return true;
    }

  private:
    struct Node {
        int64_t id = -1;           // the token whose reversal ends here, or -1
        uint32_t parent = 0, depth = 0, fail = 0;
        uint8_t byte = 0;          // the edge from the parent
        uint32_t out_length = 0;   // the longest token whose reversal is a suffix of this node's string (0: none)
        uint32_t out_id = 0;       // and its id
    };
    static uint64_t edge(uint32_t node, uint8_t byte) { return uint64_t{node} << 8 | byte; }

    int64_t child(uint32_t node, uint8_t byte) const {
        if (node == 0) return root_child_[byte] ? static_cast<int64_t>(root_child_[byte]) : -1;
        const auto found = children_.find(edge(node, byte));
        return found == children_.end() ? -1 : static_cast<int64_t>(found->second);
    }

    uint32_t child_or_new(uint32_t node, uint8_t byte) {
        if (const int64_t existing = child(node, byte); existing >= 0) return static_cast<uint32_t>(existing);
        const auto created = static_cast<uint32_t>(nodes_.size());
        Node n;
        n.parent = node;
        n.depth = nodes_[node].depth + 1;
        n.byte = byte;
        nodes_.push_back(n);
        if (node == 0) {
            root_child_[byte] = created;
        } else {
            children_.emplace(edge(node, byte), created);
        }
        return created;
    }

    // The automaton's transition: the longest string (state's string + byte)'s suffix that is a trie node.
    uint32_t step(uint32_t state, uint8_t byte) const {
        for (;;) {
            if (const int64_t next = child(state, byte); next >= 0) return static_cast<uint32_t>(next);
            if (state == 0) return 0;
            state = nodes_[state].fail;
        }
    }

    // Failure links and outputs, parents before children (by depth): a node's failure is a shorter string's node.
    void link() {
        std::vector<uint32_t> order(nodes_.size());
        for (uint32_t v = 0; v < order.size(); ++v) order[v] = v;
        std::stable_sort(order.begin(), order.end(),
                         [this](uint32_t a, uint32_t b) { return nodes_[a].depth < nodes_[b].depth; });
        for (const uint32_t v : order) {
            Node& node = nodes_[v];
            if (v == 0) continue;
            node.fail = node.parent == 0 ? 0 : step(nodes_[node.parent].fail, node.byte);
            if (node.id >= 0) {
                node.out_length = node.depth;
                node.out_id = static_cast<uint32_t>(node.id);
            } else {
                node.out_length = nodes_[node.fail].out_length;
                node.out_id = nodes_[node.fail].out_id;
            }
        }
    }

    std::vector<Node> nodes_;                          // nodes_[0] is the root
    uint32_t root_child_[256];                         // the root's children (0: none), the hot transitions
    std::unordered_map<uint64_t, uint32_t> children_;  // (node, byte) -> child, below the root
};

inline MergeTable merge_table_from(const py::array_t<uint32_t, py::array::c_style | py::array::forcecast>& merges) {
    if (merges.ndim() != 2 || merges.shape(1) != 3) throw py::value_error("merges must be an (n, 3) array");
    MergeTable table;
    const size_t n = static_cast<size_t>(merges.shape(0));
    table.reserve(n);
    const uint32_t* row = merges.data();
    Interrupt interrupt;
    for (size_t rank = 0; rank < n; ++rank, row += 3) {
        table.insert(row[0], row[1], {static_cast<uint32_t>(rank), row[2]});
        if ((rank & 0xFFFF) == 0) interrupt.check();
    }
    return table;
}

inline BytesMap bytes_map_from(const std::vector<std::pair<py::bytes, uint32_t>>& words) {
    BytesMap map;
    Interrupt interrupt;
    for (const auto& [word, id] : words) {
        map.insert(std::string(word), id);
        interrupt.check();
    }
    return map;
}

inline AddedTokens added_tokens_from(const std::vector<std::pair<py::bytes, uint32_t>>& tokens) {
    std::vector<std::pair<std::string, uint32_t>> contents;
    contents.reserve(tokens.size());
    for (const auto& [content, id] : tokens) contents.emplace_back(std::string(content), id);
    return AddedTokens(contents);
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
        Interrupt interrupt;
        {
            py::gil_scoped_release nogil;  // before locking: a thread waiting on the lock must not hold the GIL
            std::lock_guard<std::mutex> lock(mutex_);  // the word caches belong to one call at a time
            if (caches_.size() < static_cast<size_t>(workers)) caches_.resize(workers);
            run_parallel(workers, interrupt, [&](int w) {
                std::vector<uint32_t>& out = ids[w];
                out.reserve((std::min(total_bytes, size_t{1} << 30) / workers) / 3);
                for (size_t d = bounds[w]; d < bounds[w + 1] && !interrupt.poll(); ++d) {
                    const size_t before = out.size();
                    encoder.encode_document(docs[d].first, docs[d].second, caches_[w], out);
                    raw_lengths[d] = static_cast<int64_t>(out.size() - before);
                }
            });
        }
        interrupt.raise_if_stopped();
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
