"""Feeding a compiled model by name. OpenVINO silently uses an empty tensor for an input that is
not set (docs/environment.md, "Machines, versions and runtime traps"), so every session names the
inputs it feeds, checks them against the compiled model's ports once, and refuses a gap."""

from __future__ import annotations

from slmbench.exporters.artifact import ArtifactError


def match_ports(ports, expected, what: str) -> list[str]:
    """The expected name of each port. Compiled ports may gain aliases (a removed Convert hands its
    name on), so a port is identified by the one expected name among its names."""
    found = []
    for port in ports:
        names = port.get_names() & set(expected)
        if len(names) != 1:
            raise ArtifactError(
                f"{what}: port named {sorted(port.get_names())} matches "
                f"{sorted(names) or 'none'} of {sorted(expected)} (it would not be fed by name; "
                "OpenVINO would silently use an empty tensor)"
            )
        found.append(names.pop())
    missing = sorted(set(expected) - set(found))
    if missing:
        raise ArtifactError(f"{what}: no port named {missing}")
    return found


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
