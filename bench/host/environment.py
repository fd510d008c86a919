"""Where a measurement was taken: the machine's identity, and the environment it is made of.

Every row carries `environment` (host, CPU model and flags, cores, allowed CPUs, memory, kernel,
transparent-huge-page mode, Python and package versions, slmbench commit) and `machine`
(`machine_identity`): a fingerprint of every field that can move a latency, plus a short readable
name that differs whenever the fingerprints do. Two VMs may share a hostname (`vm`) and still be
different machines; resume, report and `compare` match on the fingerprint, never on the host.
The slmbench commit is not part of it: a code change is what a benchmark measures, not a machine.

SLMBENCH_MACHINE_LABEL, when set, is an operator's label that joins the fingerprint: for measuring
nodes that would otherwise read as one machine, such as two Ray nodes of a farm started on one host
(slmbench.sweep.farm; its test runs two on one VM). Unset, every identity is what it always was.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

LABEL_ENV = "SLMBENCH_MACHINE_LABEL"
PACKAGES = ("slmbench", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "nncf", "transformers",
            "numpy")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c"))
    except OSError:
        pass
    return []


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) if commit else None


def _versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


@functools.cache
def environment() -> dict:
    import psutil

    from slmbench.host.hugepages import thp_mode

    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "host": socket.gethostname(),
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "cpus_allowed": affinity,
        "memory_bytes": psutil.virtual_memory().total,
        "transparent_hugepages": thp_mode(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": _versions(),
        "slmbench_commit": _git_commit(),
        **({"machine_label": label} if (label := os.environ.get(LABEL_ENV, "").strip()) else {}),
    }


# What identifies a machine: everything here can move a latency or a ratio (measured: same-run
# ratios moved up to 20% between two VMs both named `vm`, bandwidth by 2x).
IDENTITY_FIELDS = ("host", "cpu", "cpu_flags", "physical_cores", "logical_cores", "cpus_allowed", "memory_bytes",
                   "kernel", "transparent_hugepages", "python", "packages")


def fingerprint(env: dict) -> dict:
    """The identity fields of an environment (packages without slmbench itself; memory in MiB, as a
    VM reports its total to the page)."""
    env = env or {}
    out = {k: env.get(k) for k in IDENTITY_FIELDS}
    out["packages"] = {k: v for k, v in (env.get("packages") or {}).items() if k != "slmbench"}
    if out["memory_bytes"] is not None:
        out["memory_bytes"] = int(out["memory_bytes"]) >> 20 << 20
    if env.get("machine_label"):  # only when set, so that unlabelled identities never change
        out["machine_label"] = env["machine_label"]
    return out


def _cpu_short(cpu: str | None) -> str:
    """'Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz' -> 'xeon', 'AMD EPYC 9B14' -> 'epyc'."""
    words = [w for w in (cpu or "").replace("(R)", " ").replace("(TM)", " ").split()
             if w.lower() not in ("intel", "amd", "cpu", "processor", "genuine", "core")]
    return (words[0].lower() if words else "cpu")[:12]


def machine_identity(env: dict) -> dict:
    """{"id": sha256 of the fingerprint (16 hex), "name": 'host-cpu-abcdef'}; the name carries the
    id's first six digits, so two machines never share a name even when host and CPU do."""
    digest = hashlib.sha256(json.dumps(fingerprint(env), sort_keys=True).encode()).hexdigest()[:16]
    env = env or {}
    named = str(env.get("host") or "unknown") + (f".{env['machine_label']}" if env.get("machine_label") else "")
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in named)
    return {"id": digest, "name": f"{host[:24]}-{_cpu_short(env.get('cpu'))}-{digest[:6]}"}


def this_machine() -> dict:
    return machine_identity(environment())


def machine_of(row: dict) -> dict:
    """A row's machine identity: recorded in the row (schema 2), else computed from its environment
    (schema-1 rows, attributed to their own machine)."""
    return row.get("machine") or machine_identity(row.get("environment") or {})
