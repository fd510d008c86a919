"""Graphs for the Intel NPU (which compiles static shapes only), built from torch, testable on CPU.

`static` mode (ours; the portable scheme openvino.genai used before NPUW_LLM), batch 1:
- encoder-decoder: an encoder [1,P] (left-padded, mask on real tokens; Mu's encoder positions are
  centred on the real tokens from the mask, so padding moves nothing) and a decode step [1,1].
- decoder-only: a prefill [1,P] (left-padded, mask on real tokens, explicit position_ids 0..n-1 on
  the real tokens) and a decode step [1,1].
- the decode step takes the self-attention KV as explicit tensors of fixed capacity C
  (decoder-only I+P+R-1, encoder-decoder R), a mask [1,C+1] (the last slot is the current token) and
  its position id, and outputs only the new KV row (the runner writes it into its own buffers).
- a vision model (I image tokens) adds the tower `vision.xml` (pixels [1,3,S,S] -> image_embeds
  [1,I,H]); the encoder or prefill takes image_embeds too, and its sequence is I + P slots: the
  image's, the padding, the prompt (the runner's layout, slmbench.runners.openvino.static). A
  request without an image masks the I image slots (the runner's priming request).
Masked slots get exactly zero attention weight, so padding changes no logit; the parity check
runs several prompt lengths from 1 to P (with the image) against the unpadded PyTorch model.

`npuw` mode (decoder-only, NPU only): a stateful IR in the layout the NPU plugin's LLM pipeline
expects: inputs input_ids, attention_mask, position_ids, beam_idx; state past_key_values.i.key ->
present.i.key; logits for every position. Exported from torch (the ONNX graph has no mask input).

The sessions that run these graphs belong to the runner, which passes one in as a factory
(slmbench.exporters.openvino.SessionFactory) for the parity check before caching.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

from slmbench.errors import InvalidOption
from slmbench.exporters import parity
from slmbench.exporters.artifact import Artifact, ArtifactError, ensure_artifact
from slmbench.exporters.onnx import OPSET, kv_layout, kv_names, vision_manifest
from slmbench.exporters.openvino import (
    EXACT_CPU,
    SessionFactory,
    add_beam_idx,
    check_parity,
    exact_session,
    ir_code,
    ir_tower,
    ov_version,
    read_onnx,
    rename_ports,
    save_ir,
    vision_graph,
)
from slmbench.models.spec import ModelSpec

# ---- the graphs ----


def decoder_stack(model, input_ids, position_ids, allowed, past=None, cross=None, cross_allowed=None,
                  image_embeds=None):
    """The decoder layers with explicit positions and visibility, the image's embeddings (if any)
    before the tokens'; returns (hidden [B,T,H], present)."""
    x = model._embed(input_ids, image_embeds)
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
        raise InvalidOption(
            f"{what} graphs are built for slmbench's own architectures (the presets), not hf: checkpoints; "
            "run this checkpoint with --ov-mode stateful"
        )


def static_shapes(cfg, prompt_len: int | None, response_len: int | None, image_tokens: int = 0) -> dict:
    """P, R, the decode step's KV capacity C, and I (vision models only): what the graphs are
    built for and the runner allocates."""
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
    source = image_tokens + prompt_len
    capacity = response_len if cfg.is_encoder_decoder else source + response_len - 1
    need = max(source, response_len) if cfg.is_encoder_decoder else source + response_len
    if need > cfg.max_positions:
        image = f" with {image_tokens} image tokens" if image_tokens else ""
        raise InvalidOption(
            f"static shapes P={prompt_len}, R={response_len}{image} exceed the model's {cfg.max_positions} positions"
        )
    image = {"image_tokens": image_tokens} if image_tokens else {}
    return {"prompt_len": prompt_len, "response_len": response_len, "kv_capacity": capacity, **image}


