"""The user's own exported model as a model source: `onnx:DIR` (an optimum-onnx export) and `ov:DIR`
(an optimum-intel OpenVINO IR).

The folder is the artifact: nothing is exported, copied or written into it. Its architecture comes
from its `config.json`, read as `hf:` reads a checkpoint's (models/hf.arch_config), so the cost
model, ceilings and rows work unchanged; which graphs it holds and how they are fed is read from
the graphs themselves by slmbench.exporters.byo. The spec's hash covers the SHA-256 of every file
in the folder. Where the folder also holds the checkpoint's weights (model.safetensors or
pytorch_model.bin), `build()` loads them as `hf:` does, for the parity check of the user's graphs;
without them parity is "unchecked".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from slmbench.models import hf
from slmbench.models.config import CheckpointError

# model-name prefix -> the artifact format its folder holds (a runner's `artifact_format`)
PREFIXES = {"onnx:": "onnx", "ov:": "openvino"}


def byo_format(name: str) -> str | None:
    """The artifact format a model name fixes (`onnx:DIR`, `ov:DIR`), else None."""
    for prefix, fmt in PREFIXES.items():
        if name.startswith(prefix):
            return fmt
    return None


def folder_files(folder: Path) -> dict[str, dict]:
    """Every file directly in `folder`, with its size and SHA-256 (sub-folders are not read)."""
    return {p.name: {"bytes": p.stat().st_size, "sha256": hf._file_sha256(p)}
            for p in sorted(folder.iterdir()) if p.is_file()}


@dataclass(frozen=True)
class ByoModelSpec(hf.HFModelSpec):
    """An exported folder. `source` is "onnx:<absolute folder>" or "ov:<absolute folder>";
    `weights_format` is "" when the folder holds no checkpoint weights."""

    artifact_format: str = "onnx"
    files: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def has_weights(self) -> bool:
        return bool(self.weights_format)

    def content_hash(self) -> str:
        payload = {"config": self.config.to_dict(), "source": self.source, "format": self.artifact_format,
                   "files": {name: f["sha256"] for name, f in self.files.items()}}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def build(self):
        """The folder's checkpoint weights behind the step interface (the parity reference)."""
        if not self.has_weights:
            raise CheckpointError(f"{self.name} holds no checkpoint weights (model.safetensors or "
                                  "pytorch_model.bin): nothing to check its graphs against")
        return super().build()

    def describe(self) -> dict:
        return {**super().describe(), "weights": self.weights_format or "none (graphs only)",
                "format": self.artifact_format}


def resolve_byo(name: str) -> ByoModelSpec:
    """`onnx:DIR` / `ov:DIR` -> a spec; one-line CheckpointError naming the problem."""
    fmt = byo_format(name)
    prefix = next(p for p, f in PREFIXES.items() if f == fmt)
    folder = Path(name[len(prefix):]).expanduser()
    what = "an optimum-onnx export" if fmt == "onnx" else "an optimum-intel OpenVINO IR"
    if not folder.is_dir():
        raise CheckpointError(f"{name}: no such folder; {prefix}DIR names a folder holding {what}")
    folder = folder.resolve()
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{name}: {folder} has no config.json (optimum writes the model's config beside "
                              "its graphs; the layout is read from it and from the graphs)")
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{folder / 'config.json'} is not valid JSON ({exc})") from None
    model_type = raw.get("model_type")
    if model_type not in hf.SUPPORTED:
        raise CheckpointError(f"{name}: architecture {model_type!r} is not supported; supported model types: "
                              f"{hf.supported_text()}")
    try:
        _, weights = hf.weight_files(folder)
    except CheckpointError:
        weights = ""
    hf_config = hf._load_config(folder, False, name)
    config, extra = hf.arch_config(hf_config, hf._generation_config(folder))
    total = hf._meta_parameters(hf_config, config.family, False)
    files = folder_files(folder)
    digest = hashlib.sha256("".join(f"{n}:{f['sha256']}\n" for n, f in files.items()).encode()).hexdigest()
    return ByoModelSpec(name=name, config=config, source=f"{prefix}{folder}", extra=extra, path=str(folder),
                        weights_format=weights, checkpoint_sha256=digest, parameter_total=total,
                        artifact_format=fmt, files=files)
