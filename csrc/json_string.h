// Decoding of JSON string contents to UTF-8.
#pragma once

#include <cstdint>
#include <string>

namespace pytrain::json {

// Value of a hexadecimal digit, or -1.
inline int hex_digit(uint8_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    c |= 0x20;  // ASCII lower case
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

// Appends the decoded contents of a JSON string to `out` as well-formed UTF-8. [p, end) is the text between the
// quotes, already validated by the parser (every escape complete and legal, no raw control characters).
// Escapes decode as in RFC 8259; an escaped surrogate pair becomes one code point, and a lone escaped surrogate
// becomes U+FFFD. Raw bytes that are not well-formed UTF-8 become one U+FFFD per maximal invalid subpart.
void decode_string(const uint8_t* p, const uint8_t* end, std::string& out);

}  // namespace pytrain::json
