"""`ModelSpec`: what a model is and where its weights come from, with a content hash.

The hash covers the architecture, the weight source and seed, and the source code of the
architecture itself, so a cached export can never silently outlive a change to the model code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from slmbench.models.config import ArchConfig, ConfigError, Family

_MODEL_CODE = ("blocks.py", "families.py", "config.py", "vision.py")


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
    image_size: int | None = None  # what a vision model's tower takes (None: its native size)

    @property
    def image(self) -> int | None:
        """The image size this model is fed, in pixels (None: a text model)."""
        vision = self.config.vision
        return None if vision is None else self.image_size or vision.image_size

    @property
    def image_tokens(self) -> int:
        """Tokens the image becomes (0 for a text model)."""
        return 0 if self.image is None else self.config.vision.image_tokens(self.image)

    def with_image_size(self, size: int | None) -> ModelSpec:
        """This model fed `size`-pixel images; refused for a text model or a size its tower cannot take."""
        if size is None:
            return self
        if self.config.vision is None:
            raise ConfigError(f"{self.name} is a text model and takes no image; --image-size is for vision "
                              "models (mu-vl-330m, deconly-vl-330m, ...)")
        self.config.vision.check_image_size(size)
        return dataclasses.replace(self, image_size=size)

    @property
    def family(self) -> Family:
        return self.config.family

    @property
    def parameters(self) -> int:
        return self.config.parameter_count()

    def content_hash(self) -> str:
        payload = {"config": self.config.to_dict(), "source": self.source, "seed": self.seed,
                   "code": _code_digest(), **({"image_size": self.image} if self.image else {})}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def build(self):
        """The torch module (imports torch); a vision model's tower takes `image` pixels a side."""
        from slmbench.models.families import build

        model = build(self.config, self.seed)
        if self.image is not None:
            model.vision.set_image_size(self.image)
        return model

    def describe(self) -> dict:
        c = self.config
        return {"model": self.name, "family": c.family.value, "parameters": self.parameters,
                "encoder_layers": c.encoder_layers, "decoder_layers": c.decoder_layers,
                "hidden": c.hidden, "heads": c.attn_heads, "kv_heads": c.kv_heads, "head_dim": c.head_dim,
                "ffn": c.ffn, "vocab": c.vocab_size, "source": self.source,
                **({"vision": c.vision.to_dict()} if c.vision is not None else {})}
