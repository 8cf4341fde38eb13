// The blending index of a weighted mixture, built lazily one chunk at a time, and a keyed permutation that shuffles
// a source's samples without materialising an order.
//
// A mixture of S sources with integer weights u_s (sum D) gives source s exactly quota_s(n) = floor(u_s * n / D) of
// the first n "nominal" samples. Chunk c holds the samples between nominal positions c*C and (c+1)*C: per source
// quota_s((c+1)C) - quota_s(cC) of them, so any chunk is built from its number alone in O(S + len log S), without
// looking at earlier chunks (Megatron's build_blending_indices walks every sample from the start and tries every
// source at each one: O(samples x S)). Inside a chunk the sources are interleaved smoothly: the j-th of source s's
// n_s samples gets the virtual time (j + 1/2) / n_s and samples are taken in virtual-time order (ties: lower source
// first), so every prefix of a chunk holds each source within about one sample of its share.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <queue>
#include <string>
#include <utility>
#include <vector>

#include "buffer.h"
#include "modules.h"

namespace pytrain {
namespace {

using u128 = unsigned __int128;

std::vector<int64_t> checked_units(const py::handle& units_obj) {
    const Int64Array arr = as_int64_vector(units_obj, "units");
    if (arr.size() == 0) throw py::value_error("units must hold at least one source weight");
    std::vector<int64_t> units(arr.data(), arr.data() + arr.size());
    u128 total = 0;
    for (size_t s = 0; s < units.size(); ++s) {
        if (units[s] <= 0) {
            throw py::value_error("units[" + std::to_string(s) + "] = " + std::to_string(units[s]) + " must be > 0");
        }
        total += static_cast<u128>(units[s]);
    }
    if (total >> 62) throw py::value_error("the units must sum to less than 2**62");
    return units;
}

int64_t units_total(const std::vector<int64_t>& units) {
    int64_t total = 0;
    for (int64_t u : units) total += u;
    return total;
}

// floor(u_s * n / D) for every source, exactly (128-bit products).
void quotas(const std::vector<int64_t>& units, int64_t total, int64_t n, int64_t* out) {
    for (size_t s = 0; s < units.size(); ++s) {
        out[s] = static_cast<int64_t>(static_cast<u128>(units[s]) * static_cast<u128>(n) / static_cast<u128>(total));
    }
}

void check_position(int64_t n, const char* name) {
    if (n < 0 || n > (int64_t{1} << 62)) throw py::value_error(std::string(name) + " must be in [0, 2**62]");
}

py::array_t<int64_t> blend_quotas(const py::handle& units_obj, int64_t n) {
    const std::vector<int64_t> units = checked_units(units_obj);
    check_position(n, "n");
    py::array_t<int64_t> out(static_cast<py::ssize_t>(units.size()));
    quotas(units, units_total(units), n, out.mutable_data());
    return out;
}

py::tuple blend_chunk(const py::handle& units_obj, int64_t begin, int64_t end) {
    const std::vector<int64_t> units = checked_units(units_obj);
    check_position(begin, "begin");
    check_position(end, "end");
    if (end < begin) throw py::value_error("end must be >= begin");
    const size_t n_sources = units.size();
    const int64_t total = units_total(units);
    py::array_t<int64_t> before(static_cast<py::ssize_t>(n_sources));
    std::vector<int64_t> after(n_sources);
    quotas(units, total, begin, before.mutable_data());
    quotas(units, total, end, after.data());
    const int64_t* first = before.data();
    int64_t length = 0;
    for (size_t s = 0; s < n_sources; ++s) length += after[s] - first[s];
    py::array_t<int32_t> sources(length);
    py::array_t<int64_t> indices(length);
    int32_t* src_out = sources.mutable_data();
    int64_t* idx_out = indices.mutable_data();
    {
        py::gil_scoped_release nogil;
        std::vector<int64_t> count(n_sources), taken(n_sources, 0);
        for (size_t s = 0; s < n_sources; ++s) count[s] = after[s] - first[s];
        // Source a's next virtual time (2*taken_a + 1) / (2*count_a) is later than b's when
        // (2*taken_a + 1) * count_b > (2*taken_b + 1) * count_a; both products stay below 2**126.
        auto later = [&](int32_t a, int32_t b) {
            const u128 lhs = static_cast<u128>(2 * taken[a] + 1) * static_cast<u128>(count[b]);
            const u128 rhs = static_cast<u128>(2 * taken[b] + 1) * static_cast<u128>(count[a]);
            return lhs != rhs ? lhs > rhs : a > b;
        };
        std::priority_queue<int32_t, std::vector<int32_t>, decltype(later)> heap(later);
        for (size_t s = 0; s < n_sources; ++s) {
            if (count[s] > 0) heap.push(static_cast<int32_t>(s));
        }
        for (int64_t i = 0; i < length; ++i) {
            const int32_t s = heap.top();
            heap.pop();
            src_out[i] = s;
            idx_out[i] = first[s] + taken[s];
            if (++taken[s] < count[s]) heap.push(s);
        }
    }
    return py::make_tuple(before, sources, indices);
}

uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// A balanced Feistel network on 2*half bits (a bijection of [0, 4**half)), restricted to [0, n) by cycle walking:
// values that land outside are encrypted again until they fall inside, which keeps it a bijection of [0, n).
class KeyedPermutation {
  public:
    KeyedPermutation(uint64_t n, uint64_t key) : n_(n), key_(key) {
        int bits = 1;
        while (bits < 64 && (uint64_t{1} << bits) < n) ++bits;
        half_ = (bits + 1) / 2;
        mask_ = (uint64_t{1} << half_) - 1;
    }

