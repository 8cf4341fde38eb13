"""Triton kernels, installed as `pytrain.kernels`: one module per op.

Importing this package requires triton; `pytrain.ops` imports it only for CUDA tensors.
"""
