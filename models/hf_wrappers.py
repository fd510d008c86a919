"""Thin adapters that give a transformers checkpoint the step interface of our own architectures.

The exporters and the parity check only know `slmbench.models.families`' interface:
`forward(input_ids, past)` (decoder-only), `encode`, `cross_kv`, `decode` (encoder-decoder) and
`empty_past`, with the KV cache as explicit [batch, kv_heads, seq, head_dim] tensors. transformers
5 keeps the cache in a `DynamicCache` / `EncoderDecoderCache` object, so each step builds one from
the tensors it is given, lets the model's own forward run (and grow it in place), and reads the
tensors back. Under the legacy ONNX tracer that object is plain Python, so the exported graph sees
only tensors.

Hazards handled here (docs/environment.md):
- eager attention only: the sdpa path decides "no mask needed" from the traced shapes (one new
  token), which would bake a mask-free graph that is wrong for the prompt;
- the cache layers are filled directly, never with `update` on an empty layer (that concatenates
  a 1-D placeholder, which does not export);
- eager callers (the torch runner) may pass `cache_len` with preallocated buffers, as for our own
  architectures: a cache layer writes the new rows in place and attention reads the filled prefix;
- cross-attention K/V are projected once in the encoder graph; the decoder finds them in the cache
  already marked as computed, so it never sees the encoder states (a [batch, src, 1] stand-in made
  from the mask supplies the only things the model reads from them: batch, length and dtype).
`load_adapter` checks the adapter's cached steps against the model's own uncached forward before
anyone exports it.
"""

from __future__ import annotations

import inspect
import warnings
from contextlib import contextmanager

import torch
from torch import nn

from slmbench.errors import BenchError
from slmbench.models import reference as parity

# Where each encoder-decoder keeps its cross-attention K/V projections, per decoder layer:
# (layer list under the decoder, cross-attention module within a layer, key proj, value proj).
CROSS_ATTENTION = {
    "t5": ("block", "layer.1.EncDecAttention", "k", "v"),
    "mt5": ("block", "layer.1.EncDecAttention", "k", "v"),
    "bart": ("layers", "encoder_attn", "k_proj", "v_proj"),
    "t5gemma": ("layers", "cross_attn", "k_proj", "v_proj"),
}


# Internals of slmbench's own architectures that some graph builders reach into (the static and
# npuw OpenVINO modes); an adapter has only the step interface.
_OWN_ARCHITECTURE = frozenset(
    {"embed", "rotary", "final_norm", "lm_head", "decoder", "encoder", "encoder_norm"}
)


class StepInterfaceOnly(BenchError, AttributeError):
    """A graph builder needs slmbench's own layers; a checkpoint offers only the step interface.
    An AttributeError too, so `hasattr` stays False instead of raising."""


def dynamic_cache(pairs):
    """A DynamicCache holding exactly these (key, value) tensors, one pair per layer."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    cache = DynamicCache()
    for k, v in pairs:
        layer = DynamicLayer()
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
        cache.layers.append(layer)
    return cache


def preallocated_cache(buffers, filled: int):
    """A DynamicCache over preallocated [B, kv_heads, max_len, D] buffers with `filled` rows: the
    torch runner's `cache_len` contract (new rows written in place, attention reads the prefix)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        def __init__(self, k_buf, v_buf):
            super().__init__()
            self.k_buf, self.v_buf, self.filled = k_buf, v_buf, filled
            self.device, self.is_initialized = k_buf.device, True
            self.keys, self.values = k_buf[:, :, :filled], v_buf[:, :, :filled]

        def update(self, key_states, value_states, *args, **kwargs):
            end = self.filled + key_states.shape[-2]
            self.k_buf[:, :, self.filled : end] = key_states
            self.v_buf[:, :, self.filled : end] = value_states
            self.filled = end
            self.keys, self.values = self.k_buf[:, :, :end], self.v_buf[:, :, :end]
            return self.keys, self.values

    cache = DynamicCache()
    cache.layers.extend(PreallocatedLayer(k, v) for k, v in buffers)
    return cache


def _self_cache(past, cache_len):
    return dynamic_cache(past) if cache_len is None else preallocated_cache(past, cache_len)


