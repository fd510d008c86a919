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
    """RoPE tables computed from explicit positions, once per forward and shared by all layers.

    Returns (cos, signed_sin, swap): cos/sin shaped [B, T, 1, D] for token-major [B, T, H, D]
    heads, the sine with rotate-half's sign folded in (-sin on the first half), and `swap`, the
    index that exchanges the halves. x[..., swap] * signed_sin is exactly rotate_half(x) * sin,
    exported as one Gather where slicing, negating and concatenating took four nodes per use
    (plus shape arithmetic), which ONNX Runtime pays on every decode step. No weight-like
    constant is involved, so weight quantizers leave it alone.
    """

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        half = head_dim // 2
        self.register_buffer("swap", torch.cat([torch.arange(half, head_dim), torch.arange(half)]), persistent=False)
        self.register_buffer("sign", torch.cat([-torch.ones(half), torch.ones(half)]), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype):
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq  # [B, T, D/2]
        angles = torch.cat([freqs, freqs], dim=-1)[:, :, None]  # [B, T, 1, D]
        return angles.cos().to(dtype), (angles.sin() * self.sign).to(dtype), self.swap


def apply_rotary(x: torch.Tensor, rope) -> torch.Tensor:
    """x [B, T, H, D] token-major; rope = Rotary's (cos, signed_sin, swap)."""
    cos, signed_sin, swap = rope
    return x * cos + x.index_select(-1, swap) * signed_sin


