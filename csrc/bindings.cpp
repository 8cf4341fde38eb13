// pybind11 entry point for pytrain._native; each csrc/*.cpp registers its own functions.
#include "modules.h"

PYBIND11_MODULE(_native, m) {
    m.doc() = "pytrain native core: JSONL line indexer, JSON field extractor, token writer, blending index and keyed permutation, byte-level and SentencePiece-style BPE encoders, fused CPU kernels for SwiGLU, RMSNorm and RoPE";
    pytrain::bind_line_index(m);
    pytrain::bind_json_extract(m);
    pytrain::bind_tokens(m);
    pytrain::bind_blend_index(m);
    pytrain::bind_bpe(m);
    pytrain::bind_sentencepiece_bpe(m);
    pytrain::bind_ready_ids(m);
    pytrain::bind_writeback(m);
    pytrain::bind_cpu_ops(m);
}
