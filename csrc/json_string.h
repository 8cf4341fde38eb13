// JSON strings: validation, and validation fused with decoding (to UTF-8 bytes, to a Python str's shape, or into
// the fixed-width code units of a Python str).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace pytrain::json {

enum class StringError : uint8_t { kNone, kUnterminated, kControlCharacter, kInvalidEscape, kInvalidUnicodeEscape };

// On success `stop` is the closing quote; on failure it is the offending byte (the backslash of a bad escape).
struct StringScan {
    const uint8_t* stop;
    StringError error;
};

// What a Python str of the decoded text needs before it is allocated: its length in code points and
// utf8::kind_bound of its largest code point.
struct Shape {
    size_t length = 0;
    uint32_t max_char = 0x7F;
};

// All take p = the byte after the opening quote. Legal escapes are RFC 8259's; raw bytes below 0x20 are errors;
// raw bytes >= 0x80 are never errors. Decoding rules (like Python's json, except that the result is always valid
// Unicode): an escaped surrogate pair becomes one code point, a lone escaped surrogate becomes U+FFFD, and
// ill-formed raw UTF-8 becomes one U+FFFD per maximal invalid subpart (as bytes.decode("utf-8", "replace")).
StringScan validate_string(const uint8_t* p, const uint8_t* end);
StringScan decode_string(const uint8_t* p, const uint8_t* end, std::string& out);  // appends UTF-8 to out
StringScan measure_string(const uint8_t* p, const uint8_t* end, Shape& shape);

// Decodes a string that measure_string accepted into `out`, whose code units (uint8_t Latin-1, uint16_t UCS-2 or
// uint32_t UCS-4) are wide enough for the shape it measured. [p, end) is the contents and the closing quote.
template <class Unit>
void widen_string(const uint8_t* p, const uint8_t* end, Unit* out);

}  // namespace pytrain::json
