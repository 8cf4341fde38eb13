// SIMD-within-a-register byte tests on 8-byte words: portable (no intrinsics, no -march), used by the JSON
// scanners to skip runs of ordinary string bytes eight at a time.
#pragma once

#include <cstdint>
#include <cstring>

namespace pytrain::swar {

inline constexpr uint64_t kOnes = 0x0101010101010101ULL;
inline constexpr uint64_t kHighs = 0x8080808080808080ULL;

inline uint64_t load(const uint8_t* p) {
    uint64_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline constexpr uint64_t broadcast(uint8_t b) { return kOnes * b; }

// Nonzero iff some byte of v is below n (n <= 128). Only "whether", not "which": the flag bits above the
// first hit may be wrong because of borrows, so callers find the exact byte with a short byte loop.
inline uint64_t any_less(uint64_t v, uint8_t n) { return (v - broadcast(n)) & ~v & kHighs; }

// Nonzero iff some byte of v equals b (same caveat).
inline uint64_t any_equal(uint64_t v, uint8_t b) { return any_less(v ^ broadcast(b), 1); }

}  // namespace pytrain::swar
