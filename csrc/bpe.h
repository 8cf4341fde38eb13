// Byte-level BPE exactly as the `tokenizers` BPE model applies it: pair-rank merges driven by a min-heap of
// (rank, position), with its expiry rule, so every tie resolves the same way; optional ignore_merges (a word that
// is itself in the vocabulary is one token). pytrain/tokenizer/fast_bpe.py decides which tokenizer.json files mean
// exactly this and builds the tables.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace pytrain::bpe {

// Open-addressing map from a (left id, right id) pair to its merge (rank, id of the merged token). Read-only
// after construction, so threads share it.
class MergeTable {
  public:
    struct Merge {
        uint32_t rank, id;
    };
    void reserve(size_t count);
    // Later inserts of the same pair replace earlier ones (as the Rust HashMap built from the merge list does).
    void insert(uint32_t left, uint32_t right, Merge merge);
    const Merge* find(uint32_t left, uint32_t right) const {
        const uint64_t key = pack(left, right);
        for (size_t i = slot(key);; i = (i + 1) & mask_) {
            const Entry& e = entries_[i];
            if (e.key == key) return &e.merge;
            if (e.key == kEmpty) return nullptr;
        }
    }

  private:
    static constexpr uint64_t kEmpty = ~uint64_t{0};
    struct Entry {
        uint64_t key = kEmpty;
        Merge merge{};
    };
    static uint64_t pack(uint32_t left, uint32_t right) { return uint64_t{left} << 32 | right; }
    size_t slot(uint64_t key) const { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 20) & mask_; }
    std::vector<Entry> entries_;
    size_t mask_ = 0, size_ = 0;
};

// Byte string -> token id, for ignore_merges' whole-word lookup. Read-only after construction.
class BytesMap {
  public:
    void insert(std::string_view key, uint32_t id);
    // The id of `key`, or -1.
    int64_t find(std::string_view key) const;
    bool empty() const { return size_ == 0; }

  private:
    struct Entry {
        uint64_t hash = 0;
        uint32_t offset = 0, length = 0, id = 0;
        bool used = false;
    };
    void grow();
    std::string arena_;
    std::vector<Entry> entries_;
    size_t mask_ = 0, size_ = 0;
};

uint64_t hash_bytes(const uint8_t* p, size_t n);

inline constexpr size_t kMaxCachedWord = 256;  // bytes; longer words are rare and would crowd a WordCache

// A word -> token ids memo owned by one thread. Bounded: when full it starts over.
class WordCache {
  public:
    // Ids of `word`, or nullptr (count set) when absent.
    const uint32_t* find(const uint8_t* word, size_t n, uint64_t hash, uint32_t& count) const;
    void insert(const uint8_t* word, size_t n, uint64_t hash, const uint32_t* ids, uint32_t count);

  private:
    static constexpr size_t kMaxEntries = 1 << 17;
    struct Entry {
        uint64_t hash = 0;
        uint32_t key_offset = 0, key_length = 0, ids_offset = 0, ids_count = 0;
        bool used = false;
    };
    void clear();
    std::vector<Entry> entries_;
    std::string keys_;
    std::vector<uint32_t> ids_;
    size_t size_ = 0;
};

// tokenizers' BPE merge loop over a word's initial symbols `ids` (n >= 1 of them); appends the merged ids to out.
void merge_ids(const MergeTable& merges, const uint32_t* ids, size_t n, std::vector<uint32_t>& out);

class Model {
  public:
    Model(std::vector<uint32_t> byte_ids, MergeTable merges, BytesMap whole_words, bool ignore_merges)
        : byte_ids_(std::move(byte_ids)), merges_(std::move(merges)), whole_words_(std::move(whole_words)),
          ignore_merges_(ignore_merges) {}
    // Appends the ids of one pre-token (its raw bytes) to out, consulting and filling `cache`.
    void encode_word(const uint8_t* word, size_t n, WordCache& cache, std::vector<uint32_t>& out) const;

  private:
    void merge(const uint8_t* word, size_t n, std::vector<uint32_t>& out) const;
    std::vector<uint32_t> byte_ids_;  // 256 entries: the id of each byte's byte-level character
    MergeTable merges_;
    BytesMap whole_words_;
    bool ignore_merges_;
};

}  // namespace pytrain::bpe
