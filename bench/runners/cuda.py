"""CUDA device facts shared by the CUDA runners: presence, and provenance for result rows."""

from __future__ import annotations

import shutil
import subprocess


def _smi(query: str) -> list[str]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def cuda_absent_reason() -> str:
    """Empty when a CUDA GPU is visible; otherwise one line saying why not."""
    if _smi("name"):
        return ""
    return "no CUDA GPU: nvidia-smi is missing or lists no GPU (install the NVIDIA driver, or use --device cpu)"


def cuda_device_info(index: int = 0) -> dict:
    rows = _smi("name,driver_version,memory.total")
    info: dict = {}
    if len(rows) > index:
        name, driver, memory = (part.strip() for part in rows[index].split(","))
        info.update({"gpu_name": name, "driver_version": driver, "gpu_memory": memory})
    try:
        import torch

        if torch.cuda.is_available():
            info.update({"cuda_runtime": torch.version.cuda, "gpu_name": torch.cuda.get_device_name(index),
                         "gpu_memory_bytes": torch.cuda.get_device_properties(index).total_memory})
    except ImportError:
        pass
    return info
