// One scanner for every way of reading a JSON string. It validates, and hands the decoded text to a Sink in
// pieces: runs of ASCII bytes, well-formed multi-byte UTF-8 sequences, and single code points (escapes and
// replacements). Ordinary bytes are skipped 16 or 8 at a time.
#include "json_string.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "swar.h"
#include "utf8.h"

namespace pytrain::json {
namespace {

// Marks (0x80) the bytes of v that end a run of ordinary string bytes: '"', '\\', control characters below 0x20,
// and, when decoding, bytes >= 0x80. Exact per byte: every addition is on 7-bit values, so nothing carries.
template <bool kDecodes>
uint64_t special_bytes(uint64_t v) {
    const uint64_t low7 = v & swar::kLows;
    // bit 7 set where the low 7 bits are >= 0x20, differ from '"', differ from '\\'
    const uint64_t ordinary = (low7 + swar::broadcast(0x60)) & ((low7 ^ swar::broadcast('"')) + swar::kLows) &
                              ((low7 ^ swar::broadcast('\\')) + swar::kLows);
    if constexpr (kDecodes) return ~(ordinary & ~v) & swar::kHighs;  // and the byte is ASCII
    // Validating: a byte >= 0x80 is ordinary whatever its low 7 bits.
    return ~(ordinary | v) & swar::kHighs;
}

// First byte at or after p that is '"', '\\', a control character, or (when decoding) not ASCII; end if none.
// This loop is most of the extractor's time, so x86-64 (GCC/Clang) takes 16 bytes a step with SSE2, which every
// x86-64 CPU has; the word-at-a-time loop finishes the tail there and does all the work elsewhere.
template <bool kDecodes>
const uint8_t* next_special(const uint8_t* p, const uint8_t* end) {
#if defined(__SSE2__) && defined(__GNUC__)
    const __m128i quotes = _mm_set1_epi8('"'), backslashes = _mm_set1_epi8('\\');
    for (; end - p >= 16; p += 16) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        const __m128i low = kDecodes ? _mm_cmplt_epi8(v, _mm_set1_epi8(0x20))  // signed: < 0x20 or >= 0x80
                                     : _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1F)), v);  // < 0x20
        const __m128i marks = _mm_or_si128(_mm_cmpeq_epi8(v, quotes), _mm_cmpeq_epi8(v, backslashes));
        const int mask = _mm_movemask_epi8(_mm_or_si128(marks, low));
        if (mask) return p + __builtin_ctz(static_cast<unsigned>(mask));
    }
#endif
    for (; end - p >= 8; p += 8) {
        const uint64_t special = special_bytes<kDecodes>(swar::load(p));
        if (special) return p + swar::first_marked_byte(special);
    }
    while (p < end && *p != '"' && *p != '\\' && *p >= 0x20 && (!kDecodes || *p < 0x80)) ++p;
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

// ---------------------------------------------------------------------------------------------------- sinks
struct NullSink {  // validation only: non-ASCII bytes need no attention
    static constexpr bool kDecodes = false;
    void ascii(const uint8_t*, const uint8_t*) {}
    void code_point(uint32_t) {}
};

struct Utf8Sink {
    static constexpr bool kDecodes = true;
    std::string& out;
    void ascii(const uint8_t* p, const uint8_t* q) { out.append(reinterpret_cast<const char*>(p), q - p); }
    void sequence(const uint8_t* p, int n) { out.append(reinterpret_cast<const char*>(p), n); }
    void code_point(uint32_t cp) { utf8::append(out, cp); }
};

struct ShapeSink {
    static constexpr bool kDecodes = true;
    Shape& shape;
    void ascii(const uint8_t* p, const uint8_t* q) { shape.length += static_cast<size_t>(q - p); }
    void sequence(const uint8_t* p, int n) {
        ++shape.length;
        // From the lead byte alone: C4 and above start U+0100+, E0 and above U+0800+, F0 and above U+10000+.
        const uint32_t bound = n == 4 ? 0x10FFFF : (n == 3 || p[0] >= 0xC4) ? 0xFFFF : 0xFF;
        if (bound > shape.max_char) shape.max_char = bound;
    }
    void code_point(uint32_t cp) {
        ++shape.length;
        const uint32_t bound = utf8::kind_bound(cp);
        if (bound > shape.max_char) shape.max_char = bound;
    }
};

