"""Runner registry. A new runtime is one module and one line here; a new device is a name in
a runner's `devices` and, if it should be the default there, in DEFAULT_RUNTIMES.

Runner modules import their runtime lazily, so importing this registry is cheap."""

from __future__ import annotations

from slmbench.errors import DeviceUnavailable, InvalidOption
from slmbench.runners.base import Availability, LoadInfo, Runner
from slmbench.runners.onnxruntime import OnnxRuntimeRunner
from slmbench.runners.openvino import OpenVinoRunner
from slmbench.runners.torch import TorchRunner

RUNNERS: dict[str, type[Runner]] = {
    OnnxRuntimeRunner.runtime: OnnxRuntimeRunner,
    OpenVinoRunner.runtime: OpenVinoRunner,
    TorchRunner.runtime: TorchRunner,
}

DEVICES = ("cpu", "cuda", "gpu", "npu")
# Preference order per device: the first available one is the default.
DEFAULT_RUNTIMES: dict[str, tuple[str, ...]] = {
    "cpu": ("onnxruntime", "openvino", "torch"),
    "cuda": ("onnxruntime", "torch"),
    "gpu": ("openvino",),
    "npu": ("openvino",),
}


def runtimes_for(device: str) -> list[str]:
    return [r for r in DEFAULT_RUNTIMES.get(device, ()) if r in RUNNERS and device in RUNNERS[r].devices]


def select_runner(device: str, runtime: str | None, artifact_format: str | None = None) -> type[Runner]:
    """The runner class for a device (and optional runtime), or a one-line error saying why not.
    `artifact_format` keeps only the runtimes that read it (a user's own export: models/byo.py)."""
    if device not in DEVICES:
        raise InvalidOption(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    if runtime is not None:
        if runtime not in RUNNERS:
            raise InvalidOption(f"unknown runtime {runtime!r}; choose from {', '.join(RUNNERS)}")
        cls = RUNNERS[runtime]
        if device not in cls.devices:
            raise InvalidOption(f"runtime {runtime} does not run on {device}; it runs on {', '.join(cls.devices)}")
        found = cls.availability(device)
        if not found.ok:
            raise DeviceUnavailable(f"{runtime} on {device} is unavailable: {found.reason}")
        return cls
    candidates = [r for r in runtimes_for(device) if artifact_format in (None, RUNNERS[r].artifact_format)]
    reasons = []
    for name in candidates:
        found = RUNNERS[name].availability(device)
        if found.ok:
            return RUNNERS[name]
        reasons.append(f"{name}: {found.reason}")
    raise DeviceUnavailable(f"device {device} is unavailable here ({'; '.join(reasons) or 'no runtime'})")


def device_table() -> list[dict]:
    """Every runtime/device pair with its availability and reason (for `slmbench devices`)."""
    rows = []
    for name, cls in RUNNERS.items():
        for device in cls.devices:
            found = cls.availability(device)
            rows.append({"runtime": name, "device": device, "available": found.ok, "reason": found.reason})
    return rows


def runtime_precisions(runtime: str) -> tuple[str, ...] | None:
    """The precisions a runtime offers: its artifact format's recipes, or the PRECISIONS its runner
    module declares (None when unknown)."""
    import importlib

    from slmbench.exporters.precision import SUPPORTED

    cls = RUNNERS.get(runtime)
    if cls is None:
        return None
    if cls.artifact_format in SUPPORTED:
        return SUPPORTED[cls.artifact_format]
    declared = getattr(importlib.import_module(cls.__module__), "PRECISIONS", None)
    return tuple(declared) if declared is not None else None


def precision_unsupported(runtime: str, precision_name: str) -> str:
    """Empty when `runtime` offers `precision_name` (or cannot say), else a one-line reason."""
    offered = runtime_precisions(runtime)
    if offered is None or precision_name in offered:
        return ""
    return f"{runtime} does not support precision {precision_name!r}; supported: {', '.join(offered)}"


__all__ = ["Availability", "DEVICES", "LoadInfo", "RUNNERS", "Runner", "device_table", "precision_unsupported",
           "select_runner"]