def static_graphs(cfg, shapes: dict, image_size: int | None = None) -> dict:
    n, p, c = cfg.decoder_layers, shapes["prompt_len"], shapes["kv_capacity"]
    i = shapes.get("image_tokens", 0)
    image = ["image_embeds"] if i else []
    first = {"input_ids": [1, p], "attention_mask": [1, i + p], **({"image_embeds": [1, i, cfg.hidden]} if i else {})}
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
            "inputs": ["input_ids", "attention_mask", *image],
            "outputs": kv_names(n, "cross"),
            "shapes": first,
        }
    else:
        graphs["prefill"] = {
            "file": "prefill.xml",
            "weights": "prefill.bin",
            "inputs": ["input_ids", "attention_mask", "position_ids", *image],
            "outputs": ["logits", "next_token", *kv_names(n, "present")],
            "shapes": first,
        }
    if i:
        graphs["vision"] = {**vision_graph(cfg), "shapes": {"pixel_values": [1, 3, image_size, image_size],
                                                            "image_embeds": [1, i, cfg.hidden]}}
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
        def forward(self, input_ids, attention_mask, *image):
            return tuple(flat(self.model.cross_kv(self.model.encode(input_ids, attention_mask, *image))))

    class Prefill(Wrapper):
        def forward(self, input_ids, attention_mask, position_ids, *image):
            allowed = visible(0, attention_mask.shape[1], attention_mask, input_ids.device)
            x, present = decoder_stack(self.model, input_ids, position_ids, allowed, image_embeds=(*image, None)[0])
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


def export_static(spec: ModelSpec, out: Path, variant: dict, session: SessionFactory) -> dict:
    """Static ONNX graphs from torch, read into OpenVINO and saved as IR; parity on OpenVINO CPU."""
    import torch

    cfg = spec.config
    shapes = static_shapes(cfg, variant["prompt_len"], variant["response_len"], spec.image_tokens)
    p, c, i = shapes["prompt_len"], shapes["kv_capacity"], spec.image_tokens
    graphs = static_graphs(cfg, shapes, spec.image)
    model = spec.build()
    require_native(model, "static")
    encoder, prefill, decode = _wrappers(model, cfg, c)
    ids = lambda t: torch.ones((1, t), dtype=torch.int64)
    kv = lambda t: torch.zeros((1, cfg.kv_heads, t, cfg.head_dim))
    image = [torch.zeros((1, i, cfg.hidden))] if i else []
    decode_args = [ids(1), torch.ones((1, c + 1), dtype=torch.int64), ids(1)]
    if cfg.is_encoder_decoder:
        decode_args += [ids(i + p), *[kv(i + p) for _ in range(2 * cfg.decoder_layers)]]
    decode_args += [kv(c) for _ in range(2 * cfg.decoder_layers)]
    jobs = [("decoder", decode, decode_args)]
    jobs.append(
        ("encoder", encoder, [ids(p), ids(i + p), *image])
        if cfg.is_encoder_decoder
        else ("prefill", prefill, [ids(p), ids(i + p), torch.arange(i + p)[None], *image])
    )
    if i:
        jobs.append(("vision", model.vision, [torch.zeros(graphs["vision"]["shapes"]["pixel_values"])]))
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
    result = static_parity(model, cfg, out, graphs, shapes, session=session)
    vision = vision_manifest(cfg, spec.image)
    return {
        "graphs": graphs,
        "kv": kv_layout(cfg),
        "static": shapes,
        **({"vision": vision} if vision else {}),
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
    *,
    session: SessionFactory,
) -> dict:
    """Logits of the padded static graphs (OpenVINO CPU, f32) against unpadded PyTorch, per length,
    through one session made by `session`; a vision model's with the same image on both sides, after
    its tower's image embeddings on their own (`vision`)."""
    run = exact_session(folder, {"graphs": graphs, "kv": kv_layout(cfg), "static": shapes}, session)
    pixels = parity.parity_image(model, batch=1)
    tower = {}
    if pixels is not None:
        tower["vision"] = parity.check_tower(model, pixels, ir_tower(folder, graphs), "openvino-static", tolerance)
    steps = min(3, shapes["response_len"] - 1)
    per_length, worst = {}, 0.0
    for n in lengths or parity_lengths(shapes["prompt_len"]):
        prompt, forced = parity.parity_inputs(cfg.vocab_size, batch=1, prompt=n, steps=steps, seed=1000 + n)
        result = parity.compare(
            parity.torch_step_logits(model, cfg, prompt, forced, pixels),
            parity.teacher_forced(run, cfg, prompt, forced, pixels),
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
        **tower,
    }
    if not out["passed"]:
        raise parity.ParityError(
            f"static OpenVINO logits differ from PyTorch by {worst:.3g} "
            f"(tolerance {tolerance:g}; per prompt length {per_length})"
        )
    return out