    uint64_t operator()(uint64_t x) const {
        do x = encrypt(x);
        while (x >= n_);
        return x;
    }

  private:
    uint64_t encrypt(uint64_t x) const {
        uint64_t left = x >> half_, right = x & mask_;
        for (uint64_t round = 0; round < kRounds; ++round) {
            const uint64_t f = mix64(key_ + (round + 1) * 0x9E3779B97F4A7C15ULL + mix64(right)) & mask_;
            const uint64_t next = left ^ f;
            left = right;
            right = next;
        }
        return (left << half_) | right;
    }

    static constexpr uint64_t kRounds = 6;
    uint64_t n_, key_, mask_;
    int half_;
};

py::array_t<int64_t> keyed_permutation(const py::handle& values_obj, int64_t n, const py::int_& key_obj) {
    if (n < 1 || n > (int64_t{1} << 62)) throw py::value_error("n must be in [1, 2**62], got " + std::to_string(n));
    const unsigned long long key = PyLong_AsUnsignedLongLong(key_obj.ptr());
    if (PyErr_Occurred()) {
        PyErr_Clear();
        throw py::value_error("key must be an integer in [0, 2**64)");
    }
    const Int64Array values = as_int64_vector(values_obj, "values");
    const int64_t* in = values.data();
    const py::ssize_t count = values.size();
    for (py::ssize_t i = 0; i < count; ++i) {
        if (in[i] < 0 || in[i] >= n) {
            throw py::value_error("values[" + std::to_string(i) + "] = " + std::to_string(in[i]) + " is outside [0, " +
                                  std::to_string(n) + ")");
        }
    }
    py::array_t<int64_t> out(count);
    int64_t* p = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        const KeyedPermutation permute(static_cast<uint64_t>(n), key);
        for (py::ssize_t i = 0; i < count; ++i) p[i] = static_cast<int64_t>(permute(static_cast<uint64_t>(in[i])));
    }
    return out;
}

}  // namespace

void bind_blend_index(py::module_& m) {
    m.def("blend_quotas", &blend_quotas, py::arg("units"), py::arg("n"),
          R"doc(floor(units[s] * n / sum(units)) for every source s (int64, exact): how many of the first n nominal
samples of a mixture belong to source s. units are the sources' integer weights (each > 0, sum < 2**62).)doc");
    m.def("blend_chunk", &blend_chunk, py::arg("units"), py::arg("begin"), py::arg("end"),
          R"doc(The samples of a mixture between nominal positions begin and end: (before, sources, indices).

before[s] = blend_quotas(units, begin)[s] is how many samples source s had before this chunk; the chunk holds
blend_quotas(units, end)[s] - before[s] samples of source s. sources (int32) says which source each sample of the
chunk comes from and indices (int64) which sample of that source (before[s], before[s] + 1, ... in order). The
order interleaves the sources smoothly: the j-th of a source's n_s samples in the chunk has virtual time
(j + 1/2) / n_s, and samples come in virtual-time order, ties to the lower source.)doc");
    m.def("keyed_permutation", &keyed_permutation, py::arg("values"), py::arg("n"), py::arg("key"),
          R"doc(pi(values) for a pseudo-random bijection pi of [0, n) chosen by key (an int in [0, 2**64)); O(1) memory.

pi is a 6-round balanced Feistel network on the smallest even number of bits covering n, with round function
mix64(key + (round + 1) * 0x9E3779B97F4A7C15 + mix64(right)) (mix64: the SplitMix64 finaliser), applied again
while the result is >= n (cycle walking). The same on every platform.)doc");
}

}  // namespace pytrain
