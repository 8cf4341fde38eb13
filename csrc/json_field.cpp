// FieldExtractor: a recursive-descent RFC 8259 validator that follows the requested path as it goes. Values off
// the path are only validated; the string at the path is measured (length and widest character of its decoded
// text) so that the caller can allocate the Python str and decode into it later.
#include "json_field.h"

#include <cstdio>
#include <cstring>

#include "json_string.h"

namespace pytrain::json {
namespace {

bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

std::string hex_code(unsigned value) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "U+%04X", value);
    return buf;
}

}  // namespace

Status FieldExtractor::extract(const uint8_t* begin, const uint8_t* end, Text& text, std::string& reason) {
    if (end > begin && end[-1] == '\n') {
        --end;
        if (end > begin && end[-1] == '\r') --end;
    }
    line_ = p_ = begin;
    end_ = end;
    skip_whitespace();
    if (p_ == end_) return kBlank;
    found_ = Resolution{};
    return resolve(text, reason);
}

Status FieldExtractor::resolve(Text& text, std::string& reason) {
    if (!value(0, 0)) {
        reason = bad_json_reason();
        return kBadJson;
    }
    skip_whitespace();
    if (p_ != end_) {
        fail(p_, "unexpected data after the JSON value");
        reason = bad_json_reason();
        return kBadJson;
    }

    const size_t level = found_.level;
    if (level == path_.size()) {
        if (found_.kind != Kind::kString) {
            reason = describe_path(level) + " is " + kind_name(found_.kind) + ", not a string";
            return kNotString;
        }
        if (found_.text.shape.length == 0) {
            reason = describe_path(level) + " is an empty string";
            return kEmptyText;
        }
        text = found_.text;
        return kOk;
    }
    reason = "missing " + describe_path(path_.size());
    const PathStep& step = path_[level];
    const Kind wanted = step.is_index ? Kind::kArray : Kind::kObject;
    if (found_.kind != wanted) {
        reason += std::string(" (") + describe_path(level) + " is " + kind_name(found_.kind) + ", not " +
                  kind_name(wanted) + ")";
    } else if (step.is_index) {
        reason += " (" + describe_path(level) + " has " + std::to_string(found_.array_size) +
                  (found_.array_size == 1 ? " element)" : " elements)");
    }
    return kMissingField;
}

// `level` is the number of path steps that lead to this value, or kOffPath when it is not on the path.
bool FieldExtractor::value(int depth, size_t level) {
    skip_whitespace();
    if (p_ == end_) return fail(p_, "unexpected end of line, expected a value");
    switch (*p_) {
        case '{': return object(depth + 1, level);
        case '[': return array(depth + 1, level);
        case '"':
            if (level == path_.size()) {
                Text text;
                text.begin = p_ + 1;
                if (!string(nullptr, &text.shape)) return false;
                text.end = p_;
                reach(level, Kind::kString, text);
            } else {
                if (!string(nullptr, nullptr)) return false;
                reach(level, Kind::kString);
            }
            return true;
        case 't':
        case 'f':
        case 'n': {
            Kind kind;
            if (!literal(kind)) return false;
            reach(level, kind);
            return true;
        }
        default:
            if (non_finite_number()) {
                reach(level, Kind::kNumber);
                return true;
            }
            if (*p_ == '-' || is_digit(*p_)) {
                if (!number()) return false;
                reach(level, Kind::kNumber);
                return true;
            }
            if (end_ - p_ >= 3 && std::memcmp(p_, "\xEF\xBB\xBF", 3) == 0) {
                return fail(p_, "unexpected byte order mark (U+FEFF), expected a value");
            }
            return fail(p_, "expected a value");
    }
}

bool FieldExtractor::object(int depth, size_t level) {
    if (depth > kMaxDepth) return fail(p_, "nesting deeper than " + std::to_string(kMaxDepth) + " levels");
    ++p_;
    reach(level, Kind::kObject);
    const bool follow = level < path_.size() && !path_[level].is_index;  // false when off the path too
    skip_whitespace();
    if (p_ < end_ && *p_ == '}') {
        ++p_;
        return true;
    }
    for (;;) {
        if (p_ == end_) return fail(p_, "unexpected end of line inside an object");
        if (*p_ != '"') {
            // Only reachable with '}' after a comma: an empty object returned above.
            return fail(p_, *p_ == '}' ? "trailing comma before '}'" : "expected '\"' to start an object key");
        }
        if (follow) key_scratch_.clear();
        if (!string(follow ? &key_scratch_ : nullptr, nullptr)) return false;
        const bool match = follow && key_scratch_ == path_[level].key;  // keys compare decoded
        skip_whitespace();
        if (p_ == end_ || *p_ != ':') return fail(p_, "expected ':' after object key");
        ++p_;
        if (!value(depth, match ? level + 1 : kOffPath)) return false;
        skip_whitespace();
        if (p_ == end_) return fail(p_, "unexpected end of line inside an object");
        if (*p_ == '}') {
            ++p_;
            return true;
        }
        if (*p_ != ',') return fail(p_, "expected ',' or '}' after object member");
        ++p_;
        skip_whitespace();
    }
}

