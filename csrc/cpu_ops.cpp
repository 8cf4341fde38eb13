// Fused CPU kernels for the model's elementwise work, fp32: SwiGLU (silu(gate) * up), RMSNorm (with the
// pre-norm block's residual add), RoPE and the cross-entropy of the LM head's logits, forward and backward,
// each reading its rows once from memory.
//
// Eager PyTorch runs SwiGLU's backward as 3 operations, RMSNorm's as about 12 and RoPE's as about 14 per
// tensor, each a pass over memory with a fresh output; on a CPU, where these tensors come from memory rather
// than cache, those passes cost as much as the block's matmuls (bench_train.py --vs-minimal). These loops
// read each input once and write each output once. pytrain/ops calls them through torch tensors' data
// pointers after checking shapes, dtypes and contiguity (pytrain/ops/cpu_kernels.py); nothing here sees a
// Python object while it runs.
//
// Every result is independent of the thread count: elementwise outputs trivially, RMSNorm's weight
// gradient because rows are summed in fixed blocks of kRowsPerBlock, then the blocks in order.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "modules.h"
#include "parallel.h"

// Round as PyTorch's reference ops do: no multiply-add contracted into one rounding (a pragma rather than a
// flag, since a link-time-optimised build would drop the flag).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace pytrain {
namespace {

namespace py = pybind11;

constexpr int64_t kElementsPerWorker = 1 << 16;  // below this a thread's start-up costs more than it saves
constexpr int64_t kRowsPerBlock = 32;
constexpr int kLanes = 16;  // independent partial sums, so that a row's reduction vectorises without -ffast-math

// Multiversioned for the vector widths x86-64 CPUs have (the default build targets SSE2 only); elsewhere
// the compiler's default target.
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define PYTRAIN_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PYTRAIN_VECTOR_CLONES
#endif

// exp(x) within 2 ulp for x in [-87, 88] (exp(88) above, 0 below): Cody-Waite reduction by ln 2 and Cephes' degree-6
// polynomial, written so the compiler vectorises it (no libm call, rounding by the 1.5 * 2^23 trick).
inline float exp_approx(float x_in) {
    float x = x_in < -87.0f ? -87.0f : x_in;
    x = x > 88.0f ? 88.0f : x;
    const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    const float n = (x * 1.44269504088896341f + magic) - magic;
    const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    // 2^n: n is in [-126, 127] after the clamp; a NaN input (kept NaN by p) converts 0 instead (UB otherwise)
    const int32_t bits = (static_cast<int32_t>(n == n ? n : 0.0f) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return x_in < -87.0f ? 0.0f : p * scale;  // below -87 the result is under 1.7e-38: flushed to 0
}

// One row: gate_up holds the row's gate then its up values (cols each), out the cols products.
PYTRAIN_VECTOR_CLONES
void swiglu_forward_row(const float* __restrict gate_up, float* __restrict out, int64_t cols) {
    const float* up = gate_up + cols;
    for (int64_t j = 0; j < cols; ++j) {
        const float g = gate_up[j];
        out[j] = g * up[j] / (1.0f + exp_approx(-g));
    }
}

// d(gate) = grad * up * silu'(gate), d(up) = grad * silu(gate), with silu' = sig * (1 + gate * (1 - sig)),
// written over the row's gate and up values (each pair is read before it is written).
PYTRAIN_VECTOR_CLONES
void swiglu_backward_row(const float* __restrict grad, float* __restrict gate_up, int64_t cols) {
    float* up = gate_up + cols;
    for (int64_t j = 0; j < cols; ++j) {
        const float g = gate_up[j];
        const float u = up[j];
        const float sig = 1.0f / (1.0f + exp_approx(-g));
        const float d = grad[j];
        gate_up[j] = d * u * (sig * (1.0f + g * (1.0f - sig)));
        up[j] = d * (g * sig);
    }
}

// fn(begin, end) over [0, items), split evenly among as many workers as torch's thread count allows, one per
// kElementsPerWorker elements of work (elements_per_item each) and at most one per item.
template <class Fn>
void for_ranges(int64_t items, int64_t elements_per_item, int threads, Fn&& fn) {
    const int64_t useful = std::min(items, items * elements_per_item / kElementsPerWorker);
    const int workers = resolve_threads(threads, static_cast<size_t>(useful));
    py::gil_scoped_release nogil;
    run_parallel(workers, [&](int w) {
        fn(static_cast<int64_t>(split_point(items, workers, w)),
           static_cast<int64_t>(split_point(items, workers, w + 1)));
    });
}

// out [rows, cols] = silu(gate) * up of gate_up [rows, 2 * cols] (each row: cols gate values, then cols up values).
void swiglu_forward(uintptr_t gate_up, uintptr_t out, int64_t rows, int64_t cols, int threads) {
    const float* in = reinterpret_cast<const float*>(gate_up);
    float* outs = reinterpret_cast<float*>(out);
    for_ranges(rows, cols, threads, [&](int64_t first, int64_t last) {
        for (int64_t i = first; i < last; ++i) swiglu_forward_row(in + i * 2 * cols, outs + i * cols, cols);
    });
}

// gate_up [rows, 2 * cols] becomes its own gradient, for the output gradient grad [rows, cols].
void swiglu_backward(uintptr_t grad, uintptr_t gate_up, int64_t rows, int64_t cols, int threads) {
    const float* grads = reinterpret_cast<const float*>(grad);
    float* values = reinterpret_cast<float*>(gate_up);
    for_ranges(rows, cols, threads, [&](int64_t first, int64_t last) {
        for (int64_t i = first; i < last; ++i) swiglu_backward_row(grads + i * cols, values + i * 2 * cols, cols);
    });
}

// term(0) + ... + term(cols - 1), summed in kLanes interleaved partial sums (inlined into vectorised callers).
template <class Term>
inline float lane_sum(int64_t cols, Term&& term) {
    float lanes[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= cols; j += kLanes) {
        for (int k = 0; k < kLanes; ++k) lanes[k] += term(j + k);
    }
    for (; j < cols; ++j) lanes[j % kLanes] += term(j);
    float total = 0.0f;
    for (int k = 0; k < kLanes; ++k) total += lanes[k];
    return total;
}

// The weight as the norm applies it: w (Llama) or 1 + w (Gemma).
std::vector<float> effective_weight(const float* weight, int64_t cols, bool gemma) {
    std::vector<float> scale(weight, weight + cols);
    if (gemma) {
        for (float& s : scale) s += 1.0f;
    }
    return scale;
}

// fn(block, first row, end row) for each block of kRowsPerBlock rows.
template <class Fn>
void for_row_blocks(int64_t rows, int64_t cols, int threads, Fn&& fn) {
    const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
    for_ranges(blocks, kRowsPerBlock * cols, threads, [&](int64_t first, int64_t last) {
        for (int64_t b = first; b < last; ++b) fn(b, b * kRowsPerBlock, std::min(rows, (b + 1) * kRowsPerBlock));
    });
}

PYTRAIN_VECTOR_CLONES
void rms_norm_forward_row(const float* __restrict x, const float* __restrict residual, const float* __restrict scale,
                          float* __restrict y, float* __restrict h_out, float* rstd, int64_t cols, float eps) {
    const float* h = x;
    if (residual != nullptr) {
        for (int64_t j = 0; j < cols; ++j) h_out[j] = x[j] + residual[j];
        h = h_out;
    }
    const float sum_of_squares = lane_sum(cols, [&](int64_t j) { return h[j] * h[j]; });
    const float r = 1.0f / std::sqrt(sum_of_squares / static_cast<float>(cols) + eps);
    *rstd = r;
    for (int64_t j = 0; j < cols; ++j) y[j] = h[j] * r * scale[j];
}

// y = norm(x [+ residual]) * scale per row; with a residual, h_out = x + residual. rstd: one float per row,
// for the backward.
void rms_norm_forward(uintptr_t x, uintptr_t residual, uintptr_t weight, uintptr_t y, uintptr_t h_out,
                      uintptr_t rstd, int64_t rows, int64_t cols, float eps, bool gemma, int threads) {
    const std::vector<float> scale = effective_weight(reinterpret_cast<const float*>(weight), cols, gemma);
    const float* xs = reinterpret_cast<const float*>(x);
    const float* rs = reinterpret_cast<const float*>(residual);
    float* ys = reinterpret_cast<float*>(y);
    float* hs = reinterpret_cast<float*>(h_out);
    float* rstds = reinterpret_cast<float*>(rstd);
    for_row_blocks(rows, cols, threads, [&](int64_t, int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            rms_norm_forward_row(xs + i * cols, rs == nullptr ? nullptr : rs + i * cols, scale.data(), ys + i * cols,
                                 hs == nullptr ? nullptr : hs + i * cols, rstds + i, cols, eps);
        }
    });
}

// One row of the backward: with n = h * rstd and g = dy * scale, dh = rstd * (g - n * mean(g * n)) (+ dh_out);
// dweight_block += dy * n.
PYTRAIN_VECTOR_CLONES
void rms_norm_backward_row(const float* __restrict dy, const float* __restrict dh_out, const float* __restrict h,
                           float rstd, const float* __restrict scale, float* __restrict dh,
                           float* __restrict dweight_block, int64_t cols) {
    const float dot = lane_sum(cols, [&](int64_t j) { return dy[j] * scale[j] * (h[j] * rstd); });
    const float mean = dot / static_cast<float>(cols);
    for (int64_t j = 0; j < cols; ++j) {
        const float n = h[j] * rstd;
        float d = rstd * (dy[j] * scale[j] - n * mean);
        if (dh_out != nullptr) d += dh_out[j];
        dh[j] = d;
        dweight_block[j] += dy[j] * n;
    }
}

void rms_norm_backward(uintptr_t dy, uintptr_t dh_out, uintptr_t h, uintptr_t rstd, uintptr_t weight, uintptr_t dh,
                       uintptr_t dweight, int64_t rows, int64_t cols, bool gemma, int threads) {
    const std::vector<float> scale = effective_weight(reinterpret_cast<const float*>(weight), cols, gemma);
    const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
    std::vector<float> partial(static_cast<size_t>(blocks * cols), 0.0f);
    const float* dys = reinterpret_cast<const float*>(dy);
    const float* outs = reinterpret_cast<const float*>(dh_out);
    const float* hs = reinterpret_cast<const float*>(h);
    const float* rstds = reinterpret_cast<const float*>(rstd);
    float* dhs = reinterpret_cast<float*>(dh);
    for_row_blocks(rows, cols, threads, [&](int64_t block, int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            rms_norm_backward_row(dys + i * cols, outs == nullptr ? nullptr : outs + i * cols, hs + i * cols, rstds[i],
                                  scale.data(), dhs + i * cols, partial.data() + block * cols, cols);
        }
    });
    float* dw = reinterpret_cast<float*>(dweight);
    std::fill(dw, dw + cols, 0.0f);
    for (int64_t b = 0; b < blocks; ++b) {
        for (int64_t j = 0; j < cols; ++j) dw[j] += partial[b * cols + j];
    }
}

