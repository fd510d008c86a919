"""Where a measurement was taken: host, CPU, OS, packages, slmbench commit.

Rows carry this so that results from different machines are never silently merged, and a
regression gate can refuse to compare across hardware or package versions.
"""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

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

    from slmbench.hugepages import thp_mode

    try:
        affinity = len(os.sched_getaffinity(0))
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
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": _versions(),
        "slmbench_commit": _git_commit(),
    }


def hardware_fingerprint(env: dict) -> dict:
    """The fields that must match for two measurements to be compared as like with like."""
    packages = {k: v for k, v in env.get("packages", {}).items() if k != "slmbench"}
    return {"cpu": env.get("cpu"), "cpu_flags": env.get("cpu_flags"), "physical_cores": env.get("physical_cores"),
            "logical_cores": env.get("logical_cores"), "packages": packages}