bool FieldExtractor::array(int depth, size_t level) {
    if (depth > kMaxDepth) return fail(p_, "nesting deeper than " + std::to_string(kMaxDepth) + " levels");
    ++p_;
    reach(level, Kind::kArray);
    const bool follow = level < path_.size() && path_[level].is_index;
    size_t count = 0;
    skip_whitespace();
    if (p_ < end_ && *p_ == ']') {
        ++p_;
    } else {
        for (;;) {
            skip_whitespace();
            if (p_ < end_ && *p_ == ']') return fail(p_, "trailing comma before ']'");
            const bool match = follow && count == path_[level].index;
            if (!value(depth, match ? level + 1 : kOffPath)) return false;
            ++count;
            skip_whitespace();
            if (p_ == end_) return fail(p_, "unexpected end of line inside an array");
            if (*p_ == ']') {
                ++p_;
                break;
            }
            if (*p_ != ',') return fail(p_, "expected ',' or ']' after array element");
            ++p_;
        }
    }
    if (follow && found_.level == level) found_.array_size = count;  // the index was never reached
    return true;
}

// p_ is at the opening quote; on success it moves past the closing one. Appends the decoded contents to *decoded
// or measures them into *shape when one is given; otherwise only validates.
bool FieldExtractor::string(std::string* decoded, Shape* shape) {
    const uint8_t* open = p_;
    const StringScan scan = decoded ? decode_string(p_ + 1, end_, *decoded)
                            : shape ? measure_string(p_ + 1, end_, *shape)
                                    : validate_string(p_ + 1, end_);
    const uint8_t* at = scan.stop;
    switch (scan.error) {
        case StringError::kNone:
            p_ = at + 1;
            return true;
        case StringError::kUnterminated:
            return fail(open, "unterminated string");
        case StringError::kControlCharacter:
            return fail(at, "unescaped control character " + hex_code(*at) + " in string");
        case StringError::kInvalidEscape:
            if (at[1] < 0x20 || at[1] >= 0x7F) return fail(at, "invalid escape");
            return fail(at, std::string("invalid escape '\\") + static_cast<char>(at[1]) + "'");
        case StringError::kInvalidUnicodeEscape:
            return fail(at, "invalid \\u escape, expected 4 hex digits");
    }
    return false;
}

// NaN, Infinity and -Infinity are not RFC 8259 but Python's json reads them and json.dumps
// writes them by default, so a corpus dumped from Python may hold them in any numeric field.
bool FieldExtractor::non_finite_number() {
    for (const char* word : {"NaN", "Infinity", "-Infinity"}) {
        const size_t n = std::strlen(word);
        if (static_cast<size_t>(end_ - p_) >= n && std::memcmp(p_, word, n) == 0) {
            p_ += n;
            return true;
        }
    }
    return false;
}

bool FieldExtractor::number() {
    if (*p_ == '-') ++p_;
    if (p_ == end_ || !is_digit(*p_)) return fail(p_, "invalid number, expected a digit");
    if (*p_ == '0') {
        ++p_;  // no leading zeros: "01" ends the number after "0"
    } else {
        while (p_ < end_ && is_digit(*p_)) ++p_;
    }
    if (p_ < end_ && *p_ == '.') {
        ++p_;
        if (p_ == end_ || !is_digit(*p_)) return fail(p_, "invalid number, expected a digit after '.'");
        while (p_ < end_ && is_digit(*p_)) ++p_;
    }
    if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
        ++p_;
        if (p_ < end_ && (*p_ == '+' || *p_ == '-')) ++p_;
        if (p_ == end_ || !is_digit(*p_)) return fail(p_, "invalid number, expected a digit in the exponent");
        while (p_ < end_ && is_digit(*p_)) ++p_;
    }
    return true;
}

bool FieldExtractor::literal(Kind& kind) {
    const char* word = *p_ == 't' ? "true" : *p_ == 'f' ? "false" : "null";
    const size_t n = std::strlen(word);
    if (static_cast<size_t>(end_ - p_) < n || std::memcmp(p_, word, n) != 0) {
        return fail(p_, std::string("invalid literal, expected '") + word + "'");
    }
    p_ += n;
    kind = *word == 'n' ? Kind::kNull : Kind::kBoolean;
    return true;
}

void FieldExtractor::skip_whitespace() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
}

void FieldExtractor::reach(size_t level, Kind kind, const Text& text) {
    if (level == kOffPath) return;
    found_ = Resolution{level, kind, text, 0};
}

bool FieldExtractor::fail(const uint8_t* at, std::string message) {
    error_at_ = at;
    error_ = std::move(message);
    return false;
}

// The column counts characters from 1 like Python's json (bytes that are not UTF-8 continuation bytes).
std::string FieldExtractor::bad_json_reason() const {
    size_t column = 1;
    for (const uint8_t* q = line_; q < error_at_; ++q) column += (*q & 0xC0) != 0x80;
    return "invalid JSON at column " + std::to_string(column) + ": " + error_;
}

// "field .messages[0].content" for the first `steps` steps of the path; "the line" for none.
std::string FieldExtractor::describe_path(size_t steps) const {
    if (steps == 0) return "the line";
    std::string s = "field ";
    for (size_t i = 0; i < steps; ++i) {
        const PathStep& step = path_[i];
        if (step.is_index) {
            s += "[" + std::to_string(step.index) + "]";
        } else {
            s += "." + step.key;
        }
    }
    return s;
}

const char* FieldExtractor::kind_name(Kind kind) {
    switch (kind) {
        case Kind::kObject: return "an object";
        case Kind::kArray: return "an array";
        case Kind::kString: return "a string";
        case Kind::kNumber: return "a number";
        case Kind::kBoolean: return "a boolean";
        case Kind::kNull: return "null";
    }
    return "";
}

}  // namespace pytrain::json
