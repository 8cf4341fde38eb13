"""A one-line progress bar for long-running commands: on a terminal only, at most 5 redraws/s."""

from __future__ import annotations

import sys
import time


def human(n: float, unit: str = "") -> str:
    for suffix in ("", "k", "M", "G", "T"):
        if abs(n) < 1000 or suffix == "T":
            return f"{n:.0f}{suffix}{unit}" if suffix == "" else f"{n:.2f}{suffix}{unit}"
        n /= 1000
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def bar(fraction: float, width: int) -> str:
    """`[#####.....]  42%`: the one bar drawing pack's progress and the trainer's."""
    fraction = min(1.0, max(0.0, fraction))
    filled = int(fraction * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%}"


class ProgressBar:
    """`update(done_bytes, docs, tokens)` redraws `[####....] 42% docs tokens MB/s ETA` on stderr."""

    def __init__(self, total_bytes: int, enabled: bool | None = None, stream=sys.stderr, width: int = 24):
        self.total = max(1, total_bytes)
        self.enabled = stream.isatty() if enabled is None else enabled
        self.stream = stream
        self.width = width
        self.start = time.perf_counter()
        self.last_draw = 0.0

    def update(self, done_bytes: int, docs: int, tokens: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self.last_draw < 0.2:
            return
        self.last_draw = now
        elapsed = max(now - self.start, 1e-9)
        rate = done_bytes / elapsed
        eta = (self.total - done_bytes) / rate if rate > 0 else 0.0
        self.stream.write(f"\r{bar(done_bytes / self.total, self.width)} "
                          f"{human(docs)} docs {human(tokens)} tok {rate / 1e6:6.1f} MB/s ETA {duration(eta)}  ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
