// Validating one-line JSON parser that extracts the string at a path (the per-line work of extract_json_field).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

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

// One instance per worker thread: it keeps scratch buffers between lines.
class FieldExtractor {
  public:
    explicit FieldExtractor(const Path& path) : path_(path) {}

    // Parses [begin, end) (one line; a trailing "\n" or "\r\n" is ignored) as a whole JSON value. On kOk appends
    // the decoded UTF-8 text to `text`; for every status but kOk and kBlank sets `reason` to a short message.
    Status extract(const uint8_t* begin, const uint8_t* end, std::string& text, std::string& reason);

  private:
    enum class Kind : uint8_t { kObject, kArray, kString, kNumber, kBoolean, kNull };

    // Deepest point of the path reached so far. A matching member parsed later (duplicate key) overwrites it,
    // so the last occurrence wins as in Python's json.
    struct Resolution {
        size_t level = 0;          // path steps resolved; == path size means the value itself was found
        Kind kind = Kind::kNull;   // kind of the value reached
        bool empty_string = false;  // kind == kString and it is ""
        size_t array_size = 0;     // elements, when the array at `level` is too short for the index
    };

    static constexpr size_t kOffPath = static_cast<size_t>(-1);

    Status resolve(std::string& reason);
    bool value(int depth, size_t level);
    bool object(int depth, size_t level);
    bool array(int depth, size_t level);
    bool string(std::string* decoded);
    bool number();
    bool literal(Kind& kind);
    void skip_whitespace();
    void reach(size_t level, Kind kind, bool empty_string = false);
    bool fail(const uint8_t* at, std::string message);
    std::string bad_json_reason() const;
    std::string describe_path(size_t steps) const;
    static const char* kind_name(Kind kind);

    const Path& path_;
    std::string* text_ = nullptr;  // the caller's output; the value at the path is decoded from text_[mark_]
    size_t mark_ = 0;
    const uint8_t* line_ = nullptr;
    const uint8_t* p_ = nullptr;
    const uint8_t* end_ = nullptr;
    Resolution found_;
    const uint8_t* error_at_ = nullptr;
    std::string error_;
    std::string key_scratch_;
};

}  // namespace pytrain::json
