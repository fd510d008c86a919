"""Contention as a measured fact: how much of the CPU others took while we measured.

A busy machine slows every repetition alike, so a coefficient of variation cannot see it (seen: a
torch run of the tiny pair under a load average in the hundreds recorded TPOT 98.9 ms with CV 0.01,
2.0 ms quiet). What can see it is the kernel's accounting: the CPU time all processes used (/proc/stat)
minus our own (getrusage), against the wall time x the CPUs we may use; the hypervisor's steal time;
our involuntary context switches. Snapshots are taken around each repetition, outside its timed path
(a few syscalls), and summed per subject.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from slmbench.errors import BenchError

BUSY_FRACTION = 0.10  # others took more than 10% of the allowed CPUs' time: the run competed
STEAL_FRACTION = 0.05
QUIET_WAIT_S = 60.0  # how long --require-quiet waits for a quiet machine
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class MachineBusy(BenchError):
    """--require-quiet, and the machine is not quiet."""


@dataclass(frozen=True)
class Snapshot:
    wall_ns: int
    own_cpu_s: float  # this process, every thread
    involuntary: int  # this process's involuntary context switches
    busy_s: float | None  # every process on the machine (/proc/stat: user..softirq), None off Linux
    steal_s: float | None

    @classmethod
    def now(cls) -> Snapshot:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        busy = steal = None
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            busy, steal = sum(fields[:3] + fields[5:7]) / _TICK, (fields[7] / _TICK if len(fields) > 7 else 0.0)
        except (OSError, ValueError, IndexError):
            pass
        return cls(time.perf_counter_ns(), usage.ru_utime + usage.ru_stime, usage.ru_nivcsw, busy, steal)


def _cpus() -> int:
    from slmbench.host.cpus import allowed_cpus

    return allowed_cpus() or os.cpu_count() or 1


@dataclass
class Tally:
    """Sums over one subject's repetitions. Others' time is taken from the sums, not per repetition:
    /proc/stat counts in clock ticks (10 ms), coarser than a tiny model's repetition."""

    wall_s: float = 0.0
    own_cpu_s: float = 0.0
    busy_s: float | None = 0.0  # every process, over the repetitions
    steal_s: float | None = 0.0
    involuntary_switches: int = 0

    def add(self, before: Snapshot, after: Snapshot) -> None:
        self.wall_s += (after.wall_ns - before.wall_ns) * 1e-9
        self.own_cpu_s += after.own_cpu_s - before.own_cpu_s
        self.involuntary_switches += after.involuntary - before.involuntary
        if before.busy_s is None or after.busy_s is None or self.busy_s is None:
            self.busy_s = self.steal_s = None
            return
        self.busy_s += after.busy_s - before.busy_s
        self.steal_s += after.steal_s - before.steal_s

    def summary(self) -> dict:
        """What a row records, with the fractions of the allowed CPUs' time."""
        capacity = self.wall_s * _cpus()
        others = None if self.busy_s is None else max(0.0, self.busy_s - self.own_cpu_s)
        out = {"wall_s": self.wall_s, "own_cpu_s": self.own_cpu_s, "others_cpu_s": others,
               "steal_s": self.steal_s, "involuntary_switches": self.involuntary_switches, "cpus": _cpus(),
               "others_fraction": None, "steal_fraction": None,
               "method": "/proc/stat busy time minus getrusage(RUSAGE_SELF), summed over the repetitions"}
        if capacity > 0 and others is not None:
            out["others_fraction"] = others / capacity
            out["steal_fraction"] = self.steal_s / capacity
        return out


def warning(summary: dict) -> str | None:
    """The warning a row must carry when its repetitions competed for the CPU, else None."""
    others, steal = summary.get("others_fraction"), summary.get("steal_fraction")
    if others is None:
        return None
    if others > BUSY_FRACTION or steal > STEAL_FRACTION:
        return (f"competed for the CPU: other processes used {100 * others:.0f}% and the hypervisor stole "
                f"{100 * steal:.0f}% of the {summary['cpus']} allowed CPUs' time during the repetitions; "
                "absolute times are not this machine's quiet speed")
    return None


def wait_until_quiet(max_wait_s: float | None = None, window_s: float = 1.0, log=print) -> dict:
    """Sample the machine until others use at most BUSY_FRACTION of the allowed CPUs for a window;
    MachineBusy after max_wait_s (what --require-quiet does before measuring)."""
    max_wait_s = QUIET_WAIT_S if max_wait_s is None else max_wait_s
    deadline = time.monotonic() + max_wait_s
    while True:
        tally, before = Tally(), Snapshot.now()
        time.sleep(window_s)
        tally.add(before, Snapshot.now())
        summary = tally.summary()
        if warning(summary) is None:
            return summary
        if time.monotonic() > deadline:
            raise MachineBusy(f"the machine is busy: other processes use {100 * summary['others_fraction']:.0f}% of "
                              f"the {summary['cpus']} allowed CPUs (waited {max_wait_s:g}s for it to be quiet); "
                              "--require-quiet refuses to measure")
        log(f"waiting for a quiet machine: others use {100 * summary['others_fraction']:.0f}% of the CPUs")
