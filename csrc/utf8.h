// UTF-8 primitives: sequence validation with the "maximal subpart" rule and encoding (for the JSON string
// decoder), and measuring and widening well-formed text into Python's str storage kinds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "swar.h"

namespace pytrain::utf8 {

inline constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD REPLACEMENT CHARACTER, encoded

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

// What a Python str needs to know before it is allocated: its length in code points and a bound on its largest
// code point that selects the same storage kind CPython itself would choose (127 ASCII, 255 Latin-1, 0xFFFF
// UCS-2, 0x10FFFF UCS-4). [p, end) must be well-formed UTF-8; the lead bytes alone tell the kind: C4 and above
// start code points >= U+0100, F0 and above start code points >= U+10000.
struct Shape {
    size_t length;
    uint32_t max_char;
};

inline Shape measure(const uint8_t* p, const uint8_t* end) {
    size_t continuation = 0;
    uint8_t top = 0;
    const uint8_t* q = p;
    for (; end - q >= 8; q += 8) {
        if ((swar::load(q) & swar::kHighs) == 0) continue;  // ASCII words: the common case in most text
        for (int i = 0; i < 8; ++i) {
            continuation += (q[i] & 0xC0) == 0x80;
            top = q[i] > top ? q[i] : top;
        }
    }
    for (; q < end; ++q) {
        continuation += (*q & 0xC0) == 0x80;
        top = *q > top ? *q : top;
    }
    const uint32_t max_char = top < 0x80 ? 0x7F : top < 0xC4 ? 0xFF : top < 0xF0 ? 0xFFFF : 0x10FFFF;
    return {static_cast<size_t>(end - p) - continuation, max_char};
}

// Decodes well-formed UTF-8 into fixed-width code units (uint8_t for Latin-1, uint16_t for UCS-2, uint32_t for
// UCS-4) wide enough for every code point in it.
template <class Unit>
void widen(const uint8_t* p, const uint8_t* end, Unit* out) {
    while (p < end) {
        while (end - p >= 8 && (swar::load(p) & swar::kHighs) == 0) {  // 8 ASCII bytes at once
            for (int i = 0; i < 8; ++i) out[i] = p[i];
            p += 8;
            out += 8;
        }
        if (p == end) break;
        const uint32_t lead = *p;
        if (lead < 0x80) {
            *out++ = static_cast<Unit>(lead);
            p += 1;
        } else if (lead < 0xE0) {
            *out++ = static_cast<Unit>((lead & 0x1F) << 6 | (p[1] & 0x3F));
            p += 2;
        } else if (lead < 0xF0) {
            *out++ = static_cast<Unit>((lead & 0x0F) << 12 | (p[1] & 0x3F) << 6 | (p[2] & 0x3F));
            p += 3;
        } else {
            *out++ = static_cast<Unit>((lead & 0x07) << 18 | (p[1] & 0x3F) << 12 | (p[2] & 0x3F) << 6 | (p[3] & 0x3F));
            p += 4;
        }
    }
}

}  // namespace pytrain::utf8
