"""One sweep configuration in its own process: `python -m slmbench.sweep.worker JOB.json`.

The parent (slmbench.sweep.run) owns the results file. This process measures, then writes its
complete rows, or the error that stopped it, to the job's `out` file in one atomic rename, so a
crash, hang or kill can never leave a partial row anywhere. Progress goes to stdout as
`@progress <model> <repetitions>` lines, its own log as `@log ...` lines; anything else there is
the runtime's (kept as the likely cause of a crash).

Fault injection for tests of the sweep's robustness: SLMBENCH_INJECT_FAULT="kind@pattern;..."
where kind is crash (abort), segfault, hang (never returns: exercises the timeout), oom
(allocates until the memory limit stops it; refused without a limit) or error, and pattern is a
substring of one of the configuration's keys. The fault fires after the first measured
repetition, i.e. mid-measurement, when a real fault would.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

INJECT_ENV = "SLMBENCH_INJECT_FAULT"
FAULT_KINDS = ("crash", "segfault", "hang", "oom", "error")
EXIT_FAILED = 3  # the configuration failed and said why in its out file


def set_memory_limit(gib: float | None) -> None:
    """Cap this process's address space so that running out of memory is this configuration's
    failure (a MemoryError or an allocation failure), not the machine's."""
    if not gib:
        return
    limit = int(gib * 2**30)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def planned_fault(keys: list[str], spec: str | None) -> str | None:
    """The fault to inject into this configuration, if the spec names one of its keys."""
    for entry in filter(None, (spec or "").split(";")):
        kind, _, pattern = entry.partition("@")
        if kind not in FAULT_KINDS:
            raise ValueError(f"{INJECT_ENV}: unknown fault {kind!r}; choose from {', '.join(FAULT_KINDS)}")
        if any(pattern in key for key in keys):
            return kind
    return None


def inject(kind: str, memory_limited: bool) -> None:
    if kind == "crash":
        os.abort()
    if kind == "segfault":
        import ctypes

        ctypes.string_at(0)
    if kind == "hang":
        while True:  # a hang, deliberately: only the parent's timeout ends it
            time.sleep(3600)
    if kind == "oom":
        if not memory_limited:
            raise RuntimeError("refusing to inject an out-of-memory fault without a memory limit")
        hog = []
        while True:
            hog.append(bytearray(64 << 20))
    if kind == "error":
        raise RuntimeError("injected error")


# What running out of memory says, in the words of Python, C++ runtimes and the dynamic loader (a
# shared library that cannot be mapped under the address-space limit: "failed to map segment").
OOM_WORDS = ("bad_alloc", "bad allocation", "memoryerror", "out of memory", "memory allocation",
             "cannot allocate memory", "failed to allocate", "failed to map segment")


def is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or any(s in text for s in OOM_WORDS)


def run_job(job: dict) -> list[dict]:
    from slmbench.config import RunConfig
    from slmbench.core.benchmark import run_benchmark
    from slmbench.runners import select_runner

    runs = [RunConfig.from_dict(r) for r in job["runs"]]
    fault = planned_fault([r.key for r in runs], os.environ.get(INJECT_ENV))
    for run in runs:
        select_runner(run.device, run.runtime)  # a clear error before any export

    def progress(label, done):
        print(f"@progress {label} {done}", flush=True)
        if fault:
            inject(fault, bool(job.get("memory_limit_gb")))

    return run_benchmark(runs, results=None, cache_dir=job.get("cache_dir"),
                         log=lambda msg: print(f"@log {msg}", flush=True), progress=progress)


def write_outcome(out: Path, outcome: dict) -> None:
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(outcome, allow_nan=False))
    os.replace(tmp, out)


def die_with_parent(parent: int | None) -> None:
    """Linux: SIGKILL this process when the sweep that started it (pid `parent`) dies, even by
    SIGKILL (seen: a hanging worker still running 22 minutes after its sweep was killed)."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent and os.getppid() != parent:  # the parent died before the call took effect
        os._exit(EXIT_FAILED)


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[1]).read_text())
    die_with_parent(job.get("parent"))
    out = Path(job["out"])
    set_memory_limit(job.get("memory_limit_gb"))
    try:
        rows = run_job(job)
    except MemoryError:
        write_outcome(
            out,
            {
                "status": "failed",
                "kind": "oom",
                "error": f"out of memory: exceeded the {job.get('memory_limit_gb')} GiB memory limit "
                "(MemoryError)",
            },
        )
        return EXIT_FAILED
    except Exception as exc:  # every failure becomes a failed row with its cause
        oom = is_out_of_memory(exc)
        msg = " ".join(str(exc).split()) or type(exc).__name__
        write_outcome(
            out,
            {
                "status": "failed",
                "kind": "oom" if oom else "error",
                "error": f"{'out of memory: ' if oom else ''}{type(exc).__name__}: {msg}"[:2000],
            },
        )
        return EXIT_FAILED
    write_outcome(out, {"status": "ok", "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
