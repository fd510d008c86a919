"""Preset architectures: the paper's encoder-decoder (Mu) and a decoder-only baseline built from
the same block, stacked to the same parameter budget, at three budgets plus tiny test sizes.

Mu (docs/paper.md): 20 encoder / 10 decoder layers, hidden 1024, 6 query heads and 3 KV heads
of 64 (inner width 384), MLP 1024->4096->1024 non-gated tanh-GELU with bias, RMSNorm 1e-6,
RoPE 10000, vocabulary 32128 tied. The paper allows 1024 positions, 4096 with RoPE scaling; the
presets admit 8192 + 512 so the input-scaling sweep reaches the range of the paper's intro figure
(512 to 8192 input tokens) for both families, a decoder-only model's generated tokens included.
Positions do not change the parameter count.
"""

from __future__ import annotations

import dataclasses

from slmbench.models.config import ArchConfig, ConfigError, Family, VisionConfig

ED, DO = Family.ENCODER_DECODER, Family.DECODER_ONLY


def _pair(size: str, hidden: int, heads: int, kv_heads: int, ffn: int, enc: int, dec: int,
          deconly_layers: int, **common) -> dict[str, ArchConfig]:
    shared = dict(vocab_size=32128, hidden=hidden, attn_heads=heads, kv_heads=kv_heads, head_dim=64, ffn=ffn,
                  max_positions=8192 + 512, **common)
    return {
        f"mu-{size}": ArchConfig(family=ED, encoder_layers=enc, decoder_layers=dec, **shared),
        f"deconly-{size}": ArchConfig(family=DO, encoder_layers=0, decoder_layers=deconly_layers, **shared),
    }


PRESETS: dict[str, ArchConfig] = {
    **_pair("100m", hidden=640, heads=4, kv_heads=2, ffn=2560, enc=14, dec=7, deconly_layers=22),
    **_pair("330m", hidden=1024, heads=6, kv_heads=3, ffn=4096, enc=20, dec=10, deconly_layers=31),
    **_pair("1b", hidden=2048, heads=12, kv_heads=6, ffn=8192, enc=16, dec=8, deconly_layers=25),
    # Tiny models for tests: about 2M parameters, attention inner width (64) != hidden (128).
    "mu-tiny": ArchConfig(family=ED, vocab_size=8192, hidden=128, encoder_layers=2, decoder_layers=2,
                          attn_heads=4, kv_heads=2, head_dim=16, ffn=512, max_positions=1024),
    "deconly-tiny": ArchConfig(family=DO, vocab_size=8192, hidden=128, encoder_layers=0, decoder_layers=5,
                               attn_heads=4, kv_heads=2, head_dim=16, ffn=512, max_positions=1024),
}

# The paper's vision tower (models/vision.py): CLIP ViT-L/14 at 336 px up to its penultimate block,
# 576 image tokens; and a tiny one for tests (32 px, 8-pixel patches: 16 image tokens).
CLIP_VIT_L14_336 = VisionConfig(image_size=336, patch=14, width=1024, layers=23, heads=16, mlp=4096)
TINY_VISION = VisionConfig(image_size=32, patch=8, width=64, layers=2, heads=4, mlp=128)


def _with_vision(names: dict[str, str], vision: VisionConfig) -> dict[str, ArchConfig]:
    """Vision-language presets: the same language blocks as their text presets, plus a tower."""
    return {vl: dataclasses.replace(PRESETS[text], vision=vision) for vl, text in names.items()}


PRESETS.update(_with_vision({"mu-vl-330m": "mu-330m", "deconly-vl-330m": "deconly-330m"}, CLIP_VIT_L14_336))
PRESETS.update(_with_vision({"mu-vl-tiny": "mu-tiny", "deconly-vl-tiny": "deconly-tiny"}, TINY_VISION))

# The encoder-decoder each decoder-only preset is compared with (same budget).
PAIRS: dict[str, str] = {"deconly-100m": "mu-100m", "deconly-330m": "mu-330m", "deconly-1b": "mu-1b",
                         "deconly-tiny": "mu-tiny", "deconly-vl-330m": "mu-vl-330m",
                         "deconly-vl-tiny": "mu-vl-tiny"}


def get_preset(name: str) -> ArchConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; presets: {', '.join(PRESETS)} "
                          "(or hf:PATH for a local checkpoint)") from None