def cache_tensors(cache, layers: int):
    found = [(layer.keys, layer.values) for layer in cache.layers]
    if len(found) != layers:
        raise RuntimeError(f"the model returned a cache of {len(found)} layers, expected {layers}")
    return found


def _cache_keyword(model: nn.Module) -> str:
    """transformers 5 renamed past_key_values to cache; accept either."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class _Adapter(nn.Module):
    def __init__(self, hf_model: nn.Module, cfg, model_type: str):
        super().__init__()
        self.hf = hf_model  # a registered submodule: the tracer sees its parameters as weights
        self.cfg = cfg
        self.model_type = model_type
        self._cache_kw = _cache_keyword(hf_model)
        self.reference_parity: dict | None = None

    def __getattr__(self, name: str):
        if name in _OWN_ARCHITECTURE:
            raise StepInterfaceOnly(
                f"{self.model_type} checkpoints (hf:) export only the explicit-KV step "
                "graphs (ONNX, and OpenVINO stateful on CPU/GPU); the static and npuw "
                "modes need one of slmbench's own architectures"
            )
        return super().__getattr__(name)

    def train(self, mode: bool = True):
        """Always inference mode. The legacy ONNX exporter restores the training flag of the module it
        traced, and the exporter's fresh wrappers default to training: that would switch T5/BART
        dropout on for the parity check that follows the export."""
        return super().train(False)

    def empty_past(self, batch: int, dtype: torch.dtype = torch.float32):
        shape = (batch, self.cfg.kv_heads, 0, self.cfg.head_dim)
        return [
            (torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype))
            for _ in range(self.cfg.decoder_layers)
        ]


class DecoderOnlyAdapter(_Adapter):
    def __init__(self, hf_model, cfg, model_type):
        super().__init__(hf_model, cfg, model_type)
        self._keep = "logits_to_keep" in inspect.signature(hf_model.forward).parameters

    def forward(self, input_ids, past, position_ids=None, attention_mask=None, cache_len=None):
        """(logits of the last position [B, V], [(k, v) per layer] including the past). With
        `cache_len` (eager only), `past` are preallocated buffers filled in place."""
        cache = _self_cache(past, cache_len)
        extra = {"logits_to_keep": 1} if self._keep else {}
        out = self.hf(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            use_cache=True,
            **{self._cache_kw: cache},
            **extra,
        )
        return out.logits[:, -1], cache_tensors(cache, self.cfg.decoder_layers)

    def full_forward_logits(self, prompt: torch.Tensor, forced: torch.Tensor) -> list[torch.Tensor]:
        """The model's own uncached forward over prompt + forced tokens, at the steps' positions."""
        ids = torch.cat([prompt, forced], dim=1)
        logits = self.hf(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
        start = prompt.shape[1] - 1
        return [logits[:, start + i] for i in range(forced.shape[1] + 1)]


class EncoderDecoderAdapter(_Adapter):
    def __init__(self, hf_model, cfg, model_type):
        super().__init__(hf_model, cfg, model_type)
        layers_attr, cross_attr, k_attr, v_attr = CROSS_ATTENTION[model_type]
        decoder = hf_model.get_decoder()
        cross = [layer.get_submodule(cross_attr) for layer in decoder.get_submodule(layers_attr)]
        self._cross = [(getattr(m, k_attr), getattr(m, v_attr)) for m in cross]
        if len(self._cross) != cfg.decoder_layers:
            raise RuntimeError(
                f"found {len(self._cross)} cross-attention layers, expected {cfg.decoder_layers}"
            )

    def encode(self, input_ids, attention_mask):
        return self.hf.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def cross_kv(self, hidden):
        """Each decoder layer's cross-attention K/V, exactly as the layer would project them."""
        shape = (*hidden.shape[:2], -1, self.cfg.head_dim)
        return [
            (k(hidden).view(shape).transpose(1, 2), v(hidden).view(shape).transpose(1, 2))
            for k, v in self._cross
        ]

    def decode(
        self, input_ids, encoder_mask, cross, past, position_ids=None, attention_mask=None, cache_len=None
    ):
        from transformers.cache_utils import EncoderDecoderCache
        from transformers.modeling_outputs import BaseModelOutput

        cache = EncoderDecoderCache(_self_cache(past, cache_len), dynamic_cache(cross))
        cache.is_updated = dict.fromkeys(range(len(cross)), True)  # cross K/V given: never re-projected
        stand_in = encoder_mask[:, :, None].to(cross[0][0].dtype)
        kwargs = {"decoder_position_ids": position_ids} if position_ids is not None else {}
        out = self.hf(
            encoder_outputs=BaseModelOutput(last_hidden_state=stand_in),
            attention_mask=encoder_mask,
            decoder_input_ids=input_ids,
            decoder_attention_mask=attention_mask,
            use_cache=True,
            **{self._cache_kw: cache},
            **kwargs,
        )
        return out.logits[:, -1], cache_tensors(cache.self_attention_cache, self.cfg.decoder_layers)

    def forward(self, input_ids, attention_mask, decoder_input_ids):
        """Whole-sequence teacher forcing through the model's own forward (no cache)."""
        return self.hf(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=torch.ones_like(decoder_input_ids),
            use_cache=False,
        ).logits

    def full_forward_logits(self, prompt: torch.Tensor, forced: torch.Tensor) -> list[torch.Tensor]:
        start = torch.full((prompt.shape[0], 1), self.cfg.decoder_start_token, dtype=torch.int64)
        logits = self(prompt, torch.ones_like(prompt), torch.cat([start, forced], dim=1))
        return [logits[:, i] for i in range(forced.shape[1] + 1)]


