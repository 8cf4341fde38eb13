// JSON string decoding: ASCII runs are copied in bulk, escapes and non-ASCII bytes are handled one at a time.
#include "json_string.h"

#include "swar.h"
#include "utf8.h"

namespace pytrain::json {
namespace {

// First byte in [p, end) that is a backslash or not ASCII, or end.
const uint8_t* skip_plain(const uint8_t* p, const uint8_t* end) {
    while (end - p >= 8) {
        const uint64_t v = swar::load(p);
        if (swar::any_equal(v, '\\') | (v & swar::kHighs)) break;
        p += 8;
    }
    while (p < end && *p != '\\' && *p < 0x80) ++p;
    return p;
}

uint32_t hex4(const uint8_t* p) {
    return static_cast<uint32_t>(hex_digit(p[0]) << 12 | hex_digit(p[1]) << 8 | hex_digit(p[2]) << 4 |
                                 hex_digit(p[3]));
}

bool is_high_surrogate(uint32_t u) { return u >= 0xD800 && u <= 0xDBFF; }
bool is_low_surrogate(uint32_t u) { return u >= 0xDC00 && u <= 0xDFFF; }

// Decodes the escape at p (p[0] == '\\') and returns the position after it.
const uint8_t* decode_escape(const uint8_t* p, const uint8_t* end, std::string& out) {
    switch (p[1]) {
        case 'b': out.push_back('\b'); return p + 2;
        case 'f': out.push_back('\f'); return p + 2;
        case 'n': out.push_back('\n'); return p + 2;
        case 'r': out.push_back('\r'); return p + 2;
        case 't': out.push_back('\t'); return p + 2;
        case 'u': break;
        default: out.push_back(static_cast<char>(p[1])); return p + 2;  // '"', '\\' or '/'
    }
    const uint32_t unit = hex4(p + 2);
    if (is_high_surrogate(unit) && end - p >= 12 && p[6] == '\\' && p[7] == 'u') {
        const uint32_t low = hex4(p + 8);
        if (is_low_surrogate(low)) {
            utf8::append(out, 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00));
            return p + 12;
        }
    }
    if (is_high_surrogate(unit) || is_low_surrogate(unit)) {
        out.append(utf8::kReplacement, 3);  // unpaired: not a scalar value, not encodable as UTF-8
    } else {
        utf8::append(out, unit);
    }
    return p + 6;
}

}  // namespace

void decode_string(const uint8_t* p, const uint8_t* end, std::string& out) {
    while (p < end) {
        const uint8_t* run = skip_plain(p, end);
        out.append(reinterpret_cast<const char*>(p), static_cast<size_t>(run - p));
        p = run;
        if (p == end) break;
        if (*p == '\\') {
            p = decode_escape(p, end, out);
            continue;
        }
        const int n = utf8::sequence_length(p, end);
        if (n > 0) {
            out.append(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
            p += n;
        } else {
            out.append(utf8::kReplacement, 3);
            p -= n;
        }
    }
}

}  // namespace pytrain::json