PYTRAIN_VECTOR_CLONES
float row_max(const float* z, int64_t cols) {
    float lanes[kLanes];
    std::fill(lanes, lanes + kLanes, -INFINITY);
    int64_t j = 0;
    for (; j + kLanes <= cols; j += kLanes) {
        for (int k = 0; k < kLanes; ++k) lanes[k] = z[j + k] > lanes[k] ? z[j + k] : lanes[k];
    }
    for (; j < cols; ++j) lanes[j % kLanes] = z[j] > lanes[j % kLanes] ? z[j] : lanes[j % kLanes];
    return *std::max_element(lanes, lanes + kLanes);
}

// The row's value when its largest logit is infinite: the limit (-inf when every logit is -inf, +inf when
// one is +inf) or NaN when any logit is NaN (as torch.logsumexp; the vectorised max skips NaNs).
float infinite_logsumexp(const float* z, int64_t cols, float top) {
    return std::any_of(z, z + cols, [](float v) { return v != v; }) ? NAN : top;
}

// One row's log(sum(exp(z))), as max + log(sum(exp(z - max))); a NaN logit makes the sum NaN.
PYTRAIN_VECTOR_CLONES
float row_logsumexp(const float* z, int64_t cols) {
    const float top = row_max(z, cols);
    if (std::isinf(top)) return infinite_logsumexp(z, cols, top);
    return top + std::log(lane_sum(cols, [&](int64_t j) { return exp_approx(z[j] - top); }));
}

