// Byte-level BPE merges (see bpe.h).
#include "bpe.h"

#include "interrupt.h"

#include <cstring>
#include <algorithm>

namespace pytrain::bpe {

uint64_t hash_bytes(const uint8_t* p, size_t n) {
    uint64_t h = 0xCBF29CE484222325ull ^ n;  // FNV-1a over 8-byte words, then a final mix
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        std::memcpy(&w, p + i, 8);
        h = (h ^ w) * 0x100000001B3ull;
        h ^= h >> 29;
    }
    for (; i < n; ++i) h = (h ^ p[i]) * 0x100000001B3ull;
    h ^= h >> 32;
    h *= 0xD6E8FEB86659FD93ull;
    return h ^ (h >> 32);
}

void MergeTable::reserve(size_t count) {
    size_t capacity = 16;
    while (capacity < 2 * count) capacity <<= 1;
    entries_.assign(capacity, Entry{});
    mask_ = capacity - 1;
    size_ = 0;
}

void MergeTable::insert(uint32_t left, uint32_t right, Merge merge) {
    if (2 * (size_ + 1) > entries_.size()) {
        std::vector<Entry> old = std::move(entries_);
        reserve(size_ + 1 > old.size() ? size_ + 1 : old.size());
        for (const Entry& e : old) {
            if (e.key != kEmpty) insert(static_cast<uint32_t>(e.key >> 32), static_cast<uint32_t>(e.key), e.merge);
        }
    }
    const uint64_t key = pack(left, right);
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
        Entry& e = entries_[i];
        if (e.key == key) {
            e.merge = merge;
            return;
        }
        if (e.key == kEmpty) {
            e.key = key;
            e.merge = merge;
            ++size_;
            return;
        }
    }
}

void BytesMap::grow() {
    std::vector<Entry> old = std::move(entries_);
    const size_t capacity = old.empty() ? 1024 : 2 * old.size();
    entries_.assign(capacity, Entry{});
    mask_ = capacity - 1;
    for (const Entry& e : old) {
        if (!e.used) continue;
        size_t i = e.hash & mask_;
        while (entries_[i].used) i = (i + 1) & mask_;
        entries_[i] = e;
    }
}

void BytesMap::insert(std::string_view key, uint32_t id) {
    if (2 * (size_ + 1) > entries_.size()) grow();
    const uint64_t h = hash_bytes(reinterpret_cast<const uint8_t*>(key.data()), key.size());
    size_t i = h & mask_;
    for (;; i = (i + 1) & mask_) {
        Entry& e = entries_[i];
        if (!e.used) break;
        if (e.hash == h && std::string_view(arena_).substr(e.offset, e.length) == key) {
            e.id = id;
            return;
        }
    }
    entries_[i] = Entry{h, static_cast<uint32_t>(arena_.size()), static_cast<uint32_t>(key.size()), id, true};
    arena_.append(key);
    ++size_;
}

int64_t BytesMap::find(std::string_view key) const {
    if (size_ == 0) return -1;
    const uint64_t h = hash_bytes(reinterpret_cast<const uint8_t*>(key.data()), key.size());
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
        const Entry& e = entries_[i];
        if (!e.used) return -1;
        if (e.hash == h && std::string_view(arena_).substr(e.offset, e.length) == key) return e.id;
    }
}

void WordCache::clear() {
    entries_.assign(2 * kMaxEntries, Entry{});
    keys_.clear();
    ids_.clear();
    size_ = 0;
}

const uint32_t* WordCache::find(const uint8_t* word, size_t n, uint64_t hash, uint32_t& count) const {
    if (entries_.empty()) return nullptr;
    const size_t mask = entries_.size() - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        const Entry& e = entries_[i];
        if (!e.used) return nullptr;
        if (e.hash == hash && e.key_length == n && std::memcmp(keys_.data() + e.key_offset, word, n) == 0) {
            count = e.ids_count;
            return ids_.data() + e.ids_offset;
        }
    }
}

void WordCache::insert(const uint8_t* word, size_t n, uint64_t hash, const uint32_t* ids, uint32_t count) {
    if (entries_.empty() || size_ >= kMaxEntries) clear();
    const size_t mask = entries_.size() - 1;
    size_t i = hash & mask;
    while (entries_[i].used) i = (i + 1) & mask;
    entries_[i] = Entry{hash, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(n),
                        static_cast<uint32_t>(ids_.size()), count, true};
    keys_.append(reinterpret_cast<const char*>(word), n);
    ids_.insert(ids_.end(), ids, ids + count);
    ++size_;
}