def check_against_forward(adapter: _Adapter) -> dict:
    """Cached steps through the adapter vs the model's own uncached forward (ParityError if apart)."""
    prompt, forced = parity.parity_inputs(adapter.cfg.vocab_size)
    steps = parity.torch_step_logits(adapter, adapter.cfg, prompt, forced)
    with torch.no_grad():
        full = [
            t.float().numpy()
            for t in adapter.full_forward_logits(torch.from_numpy(prompt), torch.from_numpy(forced))
        ]
    result = parity.compare(full, steps, parity.FP32_TOLERANCE, "transformers forward")
    if not result["passed"]:
        raise parity.ParityError(
            f"{adapter.model_type}: cached steps differ from the model's own forward by "
            f"{result['max_abs_diff']:.3g} (tolerance {parity.FP32_TOLERANCE:g}); "
            "this transformers version is not supported by the adapter"
        )
    return result


@contextmanager
def _quiet_transformers():
    from transformers.utils import logging

    level, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bar:
            logging.enable_progress_bar()


def load_adapter(spec) -> _Adapter:
    """Load an `HFModelSpec`'s checkpoint in float32 with eager attention, wrap it and check it."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    ed = spec.config.is_encoder_decoder
    auto = AutoModelForSeq2SeqLM if ed else AutoModelForCausalLM
    from safetensors import SafetensorError

    from slmbench.models.config import CheckpointError

    try:
        with _quiet_transformers():
            model, info = auto.from_pretrained(
                spec.path,
                dtype=torch.float32,
                attn_implementation="eager",
                local_files_only=True,
                use_safetensors=spec.weights_format == "safetensors",
                weights_only=True,
                trust_remote_code=spec.trust_remote_code,
                output_loading_info=True,
            )
    except (SafetensorError, OSError, ValueError, EOFError, RuntimeError) as exc:  # what a damaged file raises
        message = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"cannot load the weights of {spec.name} ({spec.path}): {type(exc).__name__}: "
                              f"{message}; the checkpoint is damaged or incomplete") from None
    missing = list(info.get("missing_keys") or [])
    if missing:
        warnings.warn(
            f"{spec.name}: {len(missing)} weights missing from the checkpoint were initialised at "
            f"random (e.g. {missing[0]}); latency is unaffected, outputs are not the model's",
            stacklevel=2,
        )
    wrapper = EncoderDecoderAdapter if ed else DecoderOnlyAdapter
    adapter = wrapper(model.eval(), spec.config, spec.model_type)
    adapter.eval()
    adapter.reference_parity = check_against_forward(adapter)
    return adapter
