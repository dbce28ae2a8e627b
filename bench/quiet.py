"""Is the machine quiet enough for a timing to mean something?

Contention flatters JAX against PyTorch (PyTorch's OpenMP threads slow down 5-10x when another job competes for the
cores), so CPU benchmarks here refuse to start on a busy machine and say afterwards whether it stayed quiet.

The load average cannot answer the second question: a benchmark that keeps both cores of a 2-core box busy raises
it to ~2 by itself. `ForeignCpu` instead measures the CPU time *other* processes used during the run: the busy time
of the whole machine (/proc/stat) minus the CPU time of this process and of the worker processes it names
(/proc/<pid>/stat). Linux only; elsewhere `fraction` is None and only the start check applies.
"""

from __future__ import annotations

import os
import resource
import time

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (user + nice + system + irq + softirq + steal)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _TICK


def _process_seconds(pid: int) -> float:
    """utime + stime of a live process (0 when it is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _self_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class ForeignCpu:
    """CPU time used by processes other than this one and `workers` between `start()` and `stop()`.

    `fraction` = foreign CPU seconds / (wall seconds x cores): 0 on a quiet machine, 1 when another job kept every
    core busy the whole time. Worker pids must stay alive until `stop()` (a dead worker's time would count as
    foreign)."""

    def __init__(self, workers: tuple[int, ...] = ()) -> None:
        self.workers = workers
        self.fraction: float | None = None

    def _own(self) -> float:
        return _self_seconds() + sum(_process_seconds(p) for p in self.workers)

    def start(self) -> ForeignCpu:
        self._t0, self._busy0, self._own0 = time.perf_counter(), _machine_busy_seconds(), self._own()
        return self

    def stop(self) -> float | None:
        busy = _machine_busy_seconds()
        if busy is None or self._busy0 is None:
            return None
        wall = time.perf_counter() - self._t0
        foreign = (busy - self._busy0) - (self._own() - self._own0)
        self.fraction = max(0.0, foreign) / (wall * (os.cpu_count() or 1))
        return self.fraction


def refuse_if_busy(max_load: float, ignore: bool) -> float:
    """The 1-minute load average; raises SystemExit with a one-line reason when it is above `max_load`."""
    load = os.getloadavg()[0]
    if load > max_load and not ignore:
        raise SystemExit(
            f"refusing to run: 1-minute load average {load:.2f} > {max_load} (contention flatters JAX). "
            "Wait for a quiet machine, or pass --ignore-load to check the script (results are then INVALID)."
        )
    return load