template <class Unit>
struct UnitSink {
    static constexpr bool kDecodes = true;
    Unit* out;
    void ascii(const uint8_t* p, const uint8_t* q) {
        for (; p < q; ++p) *out++ = *p;  // a widening copy the compiler vectorises
    }
    void sequence(const uint8_t* p, int n) { *out++ = static_cast<Unit>(utf8::decode(p, n)); }
    void code_point(uint32_t cp) { *out++ = static_cast<Unit>(cp); }
};

// ---------------------------------------------------------------------------------------------------- scanner
// Emits the character of the \u escape at p (code unit `unit`) and returns the position after it; a high
// surrogate directly followed by an escaped low surrogate is consumed with it as one code point.
template <class Sink>
const uint8_t* unicode_escape(const uint8_t* p, const uint8_t* end, int32_t unit, Sink& sink) {
    if (is_high_surrogate(unit) && end - p >= 12 && p[6] == '\\' && p[7] == 'u') {
        const int32_t low = hex4(p + 8, end);
        if (is_low_surrogate(low)) {
            sink.code_point(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00));
            return p + 12;
        }
    }
    // A lone surrogate is not a Unicode scalar value: it cannot be encoded as UTF-8.
    const bool lone = is_high_surrogate(unit) || is_low_surrogate(unit);
    sink.code_point(lone ? utf8::kReplacement : static_cast<uint32_t>(unit));
    return p + 6;
}

template <class Sink>
StringScan scan(const uint8_t* p, const uint8_t* end, Sink& sink) {
    const uint8_t* run = p;  // start of the ASCII bytes not yet handed to the sink
    for (;;) {
        p = next_special<Sink::kDecodes>(p, end);
        if (p == end) return {p, StringError::kUnterminated};
        const uint8_t c = *p;
        if (c == '"') {
            sink.ascii(run, p);
            return {p, StringError::kNone};
        }
        if (c < 0x20) return {p, StringError::kControlCharacter};
        if (c == '\\') {
            if (end - p < 2) return {p, StringError::kUnterminated};
            if (p[1] == 'u') {
                const int32_t unit = hex4(p + 2, end);
                if (unit < 0) return {p, StringError::kInvalidUnicodeEscape};
                sink.ascii(run, p);
                p = unicode_escape(p, end, unit, sink);
            } else {
                const char decoded = simple_escape(p[1]);
                if (decoded == 0) return {p, StringError::kInvalidEscape};
                sink.ascii(run, p);
                sink.code_point(static_cast<uint8_t>(decoded));
                p += 2;
            }
            run = p;
            continue;
        }
        if constexpr (Sink::kDecodes) {  // a non-ASCII byte: the validating scan does not stop at those
            sink.ascii(run, p);
            const int n = utf8::sequence_length(p, end);
            if (n > 0) {
                sink.sequence(p, n);
                p += n;
            } else {
                sink.code_point(utf8::kReplacement);
                p -= n;
            }
            run = p;
        }
    }
}

}  // namespace

StringScan validate_string(const uint8_t* p, const uint8_t* end) {
    NullSink sink;
    return scan(p, end, sink);
}

StringScan decode_string(const uint8_t* p, const uint8_t* end, std::string& out) {
    Utf8Sink sink{out};
    return scan(p, end, sink);
}

StringScan measure_string(const uint8_t* p, const uint8_t* end, Shape& shape) {
    shape = Shape{};
    ShapeSink sink{shape};
    return scan(p, end, sink);
}

template <class Unit>
void widen_string(const uint8_t* p, const uint8_t* end, Unit* out) {
    UnitSink<Unit> sink{out};
    scan(p, end, sink);
}

template void widen_string<uint8_t>(const uint8_t*, const uint8_t*, uint8_t*);
template void widen_string<uint16_t>(const uint8_t*, const uint8_t*, uint16_t*);
template void widen_string<uint32_t>(const uint8_t*, const uint8_t*, uint32_t*);

}  // namespace pytrain::json
