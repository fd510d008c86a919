"""The two families, composed from the same blocks.

Step interface (what the exporters wrap):
- `DecoderOnly.forward(input_ids, past, position_ids=None, attention_mask=None)`
  -> (logits of the last position [B, V], [(k, v) per layer] including the past).
- `EncoderDecoder.encode(input_ids, attention_mask)` -> encoder hidden states [B, S, H];
  `EncoderDecoder.cross_kv(hidden)` -> [(k, v) per decoder layer], computed once per request;
  `EncoderDecoder.decode(input_ids, encoder_mask, cross, past, ...)` -> as DecoderOnly.forward.
A past of length 0 is allowed, so one graph serves the prompt (prefill) and every later step.
A vision-language model (`cfg.vision`) has `model.vision(pixels)` -> image embeddings [B, I, H]
(models/vision.py); `encode` and `forward` take them as `image_embeds`, placed before the text's
embeddings (the encoder's attention mask then covers I + S positions). A decoder-only step after
the prefill passes none (or I = 0).
Eager callers may pass `cache_len=n` with preallocated [B, kv_heads, max_len, head_dim] buffers as
`past` (n rows filled): new rows are written in place and the returned K/V are views of the buffers.
"""

from __future__ import annotations

import torch
from torch import nn

from slmbench.models.blocks import (
    DecoderLayer,
    EncoderLayer,
    RMSNorm,
    Rotary,
    causal_allowed,
    key_allowed,
)
from slmbench.models.config import ArchConfig

KV = list[tuple[torch.Tensor, torch.Tensor]]


class _LanguageModel(nn.Module):
    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta)
        self.final_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
        if cfg.vision is not None:
            from slmbench.models.vision import build_tower

            self.vision = build_tower(cfg.vision, cfg.hidden)

    def _embed(self, input_ids, image_embeds=None):
        """Token embeddings, the image's before them."""
        x = self.embed(input_ids)
        return x if image_embeds is None else torch.cat([image_embeds.to(x.dtype), x], 1)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        last = self.final_norm(x[:, -1])
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return last @ weight.t()

    def empty_past(self, batch: int, dtype: torch.dtype = torch.float32) -> KV:
        shape = (batch, self.cfg.kv_heads, 0, self.cfg.head_dim)
        return [(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype))
                for _ in range(self.cfg.decoder_layers)]

    def _decoder_positions(self, x, past_len, position_ids):
        if position_ids is not None:
            return position_ids
        t = x.shape[1]
        return (torch.arange(t, device=x.device) + past_len)[None].expand(x.shape[0], t)

    def _run_decoder(self, input_ids, past: KV, position_ids, attention_mask, cross=None, cross_allowed=None,
                     cache_len=None, image_embeds=None):
        past_len = past[0][0].shape[2] if cache_len is None else cache_len
        x = self._embed(input_ids, image_embeds)
        rope = self.rotary(self._decoder_positions(x, past_len, position_ids), x.dtype)
        allowed = causal_allowed(past_len, x.shape[1], attention_mask, x.device)
        present = []
        for i, layer in enumerate(self.decoder):
            ck, cv = cross[i] if cross is not None else (None, None)
            x, k, v = layer(x, rope, allowed, past[i][0], past[i][1], ck, cv, cross_allowed, cache_len)
            present.append((k, v))
        return self._logits(x), present


class DecoderOnly(_LanguageModel):
    def __init__(self, cfg: ArchConfig):
        super().__init__(cfg)
        self.decoder = nn.ModuleList(DecoderLayer(cfg, cross=False) for _ in range(cfg.decoder_layers))

    def forward(self, input_ids, past: KV, position_ids=None, attention_mask=None, cache_len=None, image_embeds=None):
        return self._run_decoder(input_ids, past, position_ids, attention_mask, cache_len=cache_len,
                                 image_embeds=image_embeds)


class EncoderDecoder(_LanguageModel):
    def __init__(self, cfg: ArchConfig):
        super().__init__(cfg)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.encoder_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.decoder = nn.ModuleList(DecoderLayer(cfg, cross=True) for _ in range(cfg.decoder_layers))

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds=None) -> torch.Tensor:
        """Bidirectional encoder; rotary positions centred on the middle of the real input (Mu),
        the image's tokens (if any) first; `attention_mask` covers them too."""
        mask = attention_mask.to(torch.int64)
        length = mask.sum(-1, keepdim=True)
        positions = (torch.cumsum(mask, -1) - 1) - torch.div(length, 2, rounding_mode="floor")
        x = self._embed(input_ids, image_embeds)
        rope = self.rotary(positions, x.dtype)
        allowed = key_allowed(attention_mask)
        for layer in self.encoder:
            x = layer(x, rope, allowed)
        return self.encoder_norm(x)

    def cross_kv(self, hidden: torch.Tensor) -> KV:
        return [layer.cross.project_kv(hidden) for layer in self.decoder]

    def decode(self, input_ids, encoder_mask, cross: KV, past: KV, position_ids=None, attention_mask=None,
               cache_len=None):
        return self._run_decoder(input_ids, past, position_ids, attention_mask, cross,
                                 key_allowed(encoder_mask), cache_len)

    def forward(self, input_ids, attention_mask, decoder_input_ids):
        """Whole-sequence teacher forcing (used to cross-check the step interface)."""
        hidden = self.encode(input_ids, attention_mask)
        past = self.empty_past(input_ids.shape[0], hidden.dtype)
        return self.decode(decoder_input_ids, attention_mask, self.cross_kv(hidden), past)


def build(cfg: ArchConfig, seed: int) -> nn.Module:
    """Random weights from a fixed seed: latency does not depend on weight values."""
    torch.manual_seed(seed)
    model = EncoderDecoder(cfg) if cfg.is_encoder_decoder else DecoderOnly(cfg)
    with torch.no_grad():
        model.embed.weight.normal_(0.0, 0.02)
    return model.eval()
