"""OpenVINO runner: CPU, Intel GPU and Intel NPU.

- runner.py: the Runner (availability, device checks, compile, load, the primitives);
- modes.py: one class per mode (`stateful`, `static`, `npuw`), recorded in every row: its graphs,
  options and defaults, compile configuration, bare loop and session;
- stateful.py, static.py, npuw.py: the sessions over compiled models, one per mode (npuw.py also
  holds the NPU plugin's pipeline configuration); ports.py: feeding them by name.
The exporters run their parity check through a mode's session, which the mode hands them.
"""

from slmbench.runners.openvino.modes import MODES, openvino_artifact
from slmbench.runners.openvino.runner import OpenVinoRunner

__all__ = ["MODES", "OpenVinoRunner", "openvino_artifact"]
