"""OpenVINO IR export, and the stateful session that both the parity check and the runner use.

Modes (an artifact's `variant.mode`, recorded in every result row):
- `stateful` (CPU, GPU): the ONNX artifact's graphs read into OpenVINO and saved as IR, with the
  decoder's self-attention KV turned into OpenVINO state (past_* inputs -> present_* outputs), so
  the cache never crosses the API between steps. The encoder (encoder-decoder) computes the
  cross-attention K/V once per request; they stay bound to the decoder until the next request.
- `npuw` (decoder-only, Intel NPU): a stateful IR in the layout the NPU plugin's LLM pipeline
  expects: inputs input_ids, attention_mask, position_ids, beam_idx; state past_key_values.i.key ->
  present.i.key; logits for every position. Exported from torch (the ONNX graph has no mask input).
- `static`: static-shape graphs with the KV cache as explicit tensors (slmbench.exporters.static).

OpenVINO traps handled here (DESIGN.md section 4): an input that is not set is silently fed an
empty tensor, so every input is fed by name and checked; a port may carry internal aliases, so
each port is renamed to exactly its manifest name; the CPU plugin defaults to a u8 KV cache and,
on AMX/AVX-512-BF16 machines, to bf16 inference, so both are set explicitly (f32 for parity).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np

from slmbench.exporters import parity
from slmbench.exporters.artifact import Artifact, ArtifactError, code_digest, ensure_artifact
from slmbench.exporters.onnx import OPSET, io_names, kv_layout, kv_names
from slmbench.models.spec import ModelSpec

MODES = ("stateful", "static", "npuw")
PRECISIONS = ("fp32", "fp16", "int8", "int4")  # fp32 here; the others derive from it (compress_openvino.py)
# What the parity check compiles with on CPU: no u8 KV cache, no bf16 matmuls.
EXACT_CPU = {"KV_CACHE_PRECISION": "f32", "INFERENCE_PRECISION_HINT": "f32"}


def ov_version() -> str:
    import openvino

    return openvino.get_version()


def rename_ports(model, inputs: list[str], outputs: list[str]) -> None:
    """Give every port exactly one name, its manifest name; fail on a port that has none."""
    for kind, ports, wanted in (("input", model.inputs, inputs), ("output", model.outputs, outputs)):
        found = []
        for port in ports:
            names = port.get_names() & set(wanted)
            if len(names) != 1:
                raise ArtifactError(
                    f"OpenVINO {kind} port named {sorted(port.get_names())} matches "
                    f"{sorted(names) or 'none'} of the expected names {wanted}"
                )
            name = names.pop()
            port.get_tensor().set_names({name})
            found.append(name)
        if sorted(found) != sorted(wanted):
            raise ArtifactError(f"OpenVINO {kind}s are {sorted(found)}, expected {sorted(wanted)}")


def match_ports(ports, expected, what: str) -> list[str]:
    """The expected name of each port. Compiled ports may gain aliases (a removed Convert hands its
    name on), so a port is identified by the one expected name among its names."""
    found = []
    for port in ports:
        names = port.get_names() & set(expected)
        if len(names) != 1:
            raise ArtifactError(
                f"{what}: port named {sorted(port.get_names())} matches "
                f"{sorted(names) or 'none'} of {sorted(expected)} (it would not be fed by name; "
                "OpenVINO would silently use an empty tensor)"
            )
        found.append(names.pop())
    missing = sorted(set(expected) - set(found))
    if missing:
        raise ArtifactError(f"{what}: no port named {missing}")
    return found


def save_ir(model, path: Path) -> None:
    import openvino as ov

    ov.save_model(model, str(path), compress_to_fp16=False)  # the default would halve the weights


def read_onnx(path: Path):
    import openvino as ov

    return ov.Core().read_model(str(path))


def compile_exact(path: Path):
    """Compile on CPU with f32 everywhere: what the parity checks run."""
    import openvino as ov

    return ov.Core().compile_model(str(path), "CPU", dict(EXACT_CPU))


def require_fed(fed: set[str], inputs: set[str]) -> None:
    """OpenVINO silently uses an empty tensor for an input that is not fed: refuse that."""
    if fed != inputs:
        raise ArtifactError(f"decoder inputs {sorted(inputs - fed)} were not fed (OpenVINO would silently use "
                            "empty tensors)")


def require_inputs(compiled, fed, what: str) -> None:
    """Refuse a compiled model whose inputs are not exactly the ones this code feeds by name."""
    match_ports(compiled.inputs, list(fed), what)


class StatefulSession:
    """One request at a time over a compiled stateful decoder (and encoder).

    The prompt's ids go in once; each later step writes its one token id into a preallocated
    buffer already bound to the request, so a step sets no tensor. Only `next_token` (in-graph
    argmax) is read back.
    """

    def __init__(self, decoder, encoder, kv: dict, inputs: list[str]):
        import openvino as ov

        self._ov = ov
        require_inputs(decoder, inputs, "stateful decoder")
        self.request = decoder.create_infer_request()
        self.encoder = encoder.create_infer_request() if encoder is not None else None
        self.inputs = set(inputs)
        self.cross = sorted(n for n in self.inputs if n.startswith("cross_"))
        self.states = list(self.request.query_state())
        if len(self.states) != 2 * kv["layers"]:
            raise ArtifactError(
                f"stateful decoder has {len(self.states)} states, expected {2 * kv['layers']}"
            )
        self.kv = kv
        self._next = decoder.output("next_token")
        self._logits = decoder.output("logits")
        if encoder is not None:
            require_inputs(encoder, ["input_ids", "attention_mask"], "encoder")

    def _set(self, name: str, tensor) -> None:
        self.request.set_tensor(name, tensor)
        self._fed.add(name)

    def start(self, input_ids: np.ndarray, max_new_tokens: int) -> None:
        """Reset the cache: empty [batch, kv_heads, 0, head_dim] states (after reset_state alone
        a state has batch 0 and the first concat fails)."""
        batch = input_ids.shape[0]
        self.request.reset_state()
        empty = self._ov.Tensor(np.zeros((batch, self.kv["kv_heads"], 0, self.kv["head_dim"]), np.float32))
        for state in self.states:
            state.state = empty
        self._step = np.zeros((batch, 1), np.int64)
        self._step_tensor = self._ov.Tensor(self._step, shared_memory=True)
        self._step_bound = False
        self._fed: set[str] = set()
        self._checked = False

    def encode(self, input_ids: np.ndarray) -> None:
        ov, enc = self._ov, self.encoder
        mask = ov.Tensor(np.ones_like(input_ids))
        enc.set_tensor("input_ids", ov.Tensor(np.ascontiguousarray(input_ids)))
        enc.set_tensor("attention_mask", mask)
        enc.start_async()
        enc.wait()
        for name in self.cross:  # bound once per request: the decoder reads the encoder's own outputs
            self._set(name, enc.get_tensor(name))
        self._set("encoder_attention_mask", mask)

    def decode(self, input_ids: np.ndarray) -> np.ndarray:
        if input_ids.shape[1] == 1:
            self._step[...] = input_ids
            if not self._step_bound:
                self._set("input_ids", self._step_tensor)
                self._step_bound = True
        else:
            self._set("input_ids", self._ov.Tensor(np.ascontiguousarray(input_ids)))
            self._step_bound = False
        if not self._checked:
            require_fed(self._fed, self.inputs)
            self._checked = True
        self.request.start_async()
        self.request.wait()
        return self.request.get_tensor(self._next).data.copy()

    def logits(self) -> np.ndarray:
        return self.request.get_tensor(self._logits).data.copy()

    def bare_generate(self, input_ids: np.ndarray, output_len: int, start_token: int):
        """The floor for harness overhead (slmbench.tools.overhead): the same requests, tensors and
        buffers as encode/decode, driven by a plain loop of OpenVINO's own calls. Keep in step
        with decode(). Returns (timestamps_ns from t_0, encoder end or None, tokens)."""
        import time

        self.start(input_ids, output_len)
        request, clock, step = self.request, time.perf_counter_ns, self._step
        first = np.full((input_ids.shape[0], 1), start_token, np.int64) if self.encoder is not None else input_ids
        tokens = np.empty((input_ids.shape[0], output_len), np.int64)
        stamps = [0] * (output_len + 1)
        encoder_end = None
        t0 = stamps[0] = clock()
        if self.encoder is not None:
            self.encode(input_ids)
            encoder_end = clock()
        request.set_tensor("input_ids", self._ov.Tensor(np.ascontiguousarray(first)))
        self._fed.add("input_ids")
        require_fed(self._fed, self.inputs)
        next_token = self._next
        for i in range(output_len):
            request.start_async()
            request.wait()
            step[:, 0] = tokens[:, i] = request.get_tensor(next_token).data
            stamps[i + 1] = clock()
            if i == 0:
                request.set_tensor("input_ids", self._step_tensor)
        return [s - t0 for s in stamps], None if encoder_end is None else encoder_end - t0, tokens


def stateful_graphs(cfg) -> dict:
    onnx_graphs = io_names(cfg)
    dec = onnx_graphs["decoder"]
    graphs = {
        "decoder": {
            "file": "decoder.xml",
            "weights": "decoder.bin",
            "inputs": [n for n in dec["inputs"] if not n.startswith("past_")],
            "outputs": ["logits", "next_token"],
            "states": {p: p.replace("past_", "present_", 1) for p in kv_names(cfg.decoder_layers, "past")},
        }
    }
    if cfg.is_encoder_decoder:
        enc = onnx_graphs["encoder"]
        graphs["encoder"] = {
            "file": "encoder.xml",
            "weights": "encoder.bin",
            "inputs": enc["inputs"],
            "outputs": enc["outputs"],
        }
    return graphs


def export_stateful(spec: ModelSpec, out: Path, variant: dict, cache_dir=None) -> dict:
    """IR from the ONNX artifact (exported first if needed), decoder made stateful, checked."""
    from openvino._offline_transformations import apply_make_stateful_transformation

    from slmbench.exporters.onnx import onnx_artifact

    cfg = spec.config
    source, _ = onnx_artifact(spec, variant["precision"], cache_dir)
    onnx_graphs = source.manifest["graphs"]
    graphs = stateful_graphs(cfg)
    if cfg.is_encoder_decoder:
        encoder = read_onnx(source.graph_path("encoder"))
        rename_ports(encoder, onnx_graphs["encoder"]["inputs"], onnx_graphs["encoder"]["outputs"])
        save_ir(encoder, out / graphs["encoder"]["file"])
    decoder = read_onnx(source.graph_path("decoder"))
    rename_ports(decoder, onnx_graphs["decoder"]["inputs"], onnx_graphs["decoder"]["outputs"])
    apply_make_stateful_transformation(decoder, graphs["decoder"]["states"])
    rename_ports(decoder, graphs["decoder"]["inputs"], graphs["decoder"]["outputs"])
    save_ir(decoder, out / graphs["decoder"]["file"])

    model = spec.build()
    kv = kv_layout(cfg)

    def candidate(prompt, forced):
        enc = compile_exact(out / graphs["encoder"]["file"]) if cfg.is_encoder_decoder else None
        session = StatefulSession(
            compile_exact(out / graphs["decoder"]["file"]), enc, kv, graphs["decoder"]["inputs"]
        )
        return parity.teacher_forced(session, cfg, prompt, forced)

    result = parity.check(model, cfg, candidate, "openvino-stateful(CPU, KV f32)")
    return {
        "graphs": graphs,
        "kv": kv,
        "opset": OPSET,
        "precision": variant["precision"],
        "exporter": "ONNX artifact -> openvino.Core.read_model -> apply_make_stateful_transformation",
        "source_artifact": source.key,
        "versions": {"openvino": ov_version(), **source.manifest["versions"]},
        "parity": {**result, "config": dict(EXACT_CPU)},
    }


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


def _npuw_wrapper(model, cfg):
    from torch import nn

    from slmbench.exporters.static import decoder_stack, lm_head, visible

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


def _add_beam_idx(model, past_names: list[str]) -> None:
    """beam_idx [batch] (i32) gathers every past KV along the batch axis, as optimum-intel's
    stateful models do; the NPU plugin's stateful-to-stateless pass requires it."""
    import openvino as ov
    from openvino import opset13 as ops

    batch = model.input("input_ids").get_partial_shape()[0]
    beam_idx = ops.parameter(ov.PartialShape([batch]), ov.Type.i32, name="beam_idx")
    beam_idx.output(0).get_tensor().set_names({"beam_idx"})
    model.add_parameters([beam_idx])
    for name in past_names:
        port = model.input(name)
        consumers = port.get_target_inputs()
        gather = ops.gather(port, beam_idx, ops.constant(0))
        for consumer in consumers:
            consumer.replace_source_output(gather.output(0))
    model.validate_nodes_and_infer_types()


