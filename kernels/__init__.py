"""Triton kernels, installed as `pytrain.kernels`: one module per op.

Importing this package requires triton; `pytrain.ops` imports it only for CUDA tensors. Each custom op's
body is a plain `launch_*` function, so benchmarks/aot_check.py runs the real launch code on meta tensors.
"""
