// Validating one-line JSON parser that extracts the string at a path (the per-line work of extract_json_field).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "json_string.h"

namespace pytrain::json {

// Per-line outcome; the values are part of the Python API.
enum Status : uint8_t {
    kOk = 0,            // the value at the path is a non-empty string
    kBlank = 1,         // empty or whitespace-only line
    kBadJson = 2,       // the line is not exactly one valid JSON value
    kMissingField = 3,  // a key is absent, an index out of range, or an intermediate value is not a container
    kNotString = 4,     // the value at the path is not a string
    kEmptyText = 5,     // the value at the path is ""
};

struct PathStep {
    bool is_index;
    std::string key;  // UTF-8, when !is_index
    size_t index;     // when is_index
};
using Path = std::vector<PathStep>;

inline constexpr int kMaxDepth = 512;  // nested objects/arrays allowed in one line

// The string at the path, still encoded in the line: decode it with widen_string(begin, end, ...).
struct Text {
    const uint8_t* begin = nullptr;  // the first byte after the opening quote
    const uint8_t* end = nullptr;    // one past the closing quote
    Shape shape;
};

// One instance per worker thread: it keeps scratch buffers between lines.
class FieldExtractor {
  public:
    explicit FieldExtractor(const Path& path) : path_(path) {}

    // Parses [begin, end) (one line; a trailing "\n" or "\r\n" is ignored) as a whole JSON value. On kOk sets
    // `text`; for every status but kOk and kBlank sets `reason` to a short message.
    Status extract(const uint8_t* begin, const uint8_t* end, Text& text, std::string& reason);

  private:
    enum class Kind : uint8_t { kObject, kArray, kString, kNumber, kBoolean, kNull };

    // Deepest point of the path reached so far. A matching member parsed later (duplicate key) overwrites it,
    // so the last occurrence wins as in Python's json.
    struct Resolution {
        size_t level = 0;         // path steps resolved; == path size means the value itself was found
        Kind kind = Kind::kNull;  // kind of the value reached
        Text text;                // kind == kString at the full path
        size_t array_size = 0;    // elements, when the array at `level` is too short for the index
    };

    static constexpr size_t kOffPath = static_cast<size_t>(-1);

    Status resolve(Text& text, std::string& reason);
    bool value(int depth, size_t level);
    bool object(int depth, size_t level);
    bool array(int depth, size_t level);
    bool string(std::string* decoded, Shape* shape);
    bool number();
    bool non_finite_number();
    bool literal(Kind& kind);
    void skip_whitespace();
    void reach(size_t level, Kind kind, const Text& text = Text{});
    bool fail(const uint8_t* at, std::string message);
    std::string bad_json_reason() const;
    std::string describe_path(size_t steps) const;
    static const char* kind_name(Kind kind);

    const Path& path_;
    const uint8_t* line_ = nullptr;
    const uint8_t* p_ = nullptr;
    const uint8_t* end_ = nullptr;
    Resolution found_;
    const uint8_t* error_at_ = nullptr;
    std::string error_;
    std::string key_scratch_;
};

}  // namespace pytrain::json
