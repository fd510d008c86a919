"""Feeding a compiled model by name. OpenVINO silently uses an empty tensor for an input that is
not set (docs/environment.md, "Machines, versions and runtime traps"), so every session names the
inputs it feeds, checks them against the compiled model's ports once, and refuses a gap."""

from __future__ import annotations

from slmbench.exporters.artifact import ArtifactError
from slmbench.exporters.openvino import match_ports

__all__ = ["match_ports", "require_fed", "require_inputs", "run"]


def require_inputs(compiled, fed, what: str) -> None:
    """Refuse a compiled model whose inputs are not exactly the ones this code feeds by name."""
    match_ports(compiled.inputs, list(fed), what)


def require_fed(fed: set[str], inputs: set[str]) -> None:
    """Refuse to infer before every decoder input was set."""
    if fed != inputs:
        raise ArtifactError(f"decoder inputs {sorted(inputs - fed)} were not fed (OpenVINO would silently use "
                            "empty tensors)")


def run(request) -> None:
    """Infer without the Python wrapper's copy of every output into a dict."""
    request.start_async()
    request.wait()
