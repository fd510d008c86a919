"""Model architectures and where their weights come from.

`ModelSpec` names a model (a preset, or a local checkpoint); `spec.build()` gives a torch module
with the export-friendly step interface every exporter relies on. torch is imported lazily so
that listing presets stays instant.
"""

from slmbench.models.config import ArchConfig, Family
from slmbench.models.presets import PRESETS, get_preset
from slmbench.models.spec import ModelSpec

__all__ = ["ArchConfig", "Family", "ModelSpec", "PRESETS", "get_preset", "resolve_model"]


def resolve_model(name: str, seed: int = 0, trust_remote_code: bool | None = None) -> ModelSpec:
    """A preset name, `hf:PATH_OR_ID` for a Hugging Face checkpoint (resolved by models/hf.py;
    `trust_remote_code` None means the SLMBENCH_TRUST_REMOTE_CODE environment variable decides), or
    `onnx:DIR` / `ov:DIR` for the user's own optimum export (models/byo.py)."""
    from slmbench.models.byo import byo_format, resolve_byo

    if byo_format(name):
        return resolve_byo(name)
    if name.startswith("hf:"):
        from slmbench.models.hf import resolve_hf

        return resolve_hf(name, trust_remote_code)
    return ModelSpec(name=name, config=get_preset(name), seed=seed)