inline bool in_vocab(int64_t label, int64_t vocab) { return label >= 0 && label < vocab; }

// Per row of logits [rows, vocab]: lse = logsumexp, loss = lse - z[label]; an ignored row's loss is 0, a
// label outside [0, vocab) makes it NaN (the Triton kernel's contract; PYTRAIN_CHECK_INPUTS names it).
void cross_entropy_forward(uintptr_t logits, uintptr_t labels, uintptr_t lse, uintptr_t loss, int64_t rows,
                           int64_t vocab, int64_t ignore_index, int threads) {
    const float* zs = reinterpret_cast<const float*>(logits);
    const int64_t* ys = reinterpret_cast<const int64_t*>(labels);
    float* lses = reinterpret_cast<float*>(lse);
    float* losses = reinterpret_cast<float*>(loss);
    for_ranges(rows, vocab, threads, [&](int64_t first, int64_t last) {
        for (int64_t i = first; i < last; ++i) {
            const float* z = zs + i * vocab;
            lses[i] = row_logsumexp(z, vocab);
            const int64_t y = ys[i];
            losses[i] = y == ignore_index ? 0.0f : (in_vocab(y, vocab) ? lses[i] - z[y] : NAN);
        }
    });
}

PYTRAIN_VECTOR_CLONES
void softmax_scaled_row(float* z, float lse, float scale, int64_t cols) {
    for (int64_t j = 0; j < cols; ++j) z[j] = exp_approx(z[j] - lse) * scale;
}

