// JSON strings: validation, and validation fused with decoding to UTF-8.
#pragma once

#include <cstdint>
#include <string>

namespace pytrain::json {

enum class StringError : uint8_t { kNone, kUnterminated, kControlCharacter, kInvalidEscape, kInvalidUnicodeEscape };

// On success `stop` is the closing quote; on failure it is the offending byte (the backslash of a bad escape).
struct StringScan {
    const uint8_t* stop;
    StringError error;
};

// Both take p = the byte after the opening quote. Legal escapes are RFC 8259's; raw bytes below 0x20 are errors.
// Raw bytes >= 0x80 are never errors: ill-formed UTF-8 is repaired by decoding, not rejected.
StringScan validate_string(const uint8_t* p, const uint8_t* end);

// validate_string that also appends the decoded contents to `out` as well-formed UTF-8 (what it appended before
// an error is left for the caller to discard). An escaped surrogate pair becomes one code point, a lone escaped
// surrogate becomes U+FFFD, and ill-formed raw UTF-8 becomes one U+FFFD per maximal invalid subpart (as
// bytes.decode("utf-8", "replace")).
StringScan decode_string(const uint8_t* p, const uint8_t* end, std::string& out);

}  // namespace pytrain::json
