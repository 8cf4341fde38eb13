"""CPU training keeps its threads on the cores other processes leave idle, and says so once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from pytrain.train import cpu_threads


class _Clock:
    """A fake machine: `others` cores busy with other processes, `own` cores used by us, per second."""

    def __init__(self, cpus: int, monkeypatch):
        self.t, self.busy_s, self.own_s, self.cpus = 0.0, 0.0, 0.0, cpus
        monkeypatch.setattr(cpu_threads, "_cpu_jiffies",
                            lambda cpus: (round(self.busy_s * 100), round((self.t * len(cpus)) * 100)))
        monkeypatch.setattr(cpu_threads.time, "monotonic", lambda: self.t)
        monkeypatch.setattr(cpu_threads.os, "times", lambda: os.times_result((self.own_s, 0, 0, 0, self.t)))
        monkeypatch.setattr(cpu_threads.os, "sysconf", lambda name: 100)
        monkeypatch.setattr(cpu_threads.os, "sched_getaffinity", lambda pid: set(range(cpus)))

    def run(self, seconds: float, others: float, own: float) -> None:
        self.t += seconds
        self.busy_s += (others + own) * seconds
        self.own_s += own * seconds


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_follow_the_idle_cores(monkeypatch, threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    clock = _Clock(4, monkeypatch)
    control = cpu_threads.CpuThreads()
    clock.run(2.0, others=0.2, own=3.8)  # a quiet machine: all four cores
    assert control.adjust() is None and torch.get_num_threads() == 4
    clock.run(2.0, others=2.0, own=2.0)  # a neighbour takes two cores
    note = control.adjust()
    assert "other processes keep 2.0 of 4 cores busy" in note and torch.get_num_threads() == 2
    clock.run(2.0, others=3.0, own=1.0)
    assert control.adjust() is None and torch.get_num_threads() == 1  # said once, still adjusted
    clock.run(2.0, others=0.0, own=1.0)  # the neighbour left
    assert control.adjust() is None and torch.get_num_threads() == 4


def test_measured_over_half_a_second_at_least(monkeypatch, threads):
    """Logging every few milliseconds does not read /proc/stat each time: the load is measured over windows
    of at least MIN_INTERVAL_S, the shorter calls changing nothing."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    clock = _Clock(4, monkeypatch)
    reads, jiffies = [], cpu_threads._cpu_jiffies
    monkeypatch.setattr(cpu_threads, "_cpu_jiffies", lambda cpus: reads.append(1) or jiffies(cpus))
    control = cpu_threads.CpuThreads()
    torch.set_num_threads(4)
    for _ in range(4):
        clock.run(0.1, others=2.0, own=2.0)
        assert control.adjust() is None and torch.get_num_threads() == 4
    assert len(reads) == 1  # at the start only
    clock.run(0.1, others=2.0, own=2.0)  # 0.5 s since the start: measured over the whole window
    assert "other processes keep 2.0 of 4 cores busy" in control.adjust() and torch.get_num_threads() == 2
    assert len(reads) == 2


def test_two_local_ranks_share_the_idle_cores(monkeypatch, threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    clock = _Clock(4, monkeypatch)
    control = cpu_threads.CpuThreads(ranks_here=2)
    clock.run(1.0, others=0.0, own=2.0)  # our own two ranks use all four cores: not "others"
    assert control.adjust() is None and torch.get_num_threads() == 2
    clock.run(1.0, others=3.0, own=0.5)  # 2.5 cores taken by others: 1.5 left for two ranks
    assert control.adjust() and torch.get_num_threads() == 1


def test_omp_num_threads_is_kept_and_the_note_says_so(monkeypatch, threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    torch.set_num_threads(3)
    clock = _Clock(4, monkeypatch)
    control = cpu_threads.CpuThreads()
    clock.run(1.0, others=2.5, own=1.5)
    assert "keeps OMP_NUM_THREADS=3 as set" in control.adjust() and torch.get_num_threads() == 3


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat")
def test_a_real_busy_neighbour_is_measured():
    """Against the real counters: a spinning neighbour pinned to our first core counts as about one core."""
    cpu = min(os.sched_getaffinity(0))
    spinner = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os
        os.sched_setaffinity(0, {{{cpu}}})
        while True:
            pass
        """)])
    try:
        control = cpu_threads.CpuThreads()
        control.others_busy()
        import time

        time.sleep(1.0)
        assert 0.4 < control.others_busy() < len(control.cpus) + 0.1
    finally:
        spinner.kill()
        spinner.wait()
