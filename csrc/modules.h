// One registration function per source file; bindings.cpp calls them all.
#pragma once

#include <pybind11/pybind11.h>

namespace pytrain {

void bind_line_index(pybind11::module_& m);
void bind_json_extract(pybind11::module_& m);
void bind_tokens(pybind11::module_& m);
void bind_blend_index(pybind11::module_& m);
void bind_bpe(pybind11::module_& m);
void bind_sentencepiece_bpe(pybind11::module_& m);
void bind_ready_ids(pybind11::module_& m);
void bind_writeback(pybind11::module_& m);
void bind_cpu_ops(pybind11::module_& m);

}  // namespace pytrain
