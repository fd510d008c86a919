"""Model architectures and where their weights come from.

`ModelSpec` names a model (a preset, or a local checkpoint); `spec.build()` gives a torch module
with the export-friendly step interface every exporter relies on. torch is imported lazily so
that listing presets stays instant.
"""

from slmbench.models.config import ArchConfig, Family
from slmbench.models.presets import PRESETS, get_preset
from slmbench.models.spec import ModelSpec, resolve_model

__all__ = ["ArchConfig", "Family", "ModelSpec", "PRESETS", "get_preset", "resolve_model"]
