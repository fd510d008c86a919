"""CUDA device facts shared by the CUDA runners: presence, and provenance for result rows.

Three independent sources, each recorded under its own key so a row says where a number came
from: nvidia-smi (GPU name, driver version, memory; a process's device memory), the driver API through ctypes (the CUDA
version the driver supports), and the runtime's own build (torch's or ONNX Runtime's CUDA
version). torch is consulted only where the caller already imported it, so the ONNX Runtime
runner never pays for importing torch or creating a second CUDA context.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys


def _smi(query: str, kind: str = "gpu") -> list[str]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, f"--query-{kind}={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def cuda_absent_reason() -> str:
    """Empty when a CUDA GPU is visible; otherwise one line saying why not."""
    if _smi("name"):
        return ""
    return ("no CUDA GPU: nvidia-smi is missing or lists no GPU "
            "(install the NVIDIA driver, or use --device cpu)")


def process_device_memory(pid: int | None = None) -> int | None:
    """The device memory process `pid` (this one by default) holds on every GPU, as NVML reports it
    through nvidia-smi: its CUDA context, weights, caches and the runtime's allocator pool. None
    where nvidia-smi lists no such process (no CUDA context yet, or a container hiding host PIDs)."""
    pid = os.getpid() if pid is None else pid
    total, seen = 0, False
    for line in _smi("pid,used_memory", kind="compute-apps"):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid):
            try:
                total += int(float(parts[1])) * 1024 * 1024  # nounits: MiB
                seen = True
            except ValueError:
                continue
    return total if seen else None


def driver_cuda_version() -> str | None:
    """The CUDA version the installed driver supports (cuDriverGetVersion), e.g. '12.8'."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(version)) != 0 or version.value <= 0:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def smi_rows() -> list[dict]:
    """One dict per GPU as nvidia-smi lists them (uuid, name, driver version, total memory in bytes)."""
    rows = []
    for line in _smi("uuid,name,driver_version,memory.total"):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4:
            continue
        uuid, name, driver, memory = parts[0], ",".join(parts[1:-2]), parts[-2], parts[-1]
        try:
            memory_bytes = int(float(memory)) * 1024 * 1024  # nounits: MiB
        except ValueError:
            memory_bytes = None
        rows.append({"uuid": uuid, "gpu_name": name, "driver_version": driver,
                     "gpu_memory_bytes": memory_bytes})
    return rows


def torch_device_info(index: int = 0) -> dict:
    """What torch says about its CUDA device `index` (empty unless torch is imported and sees it)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return {}
    props = torch.cuda.get_device_properties(index)
    info = {"device_index": index, "gpu_name": props.name, "gpu_memory_bytes": int(props.total_memory),
            "compute_capability": f"{props.major}.{props.minor}",
            "multiprocessors": getattr(props, "multi_processor_count", None),
            "torch_cuda_runtime": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        info["uuid"] = "GPU-" + str(uuid).removeprefix("GPU-")
    return info


def ort_cuda_build() -> dict:
    """The CUDA/cuDNN versions an onnxruntime-gpu wheel was built against (absent from CPU wheels)."""
    try:
        from onnxruntime.capi import build_and_package_info as build
    except ImportError:
        return {}
    return {key: value for key, value in (("ort_package", getattr(build, "package_name", None)),
                                          ("ort_cuda_version", getattr(build, "cuda_version", None)),
                                          ("ort_cudnn_version", getattr(build, "cudnn_version", None)))
            if value}


def cuda_device_info(index: int = 0) -> dict:
    """Provenance for a result row: torch's view of the device where available, nvidia-smi's
    driver version for the same GPU (matched by UUID; CUDA_VISIBLE_DEVICES may renumber), and
    the driver's CUDA version."""
    info = torch_device_info(index)
    rows = smi_rows()
    match = next((r for r in rows if info.get("uuid") and r["uuid"] == info["uuid"]), None)
    if match is None and not info and len(rows) > index:
        match = rows[index]
    if match is not None:
        info = {**match, **info}  # torch's own facts win where both report one
    elif rows:
        info["driver_version"] = rows[0]["driver_version"]  # one driver serves every GPU
    info["cuda_driver_supports"] = driver_cuda_version()
    return info