def export_npuw(spec: ModelSpec, out: Path, variant: dict) -> dict:
    import torch
    from openvino._offline_transformations import apply_make_stateful_transformation

    from slmbench.exporters.static import NpuwSession, require_native

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
            _npuw_wrapper(model, cfg),
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
    _add_beam_idx(decoder, past_names)
    apply_make_stateful_transformation(decoder, names["states"])
    rename_ports(decoder, names["inputs"], names["outputs"])
    graphs = {"decoder": {"file": "decoder.xml", "weights": "decoder.bin", **names}}
    save_ir(decoder, out / graphs["decoder"]["file"])
    kv = kv_layout(cfg)
    kv.update({"past": "past_key_values.{layer}.{key,value}", "present": "present.{layer}.{key,value}"})

    def candidate(prompt, forced):
        session = NpuwSession(compile_exact(out / graphs["decoder"]["file"]), kv, names["inputs"])
        return parity.teacher_forced(session, cfg, prompt, forced)

    result = parity.check(model, cfg, candidate, "openvino-npuw-layout(CPU, KV f32)")
    return {
        "graphs": graphs,
        "kv": kv,
        "opset": OPSET,
        "precision": variant["precision"],
        "exporter": "torch.onnx.export (TorchScript) -> OpenVINO, beam_idx, "
        "apply_make_stateful_transformation",
        "versions": {"openvino": ov_version(), "torch": torch.__version__},
        "parity": {**result, "config": dict(EXACT_CPU)},
    }


