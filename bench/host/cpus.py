"""The CPUs this process may use, and the runtime threads a run defaults to."""

from __future__ import annotations


def allowed_cpus() -> int | None:
    """How many CPUs this process may run on (its affinity mask), None where the OS has no masks."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return None


def default_threads() -> int:
    """Runtime threads when the user gives none: the physical cores (hyper-threads slow GEMMs), no
    more than the CPUs this process may run on (`taskset -c 0` means one thread, not two)."""
    import psutil

    physical = psutil.cpu_count(logical=False) or 1
    allowed = allowed_cpus()
    return max(1, min(physical, allowed)) if allowed else physical
