"""Static shapes for the Intel NPU (which compiles static shapes only), testable on CPU.

`static` mode (ours; the portable scheme openvino.genai used before NPUW_LLM), batch 1:
- encoder-decoder: an encoder [1,P] (left-padded, mask on real tokens; Mu's encoder positions are
  centred on the real tokens from the mask, so padding moves nothing) and a decode step [1,1].
- decoder-only: a prefill [1,P] (left-padded, mask on real tokens, explicit position_ids 0..n-1 on
  the real tokens) and a decode step [1,1].
- the decode step takes the self-attention KV as explicit tensors of fixed capacity C
  (decoder-only P+R-1, encoder-decoder R), a mask [1,C+1] (the last slot is the current token) and
  its position id, and outputs only the new KV row. The harness keeps one preallocated buffer per
  KV tensor, bound to the request once, and writes each new row into the next slot: no per-step
  full-cache copy and no tensor that changes shape.
Masked slots get exactly zero attention weight, so padding changes no logit; the parity check
runs several prompt lengths from 1 to P against the unpadded PyTorch model.

`npuw` mode helpers (decoder-only, NPU only): the NPU plugin's LLM pipeline configuration and the
by-name i64 input feeding it needs; the IR itself comes from slmbench.exporters.openvino.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np

from slmbench.errors import InvalidOption
from slmbench.exporters import parity
from slmbench.exporters.artifact import ArtifactError
from slmbench.exporters.onnx import OPSET, kv_layout, kv_names

# ---- the graphs ----


def decoder_stack(model, input_ids, position_ids, allowed, past=None, cross=None, cross_allowed=None):
    """The decoder layers with explicit positions and visibility; returns (hidden [B,T,H], present)."""
    x = model.embed(input_ids)
    rope = model.rotary(position_ids, x.dtype)
    present = []
    for i, layer in enumerate(model.decoder):
        pk, pv = past[i] if past is not None else (None, None)
        ck, cv = cross[i] if cross is not None else (None, None)
        x, k, v = layer(x, rope, allowed, pk, pv, ck, cv, cross_allowed)
        present.append((k, v))
    return x, present


def visible(past_len, new_len: int, attention_mask, device):
    """`causal_allowed` plus each query's own slot. Real queries see themselves already, so no logit
    changes; but a padded query would otherwise have every key masked, and in fp16 (the NPU) f32's
    lowest fill value becomes -inf: that row's softmax is NaN, its K/V are NaN, and later layers
    spread it through 0 * NaN even where it is masked (HF's exports unmask such rows likewise)."""
    import torch

    from slmbench.models.blocks import causal_allowed

    allowed = causal_allowed(past_len, new_len, attention_mask, device)
    keys = torch.arange(past_len + new_len, device=device)
    queries = torch.arange(new_len, device=device) + past_len
    return allowed | (keys[None, :] == queries[:, None])[None, None, None]


def lm_head(model, x):
    """Logits for hidden states x [..., H] (tied or separate head), as the model computes them."""
    weight = model.embed.weight if model.lm_head is None else model.lm_head.weight
    return model.final_norm(x) @ weight.t()


def require_native(model, what: str) -> None:
    """The static and npuw graphs are built from our own blocks (explicit positions and masks)."""
    from slmbench.models.families import DecoderOnly, EncoderDecoder

    if not isinstance(model, DecoderOnly | EncoderDecoder):
        from slmbench.errors import InvalidOption

        raise InvalidOption(
            f"{what} graphs are built for slmbench's own architectures (the presets), not hf: checkpoints; "
            "run this checkpoint with --ov-mode stateful"
        )


def static_shapes(cfg, prompt_len: int | None, response_len: int | None) -> dict:
    if (
        not isinstance(prompt_len, int)
        or not isinstance(response_len, int)
        or prompt_len < 1
        or response_len < 1
    ):
        raise InvalidOption(
            f"static mode needs a prompt length and a response length >= 1 "
            f"(got {prompt_len!r}, {response_len!r})"
        )
    capacity = response_len if cfg.is_encoder_decoder else prompt_len + response_len - 1
    need = max(prompt_len, response_len) if cfg.is_encoder_decoder else prompt_len + response_len
    if need > cfg.max_positions:
        raise InvalidOption(
            f"static shapes P={prompt_len}, R={response_len} exceed the model's {cfg.max_positions} positions"
        )
    return {"prompt_len": prompt_len, "response_len": response_len, "kv_capacity": capacity}


def static_graphs(cfg, shapes: dict) -> dict:
    n, p, c = cfg.decoder_layers, shapes["prompt_len"], shapes["kv_capacity"]
    past, new = kv_names(n, "past"), kv_names(n, "new")
    decode_in = ["input_ids", "attention_mask", "position_ids"]
    if cfg.is_encoder_decoder:
        decode_in += ["encoder_attention_mask", *kv_names(n, "cross")]
    graphs = {
        "decoder": {
            "file": "decoder.xml",
            "weights": "decoder.bin",
            "inputs": decode_in + past,
            "outputs": ["logits", "next_token", *new],
            "shapes": {
                "input_ids": [1, 1],
                "attention_mask": [1, c + 1],
                "past": [1, cfg.kv_heads, c, cfg.head_dim],
            },
        }
    }
    if cfg.is_encoder_decoder:
        graphs["encoder"] = {
            "file": "encoder.xml",
            "weights": "encoder.bin",
            "inputs": ["input_ids", "attention_mask"],
            "outputs": kv_names(n, "cross"),
            "shapes": {"input_ids": [1, p]},
        }
    else:
        graphs["prefill"] = {
            "file": "prefill.xml",
            "weights": "prefill.bin",
            "inputs": ["input_ids", "attention_mask", "position_ids"],
            "outputs": ["logits", "next_token", *kv_names(n, "present")],
            "shapes": {"input_ids": [1, p]},
        }
    return graphs


def _wrappers(model, cfg, capacity: int):
    import torch
    from torch import nn

    from slmbench.models.blocks import key_allowed

    n = cfg.decoder_layers
    pairs = lambda flat: [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
    flat = lambda kv: [t for pair in kv for t in pair]

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

    class Encoder(Wrapper):
        def forward(self, input_ids, attention_mask):
            return tuple(flat(self.model.cross_kv(self.model.encode(input_ids, attention_mask))))

    class Prefill(Wrapper):
        def forward(self, input_ids, attention_mask, position_ids):
            allowed = visible(0, input_ids.shape[1], attention_mask, input_ids.device)
            x, present = decoder_stack(self.model, input_ids, position_ids, allowed)
            logits = lm_head(self.model, x[:, -1])  # left padding: the last slot is the last real token
            return (logits, torch.argmax(logits, -1), *flat(present))

    class Decode(Wrapper):
        def forward(self, input_ids, attention_mask, position_ids, *rest):
            cross, cross_allowed = None, None
            if cfg.is_encoder_decoder:
                cross_allowed, cross, rest = (
                    key_allowed(rest[0]),
                    pairs(rest[1 : 1 + 2 * n]),
                    rest[1 + 2 * n :],
                )
            allowed = visible(capacity, 1, attention_mask, input_ids.device)
            x, present = decoder_stack(
                self.model, input_ids, position_ids, allowed, pairs(rest), cross, cross_allowed
            )
            logits = lm_head(self.model, x[:, -1])
            return (logits, torch.argmax(logits, -1), *[t[:, :, -1:] for t in flat(present)])

    # eval(): the tracer restores a wrapper's training flag onto the model it wraps afterwards
    return Encoder().eval(), Prefill().eval(), Decode().eval()


def export_static(spec, out: Path, variant: dict) -> dict:
    """Static ONNX graphs from torch, read into OpenVINO and saved as IR; parity on OpenVINO CPU."""
    import torch

    from slmbench.exporters.openvino import EXACT_CPU, ov_version, read_onnx, rename_ports, save_ir

    cfg = spec.config
    shapes = {k: variant[k] for k in ("prompt_len", "response_len", "kv_capacity")}
    p, c = shapes["prompt_len"], shapes["kv_capacity"]
    graphs = static_graphs(cfg, shapes)
    model = spec.build()
    require_native(model, "static")
    encoder, prefill, decode = _wrappers(model, cfg, c)
    ids = lambda t: torch.ones((1, t), dtype=torch.int64)
    kv = lambda t: torch.zeros((1, cfg.kv_heads, t, cfg.head_dim))
    decode_args = [ids(1), torch.ones((1, c + 1), dtype=torch.int64), ids(1)]
    if cfg.is_encoder_decoder:
        decode_args += [ids(p), *[kv(p) for _ in range(2 * cfg.decoder_layers)]]
    decode_args += [kv(c) for _ in range(2 * cfg.decoder_layers)]
    jobs = [("decoder", decode, decode_args)]
    jobs.append(
        ("encoder", encoder, [ids(p), ids(p)])
        if cfg.is_encoder_decoder
        else ("prefill", prefill, [ids(p), ids(p), torch.arange(p)[None]])
    )
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for role, module, args in jobs:
            graph, path = graphs[role], Path(tmp) / f"{role}.onnx"
            torch.onnx.export(
                module,
                tuple(args),
                str(path),
                input_names=graph["inputs"],
                output_names=graph["outputs"],
                opset_version=OPSET,
                dynamo=False,
                do_constant_folding=True,
            )
            ir = read_onnx(path)
            rename_ports(ir, graph["inputs"], graph["outputs"])
            for port in ir.inputs:
                if port.get_partial_shape().is_dynamic:
                    raise ArtifactError(f"static {role} input {port.get_any_name()} is dynamic")
            save_ir(ir, out / graph["file"])
    result = static_parity(model, cfg, out, graphs, shapes)
    return {
        "graphs": graphs,
        "kv": kv_layout(cfg),
        "static": shapes,
        "opset": OPSET,
        "precision": variant["precision"],
        "exporter": "torch.onnx.export (TorchScript, static shapes) -> OpenVINO IR",
        "versions": {"openvino": ov_version(), "torch": torch.__version__},
        "parity": {**result, "config": dict(EXACT_CPU)},
    }


def parity_lengths(prompt_len: int) -> list[int]:
    """Prompt lengths the static parity covers: 1, one in the middle, and P itself."""
    return sorted({1, max(1, prompt_len // 2), prompt_len})


def static_parity(
    model,
    cfg,
    folder: Path,
    graphs: dict,
    shapes: dict,
    lengths=None,
    tolerance: float = parity.FP32_TOLERANCE,
) -> dict:
    """Logits of the padded static graphs (OpenVINO CPU, f32) against unpadded PyTorch, per length."""
    from slmbench.exporters.openvino import compile_exact

    compiled = {role: compile_exact(folder / g["file"]) for role, g in graphs.items()}
    session = StaticSession(compiled, graphs, shapes, kv_layout(cfg), cfg.is_encoder_decoder)
    steps = min(3, shapes["response_len"] - 1)
    per_length, worst = {}, 0.0
    for n in lengths or parity_lengths(shapes["prompt_len"]):
        prompt, forced = parity.parity_inputs(cfg.vocab_size, batch=1, prompt=n, steps=steps, seed=1000 + n)
        result = parity.compare(
            parity.torch_step_logits(model, cfg, prompt, forced),
            parity.teacher_forced(session, cfg, prompt, forced),
            tolerance,
            "openvino-static",
        )
        per_length[str(n)] = result["max_abs_diff"]
        worst = max(worst, result["max_abs_diff"])
    out = {
        "runtime": "openvino-static(CPU, f32)",
        "steps": steps + 1,
        "batch": 1,
        "lengths": per_length,
        "max_abs_diff": worst,
        "tolerance": tolerance,
        "passed": worst <= tolerance,
    }
    if not out["passed"]:
        raise parity.ParityError(
            f"static OpenVINO logits differ from PyTorch by {worst:.3g} "
            f"(tolerance {tolerance:g}; per prompt length {per_length})"
        )
    return out


# ---- the harness ----


def _run(request) -> None:
    """Infer without the Python wrapper's copy of every output into a dict."""
    request.start_async()
    request.wait()


class StaticSession:
    """Batch-1 generation over the static graphs with preallocated, once-bound buffers."""

    def __init__(self, compiled: dict, graphs: dict, shapes: dict, kv: dict, encoder_decoder: bool):
        import openvino as ov

        self._ov = ov
        self.encoder_decoder = encoder_decoder
        self.p, self.r, self.c = shapes["prompt_len"], shapes["response_len"], shapes["kv_capacity"]
        layers, h, d = kv["layers"], kv["kv_heads"], kv["head_dim"]
        self._tensors = []  # keeps every shared buffer's ov.Tensor alive
        self.past = {name: np.zeros((1, h, self.c, d), np.float32) for name in kv_names(layers, "past")}
        self.ids, self.pos = np.zeros((1, 1), np.int64), np.zeros((1, 1), np.int64)
        self.mask = np.zeros((1, self.c + 1), np.int64)
        self.dec = compiled["decoder"].create_infer_request()
        self._require(compiled["decoder"], graphs["decoder"]["inputs"], "static decoder")
        self._dec_inputs = set(graphs["decoder"]["inputs"])
        self._bound: set[str] = set()
        self._bind(
            self.dec,
            {"input_ids": self.ids, "attention_mask": self.mask, "position_ids": self.pos, **self.past},
            self._bound,
        )
        self.new_rows = [
            (name, compiled["decoder"].output(name.replace("past_", "new_", 1))) for name in self.past
        ]
        self.dec_out = compiled["decoder"].output("next_token"), compiled["decoder"].output("logits")
        if encoder_decoder:
            self.enc = compiled["encoder"].create_infer_request()
            self.src, self.src_mask = np.zeros((1, self.p), np.int64), np.zeros((1, self.p), np.int64)
            enc_bound: set[str] = set()
            self._bind(self.enc, {"input_ids": self.src, "attention_mask": self.src_mask}, enc_bound)
            self._require(compiled["encoder"], enc_bound, "static encoder")
            self._bind(self.dec, {"encoder_attention_mask": self.src_mask}, self._bound)
            self.cross = kv_names(layers, "cross")
        else:
            self.pre = compiled["prefill"].create_infer_request()
            self.pre_ids, self.pre_mask, self.pre_pos = (np.zeros((1, self.p), np.int64) for _ in range(3))
            pre_bound: set[str] = set()
            self._bind(
                self.pre,
                {"input_ids": self.pre_ids, "attention_mask": self.pre_mask, "position_ids": self.pre_pos},
                pre_bound,
            )
            self._require(compiled["prefill"], pre_bound, "static prefill")
            self.present = [
                (name, compiled["prefill"].output(name.replace("past_", "present_", 1))) for name in self.past
            ]
            self.pre_out = compiled["prefill"].output("next_token"), compiled["prefill"].output("logits")

    def _bind(self, request, arrays: dict, bound: set) -> None:
        for name, array in arrays.items():
            tensor = self._ov.Tensor(array, shared_memory=True)
            self._tensors.append(tensor)
            request.set_tensor(name, tensor)
            bound.add(name)

    @staticmethod
    def _require(compiled, bound: set, what: str) -> None:
        from slmbench.exporters.openvino import require_inputs

        require_inputs(compiled, bound, what)

    def start(self, input_ids: np.ndarray, max_new_tokens: int) -> None:
        batch, n = input_ids.shape
        if batch != 1:
            raise InvalidOption(f"static mode runs batch 1, got batch {batch}")
        if n > self.p:
            raise InvalidOption(
                f"a prompt of {n} tokens exceeds the static prompt length {self.p}; export for a longer input"
            )
        if max_new_tokens > self.r:
            raise InvalidOption(f"{max_new_tokens} new tokens exceed the static response length {self.r}")
        # Slots of an earlier request keep finite values and are masked out: no need to zero them.
        self.mask[...] = 0
        self.mask[0, self.c] = 1  # the current token's own key (the graph appends it last)
        self.n = n
        self.slot = 0 if self.encoder_decoder else self.p
        self.position = 0 if self.encoder_decoder else n
        self.prefilled = self.encoder_decoder
        self._checked = False
        self._last = None

    def encode(self, input_ids: np.ndarray) -> None:
        n = input_ids.shape[1]
        self.src[...] = 0
        self.src[0, self.p - n :] = input_ids[0]
        self.src_mask[...] = 0
        self.src_mask[0, self.p - n :] = 1
        _run(self.enc)
        for name in self.cross:  # the encoder's own output tensors, bound once per request
            self.dec.set_tensor(name, self.enc.get_tensor(name))
        self._bound.update(self.cross)

    def _prefill(self, input_ids: np.ndarray) -> np.ndarray:
        n, p = input_ids.shape[1], self.p
        self.pre_ids[...] = 0
        self.pre_ids[0, p - n :] = input_ids[0]
        self.pre_mask[...] = 0
        self.pre_mask[0, p - n :] = 1
        self.pre_pos[...] = 0
        self.pre_pos[0, p - n :] = np.arange(n)
        _run(self.pre)
        for name, port in self.present:
            self.past[name][:, :, :p] = self.pre.get_tensor(port).data
        self.mask[0, :p] = self.pre_mask[0]
        self.prefilled = True
        self._last = self.pre, self.pre_out[1]
        return self.pre.get_tensor(self.pre_out[0]).data.copy()

    def decode(self, input_ids: np.ndarray) -> np.ndarray:
        if not self.prefilled:
            return self._prefill(input_ids)
        if not self._checked:
            if self._bound != self._dec_inputs:
                raise ArtifactError(
                    f"static decoder inputs {sorted(self._dec_inputs - self._bound)} were not fed"
                )
            self._checked = True
        if self.slot >= self.c:
            raise InvalidOption(f"the static KV capacity ({self.c}) is full")
        self.ids[0, 0] = input_ids[0, 0]
        self.pos[0, 0] = self.position
        _run(self.dec)
        slot = self.slot
        for name, port in self.new_rows:
            self.past[name][:, :, slot] = self.dec.get_tensor(port).data[:, :, 0]
        self.mask[0, slot] = 1
        self.slot += 1
        self.position += 1
        self._last = self.dec, self.dec_out[1]
        return self.dec.get_tensor(self.dec_out[0]).data.copy()

    def logits(self) -> np.ndarray:
        request, port = self._last
        return request.get_tensor(port).data.copy()


# ---- npuw: the NPU plugin's own LLM pipeline ----

NPUW_PREFILL_HINTS = ("STATIC", "DYNAMIC")


def align64(n: int) -> int:
    return (n + 63) // 64 * 64


def npuw_config(
    max_prompt_len: int,
    min_response_len: int,
    prefill_hint: str | None = None,
    seq_len_dim: int = 2,
    batch_dim: int = 0,
) -> dict[str, str]:
    """`compile_model(ir, "NPU", config)` splits a stateful decoder-only IR into a static prefill
    [1, align64(P)] and a static generate model [1,1] with KV capacity align64(P) + align64(R)."""
    for name, value in (("max prompt length", max_prompt_len), ("min response length", min_response_len)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidOption(f"npuw {name} must be a positive integer, got {value!r}")
    config = {
        "NPU_USE_NPUW": "YES",
        "NPUW_LLM": "YES",
        "NPUW_LLM_BATCH_DIM": str(batch_dim),
        "NPUW_LLM_SEQ_LEN_DIM": str(seq_len_dim),
        "NPUW_LLM_MAX_PROMPT_LEN": str(max_prompt_len),
        "NPUW_LLM_MIN_RESPONSE_LEN": str(min_response_len),
    }
    if prefill_hint is not None:
        hint = str(prefill_hint).upper()
        if hint not in NPUW_PREFILL_HINTS:
            raise InvalidOption(
                f"npuw prefill hint must be one of {', '.join(NPUW_PREFILL_HINTS)}, got {prefill_hint!r}"
            )
        config["NPUW_LLM_PREFILL_HINT"] = hint
    return config


def npuw_capacity(max_prompt_len: int, min_response_len: int) -> int:
    return align64(max_prompt_len) + align64(min_response_len)


_I64_INPUTS = ("input_ids", "attention_mask", "position_ids")


def npuw_inputs(
    input_types: dict[str, np.dtype], input_ids: np.ndarray, past_len: int
) -> dict[str, np.ndarray]:
    """Every input of a npuw-layout model, by name: ids, a mask of ones over past + current,
    positions past..past+T-1 (all i64) and beam_idx (identity) where the model has it."""
    batch, new = input_ids.shape
    feed = {
        "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
        "attention_mask": np.ones((batch, past_len + new), np.int64),
        "position_ids": np.ascontiguousarray(
            np.broadcast_to(np.arange(past_len, past_len + new, dtype=np.int64), (batch, new))
        ),
    }
    for name in _I64_INPUTS:
        if name not in input_types:
            raise ArtifactError(f"npuw model has no {name} input (inputs: {sorted(input_types)})")
        if np.dtype(input_types[name]) != np.int64:
            raise ArtifactError(
                f"npuw model input {name} is {np.dtype(input_types[name])}; the NPU pipeline needs i64"
            )
    if "beam_idx" in input_types:
        feed["beam_idx"] = np.arange(batch, dtype=input_types["beam_idx"])
    unknown = sorted(set(input_types) - set(feed))
    if unknown:
        raise ArtifactError(
            f"npuw model inputs {unknown} have no feeding rule (they would get empty tensors)"
        )
    return feed


class NpuwSession:
    """Generation over a npuw-layout stateful IR: compiled for NPU with `npuw_config`, or on CPU
    as a plain stateful model (how the parity check exercises the same IR and feeding)."""

    def __init__(self, compiled, kv: dict, inputs: list[str]):
        import openvino as ov

        from slmbench.exporters.openvino import match_ports

        self._ov = ov
        self.request = compiled.create_infer_request()
        self.types = {
            name: port.get_element_type().to_dtype()
            for name, port in zip(
                match_ports(compiled.inputs, inputs, "npuw model"), compiled.inputs, strict=True
            )
        }
        self._logits = compiled.output("logits")
        self.kv = kv

    def start(self, input_ids: np.ndarray, max_new_tokens: int) -> None:
        batch = input_ids.shape[0]
        self.request.reset_state()
        empty = self._ov.Tensor(np.zeros((batch, self.kv["kv_heads"], 0, self.kv["head_dim"]), np.float32))
        for state in self.request.query_state():
            if state.name.startswith("past_key_values"):
                state.state = empty
        self.past_len = 0

    def decode(self, input_ids: np.ndarray) -> np.ndarray:
        for name, array in npuw_inputs(self.types, input_ids, self.past_len).items():
            self.request.set_tensor(name, self._ov.Tensor(array))
        _run(self.request)
        self.past_len += input_ids.shape[1]
        return np.argmax(self.request.get_tensor(self._logits).data[:, -1], -1)

    def logits(self) -> np.ndarray:
        return self.request.get_tensor(self._logits).data[:, -1].copy()