def static_artifact(spec: ModelSpec, prompt_len: int | None, response_len: int | None, session: SessionFactory,
                    cache_dir=None, force: bool = False) -> tuple[Artifact, bool]:
    """The fp32 static graphs of `spec` for (prompt_len, response_len), checked through `session`."""
    variant = {"precision": "fp32", "mode": "static",
               **static_shapes(spec.config, prompt_len, response_len, spec.image_tokens)}
    export = lambda s, out, v: export_static(s, out, v, session)
    return ensure_artifact(spec, "openvino", variant, export, ir_code(__file__), cache_dir, force)


# ---- npuw: the NPU plugin's LLM pipeline input layout (decoder-only) ----


def npuw_names(layers: int) -> dict:
    pairs = {
        f"past_key_values.{i}.{kind}": f"present.{i}.{kind}"
        for i in range(layers)
        for kind in ("key", "value")
    }
    return {
        "inputs": ["input_ids", "attention_mask", "position_ids", "beam_idx"],
        "outputs": ["logits"],
        "states": pairs,
    }


def _npuw_wrapper(model):
    from torch import nn

    class NpuwStep(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
            allowed = visible(past[0].shape[2], input_ids.shape[1], attention_mask, input_ids.device)
            x, present = decoder_stack(self.model, input_ids, position_ids, allowed, pairs)
            return (lm_head(self.model, x), *[t for kv in present for t in kv])

    return NpuwStep().eval()  # the tracer restores the wrapper's training flag onto the model


def export_npuw(spec: ModelSpec, out: Path, variant: dict, session: SessionFactory) -> dict:
    import torch
    from openvino._offline_transformations import apply_make_stateful_transformation

    cfg = spec.config
    if cfg.is_encoder_decoder:
        raise ArtifactError("npuw mode is for decoder-only models; use mode static for an encoder-decoder")
    model = spec.build()
    require_native(model, "npuw")
    names = npuw_names(cfg.decoder_layers)
    past_names, present_names = list(names["states"]), list(names["states"].values())
    b, new, past_len = 2, 3, 4
    args = [
        torch.ones((b, new), dtype=torch.int64),
        torch.ones((b, past_len + new), dtype=torch.int64),
        torch.arange(past_len, past_len + new)[None].expand(b, new).contiguous(),
        *[torch.zeros((b, cfg.kv_heads, past_len, cfg.head_dim)) for _ in past_names],
    ]
    dynamic = {
        "input_ids": {0: "batch", 1: "new"},
        "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "new"},
        "logits": {0: "batch", 1: "new"},
        **{n: {0: "batch", 2: "past"} for n in past_names},
        **{n: {0: "batch", 2: "total"} for n in present_names},
    }
    onnx_inputs = ["input_ids", "attention_mask", "position_ids", *past_names]
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "decoder.onnx"
        torch.onnx.export(
            _npuw_wrapper(model),
            tuple(args),
            str(path),
            input_names=onnx_inputs,
            output_names=["logits", *present_names],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
        decoder = read_onnx(path)
    rename_ports(decoder, onnx_inputs, ["logits", *present_names])
    add_beam_idx(decoder, past_names)
    apply_make_stateful_transformation(decoder, names["states"])
    rename_ports(decoder, names["inputs"], names["outputs"])
    graphs = {"decoder": {"file": "decoder.xml", "weights": "decoder.bin", **names}}
    save_ir(decoder, out / graphs["decoder"]["file"])
    kv = kv_layout(cfg)
    kv.update({"past": "past_key_values.{layer}.{key,value}", "present": "present.{layer}.{key,value}"})
    result = check_parity(model, cfg, out, {"graphs": graphs, "kv": kv}, session,
                          "openvino-npuw-layout(CPU, KV f32)")
    return {
        "graphs": graphs,
        "kv": kv,
        "opset": OPSET,
        "precision": variant["precision"],
        "exporter": "torch.onnx.export (TorchScript) -> OpenVINO, beam_idx, "
        "apply_make_stateful_transformation",
        "versions": {"openvino": ov_version(), "torch": torch.__version__},
        "parity": result,
    }


def npuw_artifact(spec: ModelSpec, session: SessionFactory, cache_dir=None,
                  force: bool = False) -> tuple[Artifact, bool]:
    """The fp32 npuw-layout IR of `spec` (decoder-only), checked through `session`."""
    export = lambda s, out, v: export_npuw(s, out, v, session)
    return ensure_artifact(spec, "openvino", {"precision": "fp32", "mode": "npuw"}, export, ir_code(__file__),
                           cache_dir, force)
