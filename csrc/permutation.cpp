// permutation: a Fisher-Yates shuffle driven by SplitMix64 with Lemire's unbiased bounded draws. Everything is
// specified in 64-bit unsigned arithmetic, so the output is the same on every platform and compiler.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <utility>

#include "modules.h"

namespace pytrain {
namespace {

namespace py = pybind11;

// SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014), with the
// constants of Vigna's reference splitmix64.c: the state advances by the golden-ratio increment and each output
// is the state passed through a 64-bit finaliser.
class SplitMix64 {
  public:
    explicit SplitMix64(uint64_t seed) : state_(seed) {}

    uint64_t next() {
        uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }

    // Uniform in [0, range), range >= 1: Lemire, "Fast Random Integer Generation in an Interval" (ACM TOMACS 2019).
    // The high half of next() * range, redrawing while the low half falls in the biased zone (-range mod range).
    uint64_t below(uint64_t range) {
        uint64_t hi, lo;
        multiply(next(), range, hi, lo);
        if (lo < range) {
            const uint64_t threshold = (0 - range) % range;
            while (lo < threshold) multiply(next(), range, hi, lo);
        }
        return hi;
    }

  private:
    // Full 128-bit product in portable 32-bit pieces.
    static void multiply(uint64_t a, uint64_t b, uint64_t& hi, uint64_t& lo) {
        const uint64_t a0 = a & 0xFFFFFFFFULL, a1 = a >> 32, b0 = b & 0xFFFFFFFFULL, b1 = b >> 32;
        const uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
        const uint64_t mid = (p00 >> 32) + (p01 & 0xFFFFFFFFULL) + (p10 & 0xFFFFFFFFULL);
        lo = (mid << 32) | (p00 & 0xFFFFFFFFULL);
        hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
    }

    uint64_t state_;
};

py::array_t<int64_t> permutation(int64_t n, const py::int_& seed_obj) {
    if (n < 0) throw py::value_error("n must be >= 0, got " + std::to_string(n));
    const unsigned long long seed = PyLong_AsUnsignedLongLong(seed_obj.ptr());
    if (PyErr_Occurred()) {
        PyErr_Clear();
        throw py::value_error("seed must be an integer in [0, 2**64), got " + py::repr(seed_obj).cast<std::string>());
    }
    py::array_t<int64_t> out(n);
    int64_t* p = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        for (int64_t i = 0; i < n; ++i) p[i] = i;
        SplitMix64 rng(seed);
        for (int64_t i = n - 1; i > 0; --i) {
            std::swap(p[i], p[rng.below(static_cast<uint64_t>(i) + 1)]);
        }
    }
    return out;
}

}  // namespace

void bind_permutation(py::module_& m) {
    m.def("permutation", &permutation, py::arg("n"), py::arg("seed"),
          R"doc(A deterministic random permutation of 0..n-1 (int64), the same on every platform.

Fisher-Yates: for i = n-1 down to 1, swap a[i] with a[j], j = below(i + 1). The generator is SplitMix64 seeded
with `seed` (an int in [0, 2**64)): state += 0x9E3779B97F4A7C15; z = state; z = (z ^ z>>30) * 0xBF58476D1CE4E5B9;
z = (z ^ z>>27) * 0x94D049BB133111EB; output z ^ z>>31. below(r) is Lemire's unbiased method: m = next() * r as a
128-bit product; while low64(m) < (2**64 - r) % r draw again; return high64(m).)doc");
}

}  // namespace pytrain
