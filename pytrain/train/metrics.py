"""Throughput and model FLOPs utilisation (MFU).

MFU = achieved model FLOPs per second per device / the device's peak. Model FLOPs per token come from
`ModelConfig.flops_per_token` (6N + attention); activation recomputation is not counted, as in the PaLM
definition. The peak is the dense bf16 tensor-core figure from the vendor's datasheet, looked up by
device name, or `logging.peak_tflops` when set; the trainer logs which one it used.
"""

from __future__ import annotations

import resource
import sys
import time

import torch

# Dense (no sparsity) bf16 TFLOPS per device, from NVIDIA/AMD datasheets. Matched in order against
# torch.cuda.get_device_name(), so specific names come before general ones.
PEAK_BF16_TFLOPS: list[tuple[tuple[str, ...], float]] = [
    (("GB200",), 2500.0),
    (("B200",), 2250.0),
    (("H200",), 989.4),
    (("H100", "PCIE"), 756.0),
    (("H100", "NVL"), 835.0),
    (("H100",), 989.4),          # SXM
    (("H800",), 989.4),
    (("H20",), 148.0),
    (("A100",), 312.0),
    (("A800",), 312.0),
    (("L40S",), 362.1),
    (("L40",), 181.0),
    (("L4",), 121.0),
    (("RTX 4090",), 165.2),
    (("V100",), 125.0),          # fp16 (V100 has no bf16)
    (("MI300X",), 1307.4),
    (("MI250X",), 383.0),
]


def peak_tflops_for(device_name: str) -> float | None:
    """The table's dense bf16 peak for a CUDA device name, or None when it is not in the table."""
    upper = device_name.upper()
    for keys, tflops in PEAK_BF16_TFLOPS:
        if all(key in upper for key in keys):
            return tflops
    return None


def device_peak_tflops(device: torch.device, override: float | None = None) -> tuple[float | None, str]:
    """(peak TFLOPS per device or None when unknown, a description of where the figure came from)."""
    if override:
        return float(override), f"{override:g} TFLOPS (logging.peak_tflops)"
    if device.type != "cuda":
        return None, f"unknown for {device.type} (set logging.peak_tflops to report MFU)"
    name = torch.cuda.get_device_name(device)
    tflops = peak_tflops_for(name)
    if tflops is None:
        return None, f"unknown for {name} (set logging.peak_tflops to report MFU)"
    return tflops, f"{tflops:g} TFLOPS bf16 dense ({name}, from the datasheet table)"


def mfu(tokens_per_s_per_device: float, flops_per_token: float, peak_tflops: float | None) -> float | None:
    if not peak_tflops:
        return None
    return tokens_per_s_per_device * flops_per_token / (peak_tflops * 1e12)


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory since the last reset: CUDA allocator peak, or the process's max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


class ThroughputWindow:
    """Tokens and time since the last logged step. Throughput and MFU count training steps only (each
    step syncs on its loss, so device time counts); the wall time also counts evaluation, samples and
    saves (for the ETA). Restarting also resets the peak-memory counter."""

    def __init__(self, device: torch.device):
        self.device = device
        self.restart()

    def restart(self) -> None:
        self.started, self.tokens, self.train_s = time.perf_counter(), 0, 0.0
        reset_peak_memory(self.device)

    def add(self, tokens: int, train_s: float) -> None:
        self.tokens += tokens
        self.train_s += train_s

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self.started

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.train_s, 1e-9)
