// UTF-8 primitives: sequence validation with the "maximal subpart" rule, decoding and encoding of one sequence,
// and the bound on a code point that picks Python's str storage kind.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace pytrain::utf8 {

inline constexpr uint32_t kReplacement = 0xFFFD;  // REPLACEMENT CHARACTER

// Length (1..4) of the well-formed UTF-8 sequence at p (p < end), or minus the length of its maximal invalid
// subpart: the longest prefix of a well-formed sequence, or 1 byte when even the lead byte cannot start one.
// Each maximal subpart decodes to one U+FFFD (Unicode §3.9, "U+FFFD Substitution of Maximal Subparts"), which is
// exactly what Python's bytes.decode("utf-8", "replace") does. Well-formed means Unicode Table 3-7: no overlong
// forms, no encoded surrogates (ED A0..BF), nothing above U+10FFFF.
inline int sequence_length(const uint8_t* p, const uint8_t* end) {
    const uint8_t lead = *p;
    if (lead < 0x80) return 1;
    int trail;
    uint8_t lo = 0x80, hi = 0xBF;  // the range of the first trailing byte; later ones are always 80..BF
    if (lead >= 0xC2 && lead <= 0xDF) {
        trail = 1;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
        trail = 2;
        if (lead == 0xE0) lo = 0xA0;       // overlong below U+0800
        else if (lead == 0xED) hi = 0x9F;  // surrogates U+D800..DFFF
    } else if (lead >= 0xF0 && lead <= 0xF4) {
        trail = 3;
        if (lead == 0xF0) lo = 0x90;       // overlong below U+10000
        else if (lead == 0xF4) hi = 0x8F;  // above U+10FFFF
    } else {
        return -1;  // 80..BF stray continuation, C0/C1 always overlong, F5..FF never used
    }
    for (int i = 1; i <= trail; ++i) {
        if (p + i == end || p[i] < lo || p[i] > hi) return -i;
        lo = 0x80;
        hi = 0xBF;
    }
    return trail + 1;
}

// Length (1..4) of the sequence led by `lead` in text known to be well-formed (Python's own UTF-8).
inline size_t lead_length(uint8_t lead) { return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4; }

// The code point of the well-formed n-byte sequence at p (n from sequence_length, 2..4).
inline uint32_t decode(const uint8_t* p, int n) {
    if (n == 2) return (p[0] & 0x1Fu) << 6 | (p[1] & 0x3Fu);
    if (n == 3) return (p[0] & 0x0Fu) << 12 | (p[1] & 0x3Fu) << 6 | (p[2] & 0x3Fu);
    return (p[0] & 0x07u) << 18 | (p[1] & 0x3Fu) << 12 | (p[2] & 0x3Fu) << 6 | (p[3] & 0x3Fu);
}

// Appends the UTF-8 encoding of a Unicode scalar value (not a surrogate, at most U+10FFFF).
inline void append(std::string& out, uint32_t cp) {
    char b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = static_cast<char>(cp);
        n = 1;
    } else if (cp < 0x800) {
        b[0] = static_cast<char>(0xC0 | (cp >> 6));
        b[1] = static_cast<char>(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = static_cast<char>(0xE0 | (cp >> 12));
        b[1] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        b[2] = static_cast<char>(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        b[0] = static_cast<char>(0xF0 | (cp >> 18));
        b[1] = static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        b[2] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        b[3] = static_cast<char>(0x80 | (cp & 0x3F));
        n = 4;
    }
    out.append(b, n);
}

// The largest code point of cp's Python storage kind: 127 (ASCII), 255 (Latin-1), 0xFFFF (UCS-2), 0x10FFFF (UCS-4).
// PyUnicode_New(length, bound) then allocates exactly the kind CPython would choose for the text.
inline uint32_t kind_bound(uint32_t cp) {
    return cp < 0x80 ? 0x7F : cp < 0x100 ? 0xFF : cp < 0x10000 ? 0xFFFF : 0x10FFFF;
}

}  // namespace pytrain::utf8