namespace {

struct Symbol {
    uint32_t id;
    int32_t prev, next;
    bool removed;
};

// A queued merge; the heap pops the lowest rank, then the leftmost position (the Rust BinaryHeap's order).
struct Candidate {
    uint32_t rank, id;
    int32_t pos;
};
struct LaterCandidate {
    bool operator()(const Candidate& a, const Candidate& b) const {
        return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
    }
};

}  // namespace

// tokenizers' Word::merge_all, step for step: every adjacent pair with a merge is queued; a popped entry is skipped
// when its left symbol is gone, has no right neighbour, or the pair there no longer merges into the same id.
void merge_ids(const MergeTable& merges, const uint32_t* ids, size_t n, std::vector<uint32_t>& out) {
    thread_local std::vector<Symbol> symbols;
    thread_local std::vector<Candidate> queue;  // a heap under LaterCandidate: front() is the next merge
    symbols.resize(n);
    for (size_t i = 0; i < n; ++i) {
        symbols[i] = Symbol{ids[i], static_cast<int32_t>(i) - 1, i + 1 < n ? static_cast<int32_t>(i + 1) : -1, false};
    }
    queue.clear();
    const auto push = [](const Candidate& c) {
        queue.push_back(c);
        std::push_heap(queue.begin(), queue.end(), LaterCandidate{});
    };
    for (size_t i = 0; i + 1 < n; ++i) {
        if (const MergeTable::Merge* m = merges.find(symbols[i].id, symbols[i + 1].id)) {
            queue.push_back(Candidate{m->rank, m->id, static_cast<int32_t>(i)});
        }
    }
    std::make_heap(queue.begin(), queue.end(), LaterCandidate{});
    for (size_t iteration = 1; !queue.empty(); ++iteration) {
        if (Interrupt::poll_current(iteration)) break;  // the call raises; what is left here is discarded
        std::pop_heap(queue.begin(), queue.end(), LaterCandidate{});
        const Candidate top = queue.back();
        queue.pop_back();
        Symbol& left = symbols[top.pos];
        if (left.removed || left.next < 0) continue;
        const int32_t right_pos = left.next;
        const Symbol right = symbols[right_pos];
        const MergeTable::Merge* now = merges.find(left.id, right.id);
        if (now == nullptr || now->id != top.id) continue;
        left.id = top.id;
        left.next = right.next;
        symbols[right_pos].removed = true;
        if (right.next >= 0) symbols[right.next].prev = top.pos;
        if (left.prev >= 0) {
            if (const MergeTable::Merge* m = merges.find(symbols[left.prev].id, left.id)) {
                push(Candidate{m->rank, m->id, left.prev});
            }
        }
        if (left.next >= 0) {
            if (const MergeTable::Merge* m = merges.find(left.id, symbols[left.next].id)) {
                push(Candidate{m->rank, m->id, top.pos});
            }
        }
    }
    for (int32_t i = 0; i >= 0; i = symbols[i].next) out.push_back(symbols[i].id);
}

void Model::merge(const uint8_t* word, size_t n, std::vector<uint32_t>& out) const {
    thread_local std::vector<uint32_t> ids;
    ids.resize(n);
    for (size_t i = 0; i < n; ++i) ids[i] = byte_ids_[word[i]];
    merge_ids(merges_, ids.data(), n, out);
}

void Model::encode_word(const uint8_t* word, size_t n, WordCache& cache, std::vector<uint32_t>& out) const {
    if (n == 1) {
        out.push_back(byte_ids_[word[0]]);
        return;
    }
    const bool cacheable = n <= kMaxCachedWord;
    uint64_t hash = 0;
    if (cacheable) {
        hash = hash_bytes(word, n);
        uint32_t count = 0;
        if (const uint32_t* ids = cache.find(word, n, hash, count)) {
            out.insert(out.end(), ids, ids + count);
            return;
        }
    }
    const size_t first = out.size();
    const int64_t whole = ignore_merges_ ? whole_words_.find(std::string_view(reinterpret_cast<const char*>(word), n))
                                         : -1;
    if (whole >= 0) {
        out.push_back(static_cast<uint32_t>(whole));
    } else {
        merge(word, n, out);
    }
    if (cacheable) cache.insert(word, n, hash, out.data() + first, static_cast<uint32_t>(out.size() - first));
}

}  // namespace pytrain::bpe
