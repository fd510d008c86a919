"""`ModelSpec`: what a model is and where its weights come from, with a content hash.

The hash covers the architecture, the weight source and seed, and the source code of the
architecture itself, so a cached export can never silently outlive a change to the model code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from slmbench.models.config import ArchConfig, Family

_MODEL_CODE = ("blocks.py", "families.py", "config.py")


def _code_digest() -> str:
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in _MODEL_CODE:
        h.update((here / name).read_bytes())
    return h.hexdigest()


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config: ArchConfig
    source: str = "preset"  # "preset" (random weights from `seed`) or a checkpoint reference
    seed: int = 0
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def family(self) -> Family:
        return self.config.family

    @property
    def parameters(self) -> int:
        return self.config.parameter_count()

    def content_hash(self) -> str:
        payload = {"config": self.config.to_dict(), "source": self.source, "seed": self.seed,
                   "code": _code_digest()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def build(self):
        """The torch module (imports torch)."""
        from slmbench.models.families import build

        return build(self.config, self.seed)

    def describe(self) -> dict:
        c = self.config
        return {"model": self.name, "family": c.family.value, "parameters": self.parameters,
                "encoder_layers": c.encoder_layers, "decoder_layers": c.decoder_layers,
                "hidden": c.hidden, "heads": c.attn_heads, "kv_heads": c.kv_heads, "head_dim": c.head_dim,
                "ffn": c.ffn, "vocab": c.vocab_size, "source": self.source}