class Attention(nn.Module):
    """Grouped-query attention; the inner width (heads * head_dim) may differ from `hidden`.

    Self-attention projects Q, K and V with one matmul (`qkv_proj`) and rotates Q and K together;
    cross-attention projects Q from the decoder and K, V from the encoder (`kv_proj`, once per
    request). One wide matmul in place of three narrow ones is the same arithmetic, but a decode
    step launches (and splits across threads) a third as many weight reads per block.
    """

    def __init__(self, cfg: ArchConfig, cross: bool = False):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.attn_heads, cfg.kv_heads, cfg.head_dim
        inner, kv_inner = cfg.attn_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        if cross:
            self.q_proj = nn.Linear(cfg.hidden, inner, bias=False)
            self.kv_proj = nn.Linear(cfg.hidden, 2 * kv_inner, bias=False)
        else:
            self.qkv_proj = nn.Linear(cfg.hidden, inner + 2 * kv_inner, bias=False)
        self.o_proj = nn.Linear(inner, cfg.hidden, bias=False)
        self.scale = cfg.head_dim ** -0.5  # a Python float: a constant in the graph
        self.cross = cross
        self.fusable = False  # set_openvino_forms(): the 4-D form OpenVINO fuses

    def _heads(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        return x.view(*x.shape[:2], heads, self.head_dim)  # [B, T, H, D], token-major

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention K/V, [B, Hkv, S, D] (no rotary: Mu)."""
        k, v = self._heads(self.kv_proj(x), 2 * self.kv_heads).transpose(1, 2).split(self.kv_heads, dim=1)
        return k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """q [B,T,Hq,D] token-major, k/v [B,Hkv,S,D], allowed broadcastable to [B,1,1,T,S] (bool).

        Every view keeps the leading dims of its own input: the exporter folds those into
        constant Reshape targets (exporters/fold_shapes.py)."""
        if self.fusable:
            return self._attend_fusable(q, k, v, allowed)
        group = self.heads // self.kv_heads
        q = q.view(*q.shape[:2], self.kv_heads, group, self.head_dim).permute(0, 2, 3, 1, 4)  # [B,Hkv,G,T,D]
        scores = torch.matmul(q, k.unsqueeze(2).transpose(-1, -2)) * self.scale  # [B,Hkv,G,T,S]
        scores = torch.where(allowed, scores, torch.finfo(scores.dtype).min)
        probs = F.softmax(_f32(scores), dim=-1).to(q.dtype)
        out = torch.matmul(probs, v.unsqueeze(2))  # [B,Hkv,G,T,D]
        out = out.permute(0, 3, 1, 2, 4)  # [B,T,Hkv,G,D]
        return self.o_proj(out.reshape(*out.shape[:2], self.heads * self.head_dim))

    def _attend_fusable(self, q, k, v, allowed):
        """The same attention in the form OpenVINO fuses into ScaledDotProductAttention, and its CPU
        plugin, given a stateful cache, into one kernel reading the cache in place: 4-D heads, K/V
        heads repeated in-graph by Unsqueeze -> Expand (Broadcast) -> Reshape, one scale on the
        scores and an additive mask (exporters/openvino.py). ONNX Runtime would copy the K/V per
        step for the repeat, so its graphs keep the grouped form."""
        group = self.heads // self.kv_heads
        q = q.transpose(1, 2)  # [B,Hq,T,D]
        if group > 1:  # sizes from the cache itself: nothing but a ShapeOf may read it besides attention
            b, _, s, d = k.shape
            k, v = (x.unsqueeze(2).expand(b, self.kv_heads, group, s, d).reshape(b, self.heads, s, d) for x in (k, v))
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # [B,Hq,T,S]
        mask = torch.where(allowed.squeeze(2), 0.0, torch.finfo(scores.dtype).min).to(scores.dtype)
        probs = F.softmax(_f32(scores + mask), dim=-1).to(q.dtype)
        out = torch.matmul(probs, v).transpose(1, 2)  # [B,T,Hq,D]
        return self.o_proj(out.reshape(*out.shape[:2], self.heads * self.head_dim))

    def self_attention(self, x, rope, allowed, past_k=None, past_v=None, cache_len=None):
        """Returns (output, keys, values) where keys/values include the past (the new cache).

        With `cache_len` (eager PyTorch only; exports never pass it) past_k/past_v are preallocated
        [B, Hkv, max_len, D] buffers holding `cache_len` filled rows: the new rows are written in
        place after them and attention reads the filled prefix, so no tensor grows per step."""
        qk, v = self._heads(self.qkv_proj(x), self.heads + 2 * self.kv_heads).split(
            [self.heads + self.kv_heads, self.kv_heads], dim=2)
        q, k = apply_rotary(qk, rope).split([self.heads, self.kv_heads], dim=2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
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
        return self.attend(self._heads(self.q_proj(x), self.heads), k, v, allowed)


class MLP(nn.Module):
    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.gated = cfg.gated_mlp
        self.up = nn.Linear(cfg.hidden, cfg.ffn, bias=cfg.mlp_bias)
        self.gate = nn.Linear(cfg.hidden, cfg.ffn, bias=cfg.mlp_bias) if cfg.gated_mlp else None
        self.down = nn.Linear(cfg.ffn, cfg.hidden, bias=cfg.mlp_bias)
        self.activation = cfg.activation
        self.unfused_gelu = False  # set_openvino_forms(): the same tanh-GELU, which OpenVINO leaves unfused

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "gelu_tanh":
            return gelu_tanh_as_sigmoid(x) if self.unfused_gelu else F.gelu(x, approximate="tanh")
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

    def forward(self, x, rope, allowed):
        x = x + self.attn.self_attention(self.attn_norm(x), rope, allowed)[0]
        return x + self.mlp(self.mlp_norm(x))


class DecoderLayer(nn.Module):
    """Pre-norm decoder block: causal self-attention, optional cross-attention, MLP."""

    def __init__(self, cfg: ArchConfig, cross: bool):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.cross_norm = RMSNorm(cfg.hidden, cfg.norm_eps) if cross else None
        self.cross = Attention(cfg, cross=True) if cross else None
        self.mlp_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, rope, allowed, past_k, past_v, cross_k=None, cross_v=None, cross_allowed=None,
                cache_len=None):
        h, k, v = self.attn.self_attention(self.attn_norm(x), rope, allowed, past_k, past_v, cache_len)
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


def gelu_tanh_as_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """tanh-GELU written as x * sigmoid(2z), z = sqrt(2/pi) (x + 0.044715 x^3): the same function
    (0.5 (1 + tanh z) = sigmoid(2z)), but not the pattern OpenVINO rewrites into one Gelu op."""
    return x * torch.sigmoid((x + 0.044715 * (x * x * x)) * (2 * (2 / torch.pi) ** 0.5))


def set_openvino_forms(model: nn.Module, on: bool = True) -> nn.Module:
    """Switch `model` to the forms OpenVINO's CPU plugin runs fastest; `on=False` switches back.

    - Self-attention takes the form OpenVINO fuses (Attention._attend_fusable). Cross-attention keeps
      the grouped form: OpenVINO leaves it unfused (its K/V are inputs, not state), and the in-graph
      head repeat would then copy the encoder's K/V at every step (mu-330m, input 2048: decode 55
      tok/s against 79 grouped, interleaved).
    - The decoder's MLPs write their tanh-GELU so that no Gelu op follows the up-projection: the
      plugin fuses a Gelu into its FullyConnected and then runs it on brgemm instead of MLAS, which
      at one token reads 19 GB/s against 28 (make decode-profile; 16 MLP blocks: 23.4 ms fused,
      18.3 ms in this form) but over a 512-token prompt is faster fused. So the encoder keeps the
      fused form (mu-330m's encoder took 1.17x as long without it), and the decoder-only model,
      whose one graph both prefills and decodes, trades prefill for decode (README, "Where
      OpenVINO's decode time goes")."""
    for module in model.modules():  # by block type: an hf: adapter's model has no decoder of ours
        if isinstance(module, Attention):
            module.fusable = on and not module.cross
        elif isinstance(module, DecoderLayer):
            module.mlp.unfused_gelu = on
    return model