// The logits' gradient, written over the logits: (softmax(z) - onehot(label)) * grad[i] per row; ignored
// rows get 0, rows with a label outside [0, vocab) NaN.
void cross_entropy_backward(uintptr_t logits, uintptr_t labels, uintptr_t lse, uintptr_t grad, int64_t rows,
                            int64_t vocab, int64_t ignore_index, int threads) {
    float* zs = reinterpret_cast<float*>(logits);
    const int64_t* ys = reinterpret_cast<const int64_t*>(labels);
    const float* lses = reinterpret_cast<const float*>(lse);
    const float* grads = reinterpret_cast<const float*>(grad);
    for_ranges(rows, vocab, threads, [&](int64_t first, int64_t last) {
        for (int64_t i = first; i < last; ++i) {
            float* z = zs + i * vocab;
            const int64_t y = ys[i];
            if (y == ignore_index || !in_vocab(y, vocab)) {
                std::fill(z, z + vocab, y == ignore_index ? 0.0f : NAN);
                continue;
            }
            softmax_scaled_row(z, lses[i], grads[i], vocab);
            z[y] -= grads[i];
        }
    });
}

// Tokens [first, last) of x, each token's heads rotated by its angles: (x1, x2) -> (x1 cos - x2 sin,
// x2 cos + x1 sin), or by the negated angles (`inverse`, the backward). No fused multiply-add (the pragma at
// the top), so the values are the PyTorch reference's bit for bit. The token loop is in here so that the
// vector clone is chosen once per range, not once per token.
PYTRAIN_VECTOR_CLONES
void rope_tokens(const float* __restrict xs, float* __restrict outs, const float* __restrict coss,
                 const float* __restrict sins, int64_t first, int64_t last, int64_t seq, int64_t table_batch_stride,
                 int64_t heads, int64_t half, bool inverse) {
    const int64_t width = heads * 2 * half;
    for (int64_t t = first; t < last; ++t) {
        const int64_t table = t / seq * table_batch_stride + t % seq * half;
        const float* cos = coss + table;
        const float* sin = sins + table;
        for (int64_t h = 0; h < heads; ++h) {
            const float* x1 = xs + t * width + h * 2 * half;
            const float* x2 = x1 + half;
            float* out1 = outs + t * width + h * 2 * half;
            float* out2 = out1 + half;
            if (inverse) {
                for (int64_t j = 0; j < half; ++j) {
                    out1[j] = x1[j] * cos[j] + x2[j] * sin[j];
                    out2[j] = x2[j] * cos[j] - x1[j] * sin[j];
                }
            } else {
                for (int64_t j = 0; j < half; ++j) {
                    out1[j] = x1[j] * cos[j] - x2[j] * sin[j];
                    out2[j] = x2[j] * cos[j] + x1[j] * sin[j];
                }
            }
        }
    }
}

