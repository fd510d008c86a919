"""Typed architecture configuration, validated on construction (no side effects)."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from slmbench.errors import BenchError


class Family(enum.StrEnum):
    ENCODER_DECODER = "encoder-decoder"
    DECODER_ONLY = "decoder-only"


class ConfigError(ValueError):
    """An architecture or run configuration that cannot be built."""


class CheckpointError(BenchError, ConfigError):
    """A checkpoint that cannot be found, read or benchmarked (a ConfigError too, so sweep files
    report it with their own location)."""


@dataclass(frozen=True)
class VisionConfig:
    """A vision tower's shape (models/vision.py builds it): CLIP's ViT, square images."""

    image_size: int  # the native size, in pixels (square images)
    patch: int
    width: int
    layers: int
    heads: int
    mlp: int
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("image_size", "patch", "width", "layers", "heads", "mlp"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"vision {name} must be a positive integer, got {value!r}")
        if self.width % self.heads:
            raise ConfigError(f"vision width ({self.width}) must be a multiple of its heads ({self.heads})")
        self.check_image_size(self.image_size)

    def check_image_size(self, size: int) -> None:
        """An image the tower can take: a whole number of patches a side."""
        if (not isinstance(size, int) or isinstance(size, bool) or size < self.patch or size % self.patch
                or size > 4 * self.image_size):
            raise ConfigError(f"image size {size!r}: the tower takes square images of a whole number of "
                              f"{self.patch}-pixel patches a side, up to {4 * self.image_size} (native "
                              f"{self.image_size})")

    def image_tokens(self, size: int | None = None) -> int:
        """Tokens one image becomes (the class token is not passed on)."""
        side = (size or self.image_size) // self.patch
        return side * side

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> VisionConfig:
        if isinstance(data, VisionConfig):
            return data
        if not isinstance(data, dict):
            raise ConfigError(f"vision must be a table of {[f.name for f in dataclasses.fields(cls)]}, got {data!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(data) - known):
            raise ConfigError(f"unknown vision keys {unknown}; allowed: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"vision: {exc}") from None

    def tower_parameters(self) -> int:
        """The ViT: patch embedding, class token, positions, its LayerNorm, the blocks."""
        w = self.width
        block = 4 * (w * w + w) + 2 * 2 * w + (w * self.mlp + self.mlp) + (self.mlp * w + w)
        positions = (self.image_tokens() + 1) * w
        return 3 * self.patch * self.patch * w + w + positions + 2 * w + self.layers * block

    def projector_parameters(self, hidden: int) -> int:
        return (self.width * hidden + hidden) + (hidden * hidden + hidden)

    def parameter_count(self, hidden: int) -> int:
        return self.tower_parameters() + self.projector_parameters(hidden)


@dataclass(frozen=True)
class ArchConfig:
    """One architecture. Both families are composed from the same block library.

    `attn_heads * head_dim` is the attention inner width, which may differ from `hidden`
    (Mu: hidden 1024, inner width 384).
    """

    family: Family
    vocab_size: int
    hidden: int
    encoder_layers: int  # 0 for decoder-only
    decoder_layers: int
    attn_heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    gated_mlp: bool = False
    activation: str = "gelu_tanh"  # "gelu_tanh" | "silu" | "relu"
    mlp_bias: bool = True
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_positions: int = 4096
    tie_embeddings: bool = True
    decoder_start_token: int = 0
    # A vision tower whose image tokens go into the encoder or before the prompt (models/vision.py).
    vision: VisionConfig | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "family", Family(self.family))
        positive = ["vocab_size", "hidden", "decoder_layers", "attn_heads", "kv_heads", "head_dim", "ffn",
                    "max_positions"]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.family is Family.ENCODER_DECODER and self.encoder_layers <= 0:
            raise ConfigError("an encoder-decoder needs encoder_layers > 0")
        if self.family is Family.DECODER_ONLY and self.encoder_layers != 0:
            raise ConfigError("a decoder-only model has encoder_layers = 0")
        if self.attn_heads % self.kv_heads:
            raise ConfigError(f"attn_heads ({self.attn_heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if self.head_dim % 2:
            raise ConfigError("head_dim must be even for rotary embeddings")
        if self.activation not in ("gelu_tanh", "silu", "relu"):
            raise ConfigError(f"activation must be gelu_tanh, silu or relu, got {self.activation!r}")
        if not 0 <= self.decoder_start_token < self.vocab_size:
            raise ConfigError("decoder_start_token must be a token id")
        if self.vision is not None:
            object.__setattr__(self, "vision", VisionConfig.from_dict(self.vision))

    @property
    def is_encoder_decoder(self) -> bool:
        return self.family is Family.ENCODER_DECODER

    def to_dict(self) -> dict:
        """Plain values; `vision` only when there is one (a text model's dict, and so its content
        hash, is what it was before vision existed)."""
        d = dataclasses.asdict(self)
        d["family"] = self.family.value
        if self.vision is None:
            del d["vision"]
        return d

    @classmethod
    def from_dict(cls, data: dict) -> ArchConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown architecture keys {unknown}; allowed: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def attention_parameters(self) -> int:
        """One attention block: Q, K, V and output projections (no bias)."""
        h, q, kv = self.hidden, self.attn_heads * self.head_dim, self.kv_heads * self.head_dim
        return h * q + 2 * h * kv + q * h

    @property
    def encoder_layer_parameters(self) -> int:
        """One encoder block (also a decoder-only block): attention, MLP and two norms."""
        h = self.hidden
        mlp = (2 if self.gated_mlp else 1) * h * self.ffn + self.ffn * h
        if self.mlp_bias:
            mlp += (2 if self.gated_mlp else 1) * self.ffn + h
        return self.attention_parameters + mlp + 2 * h

    @property
    def decoder_layer_parameters(self) -> int:
        """One decoder block: an encoder-decoder's adds cross-attention and its norm."""
        cross = self.attention_parameters + self.hidden if self.is_encoder_decoder else 0
        return self.encoder_layer_parameters + cross

    def language_parameters(self) -> int:
        """The language model's exact parameter count, from the config alone (no torch needed)."""
        embedding = self.vocab_size * self.hidden * (1 if self.tie_embeddings else 2)
        final_norms = self.hidden * (2 if self.is_encoder_decoder else 1)
        return (self.encoder_layers * self.encoder_layer_parameters
                + self.decoder_layers * self.decoder_layer_parameters + embedding + final_norms)

    def parameter_count(self) -> int:
        """Exact parameter count: the language model, and the vision tower with its projector."""
        vision = self.vision.parameter_count(self.hidden) if self.vision is not None else 0
        return self.language_parameters() + vision
