"""The block library both families are built from.

Everything here is written for export: no data-dependent Python control flow, the KV cache in and
out as explicit tensors (layout [batch, kv_heads, seq, head_dim]), grouped-query attention without
repeating K/V (queries are grouped instead, so no KV copy per step), and masking with `where`
rather than additive -inf so that fully padded rows stay finite in fp16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slmbench.models.config import ArchConfig


def _f32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half precision for reductions; a no-op (and no graph node) for fp32."""
    return x if x.dtype == torch.float32 else x.float()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _f32(x)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return h.to(x.dtype) * self.weight if h.dtype != x.dtype else h * self.weight


class Rotary(nn.Module):
    """RoPE tables computed from explicit positions, once per forward and shared by all layers."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq  # [B, T, D/2]
        angles = torch.cat([freqs, freqs], dim=-1)[:, None]  # [B, 1, T, D]
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Grouped-query attention; the inner width (heads * head_dim) may differ from `hidden`."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.attn_heads, cfg.kv_heads, cfg.head_dim
        inner, kv_inner = cfg.attn_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden, inner, bias=False)
        self.k_proj = nn.Linear(cfg.hidden, kv_inner, bias=False)
        self.v_proj = nn.Linear(cfg.hidden, kv_inner, bias=False)
        self.o_proj = nn.Linear(inner, cfg.hidden, bias=False)

    def _split(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, heads, self.head_dim).transpose(1, 2)  # [B, H, T, D]

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._split(self.k_proj(x), self.kv_heads), self._split(self.v_proj(x), self.kv_heads)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """q [B,Hq,T,D], k/v [B,Hkv,S,D], allowed broadcastable to [B,1,1,T,S] (bool)."""
        b, _, t, d = q.shape
        group = self.heads // self.kv_heads
        q = q.reshape(b, self.kv_heads, group, t, d)
        scores = torch.matmul(q, k.unsqueeze(2).transpose(-1, -2)) * (d ** -0.5)  # [B,Hkv,G,T,S]
        scores = torch.where(allowed, scores, torch.finfo(scores.dtype).min)
        probs = F.softmax(_f32(scores), dim=-1).to(q.dtype)
        out = torch.matmul(probs, v.unsqueeze(2))  # [B,Hkv,G,T,D]
        return self.o_proj(out.reshape(b, self.heads, t, d).transpose(1, 2).reshape(b, t, self.heads * d))

    def self_attention(self, x, cos, sin, allowed, past_k=None, past_v=None, cache_len=None):
        """Returns (output, keys, values) where keys/values include the past (the new cache).

        With `cache_len` (eager PyTorch only; exports never pass it) past_k/past_v are preallocated
        [B, Hkv, max_len, D] buffers holding `cache_len` filled rows: the new rows are written in
        place after them and attention reads the filled prefix, so no tensor grows per step."""
        q = apply_rotary(self._split(self.q_proj(x), self.heads), cos, sin)
        k, v = self.project_kv(x)
        k = apply_rotary(k, cos, sin)
        if cache_len is not None:
            end = cache_len + k.shape[2]
            past_k[:, :, cache_len:end] = k
            past_v[:, :, cache_len:end] = v
            k, v = past_k[:, :, :end], past_v[:, :, :end]
        elif past_k is not None:
            k = torch.cat([past_k, k], dim=2)
            v = torch.cat([past_v, v], dim=2)
        return self.attend(q, k, v, allowed), k, v

    def cross_attention(self, x, k, v, allowed):
        """No rotary embedding on cross-attention (Mu); K/V come precomputed from the encoder."""
        return self.attend(self._split(self.q_proj(x), self.heads), k, v, allowed)


class MLP(nn.Module):
    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.gated = cfg.gated_mlp
        self.up = nn.Linear(cfg.hidden, cfg.ffn, bias=cfg.mlp_bias)
        self.gate = nn.Linear(cfg.hidden, cfg.ffn, bias=cfg.mlp_bias) if cfg.gated_mlp else None
        self.down = nn.Linear(cfg.ffn, cfg.hidden, bias=cfg.mlp_bias)
        self.activation = cfg.activation

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "gelu_tanh":
            return F.gelu(x, approximate="tanh")
        if self.activation == "silu":
            return F.silu(x)
        return F.relu(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.down(self._act(self.gate(x)) * self.up(x))
        return self.down(self._act(self.up(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, allowed):
        x = x + self.attn.self_attention(self.attn_norm(x), cos, sin, allowed)[0]
        return x + self.mlp(self.mlp_norm(x))


class DecoderLayer(nn.Module):
    """Pre-norm decoder block: causal self-attention, optional cross-attention, MLP."""

    def __init__(self, cfg: ArchConfig, cross: bool):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.cross_norm = RMSNorm(cfg.hidden, cfg.norm_eps) if cross else None
        self.cross = Attention(cfg) if cross else None
        self.mlp_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, allowed, past_k, past_v, cross_k=None, cross_v=None, cross_allowed=None,
                cache_len=None):
        h, k, v = self.attn.self_attention(self.attn_norm(x), cos, sin, allowed, past_k, past_v, cache_len)
        x = x + h
        if self.cross is not None:
            x = x + self.cross.cross_attention(self.cross_norm(x), cross_k, cross_v, cross_allowed)
        return x + self.mlp(self.mlp_norm(x)), k, v


def causal_allowed(past_len: torch.Tensor | int, new_len: int, attention_mask: torch.Tensor | None,
                   device: torch.device) -> torch.Tensor:
    """Bool [B|1,1,1,T,P+T]: key slot j visible to query i when j <= P+i and the slot is real."""
    total = past_len + new_len
    key_pos = torch.arange(total, device=device)
    query_pos = torch.arange(new_len, device=device) + past_len
    allowed = (key_pos[None, :] <= query_pos[:, None])[None, None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, None, None, :]
    return allowed


def key_allowed(attention_mask: torch.Tensor) -> torch.Tensor:
    """Bool [B,1,1,1,S]: padding keys masked out (encoder self- and decoder cross-attention)."""
    return attention_mask.bool()[:, None, None, None, :]
