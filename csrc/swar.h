// SIMD-within-a-register byte tests on 8-byte words: portable (no intrinsics, no -march), used by the JSON string
// scanner to skip runs of ordinary bytes eight at a time.
#pragma once

#include <cstdint>
#include <cstring>

namespace pytrain::swar {

inline constexpr uint64_t kHighs = 0x8080808080808080ULL;
inline constexpr uint64_t kLows = ~kHighs;

inline uint64_t load(const uint8_t* p) {
    uint64_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline constexpr uint64_t broadcast(uint8_t b) { return 0x0101010101010101ULL * b; }

// Index (in memory order) of the first byte of a loaded word whose 0x80 bit is set in `mask` (mask != 0).
inline int first_marked_byte(uint64_t mask) {
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return __builtin_ctzll(mask) >> 3;
#else
    uint8_t bytes[8];
    std::memcpy(bytes, &mask, sizeof mask);
    int i = 0;
    while (bytes[i] == 0) ++i;
    return i;
#endif
}

}  // namespace pytrain::swar
