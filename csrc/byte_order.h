// Little-endian loads and stores of fixed-width integers whatever the host byte order: a plain memcpy on
// little-endian hosts, which the compiler turns into (vector) loads and stores. The pack and Megatron formats
// are little-endian on disk.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace pytrain {

template <class T>
T load_le(const uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    using U = std::make_unsigned_t<T>;
    U u = static_cast<U>(v), r = 0;
    for (size_t b = 0; b < sizeof(T); ++b) r |= static_cast<U>(((u >> (8 * b)) & 0xFF) << (8 * (sizeof(T) - 1 - b)));
    v = static_cast<T>(r);
#endif
    return v;
}

template <class T>
void store_le(uint8_t* p, T v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    for (size_t b = 0; b < sizeof(T); ++b) p[b] = static_cast<uint8_t>(static_cast<uint64_t>(v) >> (8 * b));
#else
    std::memcpy(p, &v, sizeof(T));
#endif
}

}  // namespace pytrain
