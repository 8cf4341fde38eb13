// One scanner for both validating and decoding JSON strings. Ordinary bytes are skipped a word at a time and
// copied in bulk; only escapes and (when decoding) non-ASCII bytes stop the fast loop. Well-formed multi-byte
// sequences just extend the current run, so they are copied in bulk too.
#include "json_string.h"

#include "swar.h"
#include "utf8.h"

namespace pytrain::json {
namespace {

// First byte at or after p that is '"', '\\', a control character, or (when decoding) not ASCII; end if none.
template <bool kDecode>
const uint8_t* next_special(const uint8_t* p, const uint8_t* end) {
    constexpr uint64_t kQuotes = swar::broadcast('"'), kBackslashes = swar::broadcast('\\'),
                       kControlBits = swar::broadcast(0xE0);  // a byte < 0x20 has none of these bits
    for (; end - p >= 8; p += 8) {
        const uint64_t v = swar::load(p);
        uint64_t ordinary = swar::nonzero_bytes(v ^ kQuotes) & swar::nonzero_bytes(v ^ kBackslashes) &
                            swar::nonzero_bytes(v & kControlBits);
        if constexpr (kDecode) ordinary &= ~v;
        const uint64_t special = ~ordinary & swar::kHighs;
        if (special) return p + swar::first_marked_byte(special);
    }
    while (p < end && *p != '"' && *p != '\\' && *p >= 0x20 && (!kDecode || *p < 0x80)) ++p;
    return p;
}

int hex_digit(uint8_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    c |= 0x20;  // ASCII lower case
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

// The code unit of the 4 hex digits at p, or -1 when there are not 4 of them.
int32_t hex4(const uint8_t* p, const uint8_t* end) {
    if (end - p < 4) return -1;
    int32_t unit = 0;
    for (int i = 0; i < 4; ++i) {
        const int d = hex_digit(p[i]);
        if (d < 0) return -1;
        unit = unit << 4 | d;
    }
    return unit;
}

// The character a one-letter escape stands for, or 0 when the letter is not a legal escape.
char simple_escape(uint8_t letter) {
    switch (letter) {
        case '"': return '"';
        case '\\': return '\\';
        case '/': return '/';
        case 'b': return '\b';
        case 'f': return '\f';
        case 'n': return '\n';
        case 'r': return '\r';
        case 't': return '\t';
        default: return 0;
    }
}

bool is_high_surrogate(int32_t u) { return u >= 0xD800 && u <= 0xDBFF; }
bool is_low_surrogate(int32_t u) { return u >= 0xDC00 && u <= 0xDFFF; }

// Appends the character of the \u escape at p (whose code unit is `unit`) and returns the position after it;
// a high surrogate directly followed by an escaped low surrogate is consumed with it as one code point.
const uint8_t* append_unicode_escape(const uint8_t* p, const uint8_t* end, int32_t unit, std::string& out) {
    if (is_high_surrogate(unit) && end - p >= 12 && p[6] == '\\' && p[7] == 'u') {
        const int32_t low = hex4(p + 8, end);
        if (is_low_surrogate(low)) {
            utf8::append(out, 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00));
            return p + 12;
        }
    }
    if (is_high_surrogate(unit) || is_low_surrogate(unit)) {
        out.append(utf8::kReplacement, 3);  // unpaired: not a Unicode scalar value, so not encodable in UTF-8
    } else {
        utf8::append(out, static_cast<uint32_t>(unit));
    }
    return p + 6;
}

template <bool kDecode>
StringScan scan(const uint8_t* p, const uint8_t* end, std::string* out) {
    const uint8_t* run = p;  // decoding: start of the bytes not yet appended to *out
    auto flush = [&](const uint8_t* upto) {
        if constexpr (kDecode) out->append(reinterpret_cast<const char*>(run), static_cast<size_t>(upto - run));
    };
    for (;;) {
        p = next_special<kDecode>(p, end);
        if (p == end) return {p, StringError::kUnterminated};
        const uint8_t c = *p;
        if (c == '"') {
            flush(p);
            return {p, StringError::kNone};
        }
        if (c < 0x20) return {p, StringError::kControlCharacter};
        if (c == '\\') {
            if (end - p < 2) return {p, StringError::kUnterminated};
            if (p[1] == 'u') {
                const int32_t unit = hex4(p + 2, end);
                if (unit < 0) return {p, StringError::kInvalidUnicodeEscape};
                flush(p);
                if constexpr (kDecode) {
                    p = append_unicode_escape(p, end, unit, *out);
                } else {
                    p += 6;
                }
            } else {
                const char decoded = simple_escape(p[1]);
                if (decoded == 0) return {p, StringError::kInvalidEscape};
                flush(p);
                if constexpr (kDecode) out->push_back(decoded);
                p += 2;
            }
            run = p;
            continue;
        }
        if constexpr (kDecode) {  // a non-ASCII byte: the validating scan does not stop at those
            const int n = utf8::sequence_length(p, end);
            if (n > 0) {
                p += n;  // well-formed: stays in the run
            } else {
                flush(p);
                out->append(utf8::kReplacement, 3);
                p -= n;
                run = p;
            }
        }
    }
}

}  // namespace

StringScan validate_string(const uint8_t* p, const uint8_t* end) { return scan<false>(p, end, nullptr); }

StringScan decode_string(const uint8_t* p, const uint8_t* end, std::string& out) { return scan<true>(p, end, &out); }

}  // namespace pytrain::json