// x, out: [batch, seq, heads, 2 * half]; cos, sin: row (b, s) at b * table_batch_stride + s * half (a stride of
// 0 shares one [seq, half] table across the batch).
void rope(uintptr_t x, uintptr_t out, uintptr_t cos, uintptr_t sin, int64_t batch, int64_t seq, int64_t heads,
          int64_t half, int64_t table_batch_stride, bool inverse, int threads) {
    for_ranges(batch * seq, heads * 2 * half, threads, [&](int64_t first, int64_t last) {
        rope_tokens(reinterpret_cast<const float*>(x), reinterpret_cast<float*>(out),
                    reinterpret_cast<const float*>(cos), reinterpret_cast<const float*>(sin), first, last, seq,
                    table_batch_stride, heads, half, inverse);
    });
}

}  // namespace

void bind_cpu_ops(py::module_& m) {
    m.def("swiglu_forward", &swiglu_forward, py::arg("gate_up"), py::arg("out"), py::arg("rows"), py::arg("cols"),
          py::arg("threads"), "out [rows, cols] = silu(gate) * up of contiguous fp32 gate_up [rows, 2 * cols] "
          "(data pointers).");
    m.def("swiglu_backward", &swiglu_backward, py::arg("grad"), py::arg("gate_up"), py::arg("rows"), py::arg("cols"),
          py::arg("threads"), "Writes the gradient of silu(gate) * up over gate_up [rows, 2 * cols], for the output "
          "gradient grad [rows, cols].");
    m.def("rms_norm_forward", &rms_norm_forward, py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("y"),
          py::arg("h_out"), py::arg("rstd"), py::arg("rows"), py::arg("cols"), py::arg("eps"), py::arg("gemma"),
          py::arg("threads"),
          "RMSNorm of [rows, cols] fp32 rows (residual and h_out 0 when there is no residual add).");
    m.def("rms_norm_backward", &rms_norm_backward, py::arg("dy"), py::arg("dh_out"), py::arg("h"), py::arg("rstd"),
          py::arg("weight"), py::arg("dh"), py::arg("dweight"), py::arg("rows"), py::arg("cols"), py::arg("gemma"),
          py::arg("threads"), "RMSNorm's backward: dh (of the normalised rows h) and dweight.");
    m.def("cross_entropy_forward", &cross_entropy_forward, py::arg("logits"), py::arg("labels"), py::arg("lse"),
          py::arg("loss"), py::arg("rows"), py::arg("vocab"), py::arg("ignore_index"), py::arg("threads"),
          "Per-row logsumexp and cross-entropy of contiguous fp32 logits [rows, vocab], int64 labels [rows].");
    m.def("cross_entropy_backward", &cross_entropy_backward, py::arg("logits"), py::arg("labels"), py::arg("lse"),
          py::arg("grad"), py::arg("rows"), py::arg("vocab"), py::arg("ignore_index"), py::arg("threads"),
          "Writes the logits' gradient over the logits, for per-row loss gradients grad [rows].");
    m.def("rope", &rope, py::arg("x"), py::arg("out"), py::arg("cos"), py::arg("sin"), py::arg("batch"), py::arg("seq"),
          py::arg("heads"), py::arg("half"), py::arg("table_batch_stride"), py::arg("inverse"), py::arg("threads"),
          "Rotary embedding of contiguous fp32 [batch, seq, heads, 2 * half] (half-split layout) into out.");
}

}  // namespace pytrain
