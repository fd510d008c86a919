"""Analytic cost of a generation, from the architecture config alone (presets and `hf:` alike).

FLOPs count matrix multiplications as 2 per multiply-add, exactly as the dense graphs here execute
them (models/blocks.py): every projection, both attention products over all keys in the cache
(a causal prefill computes the full masked square, as dense attention does), the MLP, and the LM
head on the last position only. Norms, rotary, softmax and activations are left out (elementwise,
well under 1% at these widths); `flop_counter_check` in the tests compares these counts with
torch's own FLOP counter on a tiny model.

A generation of N tokens from an S-token input:
- encoder-decoder: encoder over S, the cross-attention K/V once (per decoder layer), then N
  decoder steps, the first on the start token at position 0 (it yields token 1);
- decoder-only: a prefill over S (it yields token 1), then N - 1 decode steps at positions
  S .. S + N - 2, each attending to every earlier position.
Bytes: weights at the precision's width; the KV cache at `kv_bytes` per element (self and cross);
the largest activation, the attention scores of the encoder or prefill ([heads, S, S] fp32).

A vision model (`image_size` given) first runs its tower over the image (models/vision.py), whose
I image tokens then join the input: the encoder runs over I + S tokens, or the prefill over a
prompt of I + S, and every later step attends to them; the tower's weights are not read while
decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from slmbench.models.config import ArchConfig

BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int4": 0.5}


@dataclass(frozen=True)
class Shapes:
    """The widths every count below is made of."""

    h: int  # hidden
    q: int  # attention inner width (query heads x head dim)
    kv: int  # key/value width (kv heads x head dim)
    mlp: int  # MLP matmul FLOPs per token
    vocab: int
    self_projections: int  # Q, K, V and output projections of one token: 2 FLOPs per weight

    @classmethod
    def of(cls, cfg: ArchConfig) -> Shapes:
        h, f = cfg.hidden, cfg.ffn
        mlp = 2 * ((2 if cfg.gated_mlp else 1) * h * f + f * h)
        return cls(h, cfg.attn_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, mlp, cfg.vocab_size,
                   2 * cfg.attention_parameters)

    @property
    def cross_projections(self) -> int:
        """Cross-attention Q and output projections of one decoder token (K/V come from the encoder)."""
        return 2 * (self.h * self.q + self.q * self.h)

    def attention(self, queries: int, keys: int) -> int:
        """Scores (Q K^T) and weighted values (P V) of `queries` tokens over `keys` keys."""
        return 2 * 2 * queries * keys * self.q

    @property
    def lm_head(self) -> int:
        return 2 * self.h * self.vocab


def vision_flops(cfg: ArchConfig, image_size: int) -> int:
    """The tower over one image (the class token included) and the projector over its tokens."""
    v = cfg.vision
    grid = v.image_tokens(image_size)
    t, w = grid + 1, v.width
    patches = 2 * grid * 3 * v.patch * v.patch * w
    layer = t * 2 * (4 * w * w + 2 * w * v.mlp) + 2 * 2 * t * t * w
    projector = 2 * grid * (w * cfg.hidden + cfg.hidden * cfg.hidden)
    return patches + v.layers * layer + projector


def image_tokens(cfg: ArchConfig, image_size: int | None) -> int:
    """Tokens the image adds to the input (0 for a text model or without an image)."""
    return 0 if image_size is None or cfg.vision is None else cfg.vision.image_tokens(image_size)


def encoder_flops(cfg: ArchConfig, source_len: int) -> int:
    """The encoder over the whole input, bidirectional, plus the cross-attention K/V projections
    every decoder layer computes from it once per request."""
    s = Shapes.of(cfg)
    layer = source_len * (s.self_projections + s.mlp) + s.attention(source_len, source_len)
    cross_kv = cfg.decoder_layers * source_len * 2 * 2 * s.h * s.kv
    return cfg.encoder_layers * layer + cross_kv


def prefill_flops(cfg: ArchConfig, prompt_len: int) -> int:
    """A decoder-only prefill: every layer over the prompt (the full masked square of attention),
    logits for the last position."""
    s = Shapes.of(cfg)
    layer = prompt_len * (s.self_projections + s.mlp) + s.attention(prompt_len, prompt_len)
    return cfg.decoder_layers * layer + s.lm_head


def step_flops(cfg: ArchConfig, position: int, source_len: int = 0) -> int:
    """One decode step of one token at `position` (0-based), attending to position + 1 keys
    (and, encoder-decoder, to `source_len` encoder states), logits included."""
    s = Shapes.of(cfg)
    layer = s.self_projections + s.mlp + s.attention(1, position + 1)
    if cfg.is_encoder_decoder:
        layer += s.cross_projections + s.attention(1, source_len)
    return cfg.decoder_layers * layer + s.lm_head


def generation_flops(cfg: ArchConfig, input_len: int, output_len: int, image_size: int | None = None) -> dict:
    """FLOPs to the first token (the vision tower's included), of the remaining decode steps, and
    in all (batch 1)."""
    vision = vision_flops(cfg, image_size) if image_tokens(cfg, image_size) else 0
    input_len += image_tokens(cfg, image_size)
    if cfg.is_encoder_decoder:
        first = encoder_flops(cfg, input_len) + step_flops(cfg, 0, input_len)
        rest = sum(step_flops(cfg, i, input_len) for i in range(1, output_len))
    else:
        first = prefill_flops(cfg, input_len)
        rest = sum(step_flops(cfg, input_len + i - 1) for i in range(1, output_len))
    return {"first_token_flops": vision + first, "decode_flops": rest, "generation_flops": vision + first + rest,
            **({"vision_flops": vision} if vision else {})}


def kv_cache_bytes(cfg: ArchConfig, length: int, source_len: int = 0, kv_bytes: float = 4) -> dict:
    """The KV cache holding `length` positions of self-attention (and the cross-attention K/V
    of `source_len` encoder states), at `kv_bytes` per element."""
    row = 2 * cfg.kv_heads * cfg.head_dim * cfg.decoder_layers * kv_bytes
    cross = row * source_len if cfg.is_encoder_decoder else 0
    return {"self_kv_bytes": int(row * length), "cross_kv_bytes": int(cross), "kv_bytes": int(row * length + cross)}


def decode_bytes_per_token(cfg: ArchConfig, precision: str = "fp32", position: int = 0, source_len: int = 0) -> dict:
    """Bytes one batch-1 decode step must read: decoder weights, the LM head, and the KV cache.

    The encoder's weights are not read while decoding, nor the embedding table beyond one row
    (but a tied LM head reads the whole table). KV bytes count fp32 caches at `position`.
    """
    weights = cfg.language_parameters()  # a vision tower runs once per request, before the first token
    if cfg.is_encoder_decoder:
        encoder = cfg.encoder_layers * cfg.encoder_layer_parameters + cfg.hidden  # with its final norm
        cross_kv = cfg.decoder_layers * 2 * cfg.hidden * cfg.kv_heads * cfg.head_dim
        weights -= encoder + cross_kv  # cross K/V projections run once per request, not per token
    if not cfg.tie_embeddings:
        weights -= cfg.vocab_size * cfg.hidden  # the input table is looked up, not streamed
    kv_bytes = kv_cache_bytes(cfg, position, source_len)["kv_bytes"]
    weight_bytes = weights * BYTES_PER_PARAM[precision]
    return {"weight_bytes": int(weight_bytes), "kv_bytes": int(kv_bytes),
            "bytes_per_token": int(weight_bytes + kv_bytes)}


def mean_decode_bytes(cfg: ArchConfig, precision: str, input_len: int, output_len: int,
                      image_size: int | None = None) -> dict:
    """decode_bytes_per_token at the mean position of a generation: what a decode-throughput
    ceiling is read against (host/roofline.py). The image's tokens count as input."""
    input_len += image_tokens(cfg, image_size)
    if cfg.is_encoder_decoder:
        return decode_bytes_per_token(cfg, precision, position=output_len // 2, source_len=input_len)
    return decode_bytes_per_token(cfg, precision, position=input_len + output_len // 2)


def generation_cost(cfg: ArchConfig, input_len: int, output_len: int, precision: str = "fp32",
                    kv_bytes: float = 4, image_size: int | None = None) -> dict:
    """Everything analytic about one batch-1 generation: FLOPs, weight bytes, KV bytes at the end,
    and the largest activation (the encoder's or the prefill's attention scores, fp32)."""
    flops = generation_flops(cfg, input_len, output_len, image_size)
    input_len += image_tokens(cfg, image_size)
    weights = cfg.parameter_count()
    self_len = output_len if cfg.is_encoder_decoder else input_len + output_len - 1
    kv = kv_cache_bytes(cfg, self_len, input_len, kv_bytes)
    scores = 4 * cfg.attn_heads * input_len * input_len
    return {**flops, "parameters": weights,
            "weight_bytes": int(weights * BYTES_PER_PARAM[precision]), **kv,
            "attention_scores_bytes": scores,
            "peak_memory_bytes": int(weights * BYTES_PER_PARAM[precision]) + kv["kv_bytes"] + scores}


def pair_ratios(encoder_decoder: dict, decoder_only: dict) -> dict:
    """Encoder-decoder / decoder-only for the paper's two other claims: generation FLOPs (it
    reports 22% fewer) and memory (11-16% less), with weights and KV separately."""
    ratio = lambda key: encoder_decoder[key] / decoder_only[key] if decoder_only[key] else None
    return {"first_token_flops": ratio("first_token_flops"), "decode_flops": ratio("decode_flops"),
            "generation_flops": ratio("generation_flops"), "weight_bytes": ratio("weight_bytes"),
            "kv_bytes": ratio("kv_bytes"), "peak_memory_bytes": ratio("peak_memory_bytes")}