def openvino_artifact(
    spec: ModelSpec,
    precision: str = "fp32",
    mode: str = "stateful",
    cache_dir=None,
    force: bool = False,
    prompt_len: int | None = None,
    response_len: int | None = None,
) -> tuple[Artifact, bool]:
    """The IR for `mode`; static graphs are specific to (prompt_len, response_len)."""
    from slmbench.exporters import onnx as onnx_exporter
    from slmbench.exporters import static
    from slmbench.exporters.precision import check_supported

    check_supported("openvino", precision, "openvino")
    if mode not in MODES:
        raise ArtifactError(f"unknown OpenVINO mode {mode!r}; choose from {', '.join(MODES)}")
    if precision != "fp32":
        from slmbench.exporters.compress_openvino import compressed_openvino_artifact

        return compressed_openvino_artifact(spec, precision, mode, cache_dir, force, prompt_len, response_len)
    code = code_digest(__file__, parity.__file__, onnx_exporter.__file__, static.__file__)
    if mode == "stateful":
        return ensure_artifact(
            spec,
            "openvino",
            {"precision": precision, "mode": mode},
            lambda s, out, v: export_stateful(s, out, v, cache_dir),
            code,
            cache_dir,
            force,
        )
    if mode == "npuw":
        return ensure_artifact(
            spec, "openvino", {"precision": precision, "mode": mode}, export_npuw, code, cache_dir, force
        )
    variant = {
        "precision": precision,
        "mode": mode,
        **static.static_shapes(spec.config, prompt_len, response_len),
    }
    return ensure_artifact(spec, "openvino", variant, static.export_static, code, cache_dir, force)
