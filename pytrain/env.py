"""`pytrain env`: what this machine gives pytrain, and which kernels training will use (and why not, when not).

The kernel rule is pytrain.ops's "auto" backend: the Triton kernel for CUDA tensors, the PyTorch reference
for CPU tensors. So the answer depends on whether there is a CUDA device and whether Triton (and our
`pytrain.kernels`) import; a CUDA machine without a working Triton is reported as a problem, since the
auto backend would pick kernels that cannot load (train.kernels=torch avoids them).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import sys

import torch

from pytrain import __version__, _source_tree

OPS = ("rms_norm", "apply_rope", "linear_cross_entropy")
OPTIONAL = ("tokenizers", "numpy", "datasets", "safetensors", "transformers", "matplotlib", "tensorboard", "wandb")


def _try_import(name: str):
    """(module, None) or (None, a one-line reason)."""
    try:
        return importlib.import_module(name), None
    except Exception as error:  # ImportError, or a broken install raising anything at import
        return None, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def report() -> list[tuple[str, str]]:
    """(key, value) lines describing the environment."""
    lines = [
        ("pytrain", f"{__version__} ({os.path.dirname(os.path.abspath(__file__))})"),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", platform.platform()),
        ("cpu", f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores usable, "
                f"torch uses {torch.get_num_threads()} threads"),
        ("torch", f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})"),
    ]
    cuda = torch.cuda.is_available()
    if cuda:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append((f"gpu {i}", f"{p.name}, compute capability {p.major}.{p.minor}, "
                                      f"{p.total_memory / 2**30:.1f} GiB"))
        lines.append(("bf16", "supported" if torch.cuda.is_bf16_supported() else "not supported on this GPU"))
    else:
        lines.append(("gpu", "none (torch.cuda.is_available() is False): training runs on the CPU in fp32"))
    distributed = [name for name, ok in (("nccl", torch.distributed.is_nccl_available()),
                                         ("gloo", torch.distributed.is_gloo_available())) if ok]
    lines.append(("distributed", ", ".join(distributed) or "no backend"))

    triton, triton_error = _try_import("triton")
    lines.append(("triton", triton.__version__ if triton else f"unavailable ({triton_error})"))
    native, native_error = _try_import("pytrain._native")
    lines.append(("native extension", native.__file__ if native else _native_problem(native_error)))
    kernels, kernels_error = _try_import("pytrain.kernels") if triton else (None, "triton is not importable")
    lines.append(("kernels", _kernel_choice(cuda, kernels is not None, kernels_error)))
    if os.environ.get("TRITON_INTERPRET") == "1":
        lines.append(("TRITON_INTERPRET", "1: forced Triton kernels run through the interpreter on CPU (tests only)"))
    for package in OPTIONAL:
        lines.append((package, _version(package)))
    return lines


def _native_problem(error: str) -> str:
    """The import error says what to run when this is a source checkout; an installed copy lacks its build."""
    if _source_tree.is_source_checkout():
        return f"unavailable: {error.split(': ', 1)[-1]}"
    return f"unavailable ({error}): this installed pytrain lacks its build; reinstall it with `pip install .`"


def _kernel_choice(cuda: bool, kernels_ok: bool, kernels_error: str | None) -> str:
    ops = ", ".join(OPS)
    if cuda and kernels_ok:
        return f"Triton kernels for {ops} (CUDA tensors select them)"
    if cuda:
        return (f"PROBLEM: CUDA tensors select the Triton kernels but they cannot load ({kernels_error}); "
                "install triton or set train.kernels=torch")
    return f"PyTorch references for {ops}: no CUDA device (Triton kernels run on CUDA tensors only)"


def print_report() -> None:
    lines = report()
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
