"""CPU training that degrades gracefully when other processes share the cores.

torch's OpenMP workers spin at every barrier: with one worker per core and a busy neighbour, a worker
waits for a descheduled sibling and a run slows down 10-15x (measured: 968 vs 15.5k tokens/s on two
cores). So, unless the user fixed OMP_NUM_THREADS, the trainer keeps its intra-op threads at the cores
the other processes leave idle: measured at start and re-measured at logging steps, at most twice a
second (from the per-CPU counters of /proc/stat, minus this process's own CPU time), and says once when
the machine is oversubscribed. Different thread counts may change results in the last bits: set OMP_NUM_THREADS
for bit-reproducible CPU runs.
"""

from __future__ import annotations

import os
import time

import torch

MIN_INTERVAL_S = 0.5  # logging every step of a small model would otherwise read /proc/stat every few ms


def _cpu_jiffies(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) jiffies over `cpus` from /proc/stat, or None where it is not readable (not Linux)."""
    busy = total = 0
    try:
        with open("/proc/stat") as handle:
            for line in handle:
                name, *values = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                    numbers = [int(v) for v in values[:8]]
                    idle = numbers[3] + numbers[4]  # idle + iowait
                    total += sum(numbers)
                    busy += sum(numbers) - idle
    except (OSError, ValueError, IndexError):
        return None
    return busy, total


class CpuThreads:
    """Chooses torch's intra-op thread count for `ranks_here` CPU training processes on this machine."""

    def __init__(self, ranks_here: int = 1):
        self.cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
        self.fixed_by_user = "OMP_NUM_THREADS" in os.environ
        self.share = max(1, len(self.cpus) // max(1, ranks_here))
        self.ranks_here = max(1, ranks_here)
        self.warned = False
        self._last = self._sample()

    def _sample(self):
        own = os.times()
        return _cpu_jiffies(self.cpus), own.user + own.system, time.monotonic()

    def others_busy(self) -> float | None:
        """Cores used by other processes since the last measurement (our own ranks count as one share each);
        None sooner than MIN_INTERVAL_S after it (too short to tell, and /proc/stat is not read again)."""
        last_jiffies, last_own_s, last_now = self._last
        if time.monotonic() - last_now < MIN_INTERVAL_S:
            return None
        jiffies, own_s, now = self._last = self._sample()
        if jiffies is None or last_jiffies is None:
            return None
        hz = os.sysconf("SC_CLK_TCK")
        busy_cores = (jiffies[0] - last_jiffies[0]) / hz / (now - last_now)
        own_cores = (own_s - last_own_s) / (now - last_now) * self.ranks_here
        return max(0.0, busy_cores - own_cores)

    def adjust(self) -> str | None:
        """Set the thread count from the load since the last call; a message the first time the machine
        is found oversubscribed (None otherwise)."""
        others = self.others_busy()
        if others is None:
            return None
        free = len(self.cpus) - others
        oversubscribed = others >= 0.5
        message = None
        if self.fixed_by_user and torch.get_num_threads() * self.ranks_here <= round(free):
            oversubscribed = False  # the threads the user fixed fit in the idle cores: nothing to say
        if oversubscribed and not self.warned:
            self.warned = True
            if self.fixed_by_user:
                message = (f"note: other processes keep {others:.1f} of {len(self.cpus)} cores busy; training keeps "
                           f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} as set and may run much slower")
            else:
                message = (f"note: other processes keep {others:.1f} of {len(self.cpus)} cores busy; training uses "
                           "the idle cores only (re-checked as it logs, at most twice a second; OMP_NUM_THREADS "
                           "fixes it)")
        if not self.fixed_by_user:
            threads = max(1, min(self.share, round(free / self.ranks_here)))
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)
        return message
