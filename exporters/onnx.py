"""ONNX export with the KV cache as explicit tensors.

Graphs (all axes named below are dynamic):
- decoder-only `decoder.onnx`: input_ids [batch, new], past_key.i / past_value.i
  [batch, kv_heads, past, head_dim] -> logits [batch, vocab] (last position), next_token [batch]
  (in-graph argmax, so a GPU runner brings only the token id to the host), present_key.i /
  present_value.i [batch, kv_heads, past+new, head_dim]. A past of length 0 is the prefill.
- encoder-decoder `encoder.onnx`: input_ids, attention_mask [batch, src] -> encoder_hidden_states
  and cross_key.i / cross_value.i: the cross-attention K/V are computed once per request, here,
  not once per token. `decoder.onnx` takes them plus encoder_attention_mask and the self-attention
  cache as above.
The legacy TorchScript exporter is used: it is quick and handles both families (docs/environment.md).
Weights are stored beside the graphs, a tensor both graphs hold once (external_weights.py).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from slmbench.exporters import external_weights, fold_shapes, parity
from slmbench.exporters.artifact import Artifact, ArtifactError, code_digest, ensure_artifact
from slmbench.exporters.precision import check_supported, onnx_recipe
from slmbench.models.spec import ModelSpec

OPSET = 20
PRECISIONS = ("fp32", "fp16", "int8", "int4")  # fp32 here; the others derive from it (quantize_onnx.py)


def kv_names(layers: int, prefix: str) -> list[str]:
    return [f"{prefix}_{kind}.{i}" for i in range(layers) for kind in ("key", "value")]


def io_names(cfg) -> dict:
    n = cfg.decoder_layers
    decoder_in = ["input_ids"]
    if cfg.is_encoder_decoder:
        decoder_in += ["encoder_attention_mask", *kv_names(n, "cross")]
    decoder_in += kv_names(n, "past")
    graphs = {"decoder": {"file": "decoder.onnx", "inputs": decoder_in,
                          "outputs": ["logits", "next_token", *kv_names(n, "present")]}}
    if cfg.is_encoder_decoder:
        graphs["encoder"] = {"file": "encoder.onnx", "inputs": ["input_ids", "attention_mask"],
                             "outputs": ["encoder_hidden_states", *kv_names(n, "cross")]}
    return graphs


def kv_layout(cfg) -> dict:
    return {"layout": ["batch", "kv_heads", "seq", "head_dim"], "layers": cfg.decoder_layers,
            "kv_heads": cfg.kv_heads, "head_dim": cfg.head_dim, "seq_axis": 2,
            "past": "past_{key,value}.{layer}", "present": "present_{key,value}.{layer}",
            "cross": "cross_{key,value}.{layer}" if cfg.is_encoder_decoder else None}


def _pairs(flat):
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def _flat(pairs):
    return [t for kv in pairs for t in kv]


def _wrappers(model, cfg):
    import torch
    from torch import nn

    n = cfg.decoder_layers

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model  # registered, so the tracer sees parameters, not constants

    class DecoderOnlyStep(Wrapper):
        def forward(self, input_ids, *past):
            logits, present = self.model(input_ids, _pairs(past))
            return (logits, torch.argmax(logits, -1), *_flat(present))

    class EncoderStep(Wrapper):
        def forward(self, input_ids, attention_mask):
            hidden = self.model.encode(input_ids, attention_mask)
            return (hidden, *_flat(self.model.cross_kv(hidden)))

    class EncoderDecoderStep(Wrapper):
        def forward(self, input_ids, encoder_attention_mask, *kv):
            cross, past = _pairs(kv[:2 * n]), _pairs(kv[2 * n:])
            logits, present = self.model.decode(input_ids, encoder_attention_mask, cross, past)
            return (logits, torch.argmax(logits, -1), *_flat(present))

    # eval(): the tracer restores the wrappers' training flag onto the model afterwards (dropout!)
    return DecoderOnlyStep().eval(), EncoderStep().eval(), EncoderDecoderStep().eval()


def _export_graph(module, args, path: Path, inputs, outputs, dynamic: dict) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(args), str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False, do_constant_folding=True)
    fold_graph_shapes(path)


def fold_graph_shapes(path: Path) -> None:
    """Constant Reshape targets in place of the tracer's per-layer shape arithmetic (fold_shapes)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)  # external weights stay where they are
    if fold_shapes.fold_reshape_shapes(model):
        onnx.save(model, str(path))


def _axes(names, axes):
    return {name: axes for name in names}


def export_onnx(spec: ModelSpec, out: Path, variant: dict, model=None) -> dict:
    """Export `spec` (or `model`, a module built from it) into `out`, check it with onnx.checker and
    against PyTorch; return the manifest."""
    import onnx
    import torch

    cfg = spec.config
    model = spec.build() if model is None else model
    graphs = io_names(cfg)
    decoder_only, encoder, encoder_decoder = _wrappers(model, cfg)
    b, src, past_len = 2, 5, 3
    kv_shape = (b, cfg.kv_heads, past_len, cfg.head_dim)
    past = [torch.zeros(kv_shape) for _ in range(2 * cfg.decoder_layers)]
    ids = torch.ones((b, 1), dtype=torch.int64)
    kv_axes = {0: "batch", 2: "past"}
    dec = graphs["decoder"]
    dynamic = {"input_ids": {0: "batch", 1: "new"}, "logits": {0: "batch"}, "next_token": {0: "batch"},
               **_axes(kv_names(cfg.decoder_layers, "past"), kv_axes),
               **_axes(kv_names(cfg.decoder_layers, "present"), {0: "batch", 2: "total"})}
    with torch.no_grad():
        if cfg.is_encoder_decoder:
            enc = graphs["encoder"]
            src_ids = torch.ones((b, src), dtype=torch.int64)
            mask = torch.ones((b, src), dtype=torch.int64)
            _export_graph(encoder, [src_ids, mask], out / enc["file"], enc["inputs"], enc["outputs"],
                          {"input_ids": {0: "batch", 1: "src"}, "attention_mask": {0: "batch", 1: "src"},
                           "encoder_hidden_states": {0: "batch", 1: "src"},
                           **_axes(kv_names(cfg.decoder_layers, "cross"), {0: "batch", 2: "src"})})
            cross = [torch.zeros((b, cfg.kv_heads, src, cfg.head_dim)) for _ in range(2 * cfg.decoder_layers)]
            dynamic.update({"encoder_attention_mask": {0: "batch", 1: "src"},
                            **_axes(kv_names(cfg.decoder_layers, "cross"), {0: "batch", 2: "src"})})
            _export_graph(encoder_decoder, [ids, mask, *cross, *past], out / dec["file"], dec["inputs"],
                          dec["outputs"], dynamic)
        else:
            _export_graph(decoder_only, [ids, *past], out / dec["file"], dec["inputs"], dec["outputs"], dynamic)
    stored = external_weights.externalize(out, [graph["file"] for graph in graphs.values()])
    for graph in graphs.values():
        onnx.checker.check_model(str(out / graph["file"]))
    result = parity.check(model, cfg, lambda p, f: ort_step_logits(out, graphs, cfg, p, f), "onnxruntime")
    return {"graphs": graphs, "kv": kv_layout(cfg), "opset": OPSET, "precision": variant["precision"],
            "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
            "versions": {"torch": torch.__version__, "onnx": onnx.__version__}, "parity": result, "weights": stored,
            "reference_parity": getattr(model, "reference_parity", None),
            "precision_recipe": onnx_recipe("fp32", cfg).to_dict()}


FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def past_dtype(session, past_names: list[str]):
    """The numpy dtype of the decoder's past K/V inputs, as the graph declares it (fp32 or fp16)."""
    types = {i.name: i.type for i in session.get_inputs() if i.name in past_names}
    found = {types[n] for n in past_names if n in types}
    if len(found) != 1 or next(iter(found)) not in FLOAT_TYPES:
        raise ArtifactError(f"decoder past K/V inputs have types {sorted(found) or 'none'}; expected one of "
                            f"{', '.join(FLOAT_TYPES)} (re-export the artifact)")
    return FLOAT_TYPES[found.pop()]


class OnnxSteps:
    """An ONNX artifact's graphs in plain ONNX Runtime CPU sessions, as a session for
    parity.teacher_forced: the candidate side of the parity and accuracy checks. The KV cache is
    the graph's own dtype; each step feeds present_* back as past_* (they come out in that order)."""

    def __init__(self, folder: Path, graphs: dict, cfg):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        load = lambda role: ort.InferenceSession(str(folder / graphs[role]["file"]), opts,
                                                 providers=["CPUExecutionProvider"])
        self.cfg, self.decoder = cfg, load("decoder")
        self.encoder = load("encoder") if cfg.is_encoder_decoder else None
        self.cross_names = graphs["encoder"]["outputs"][1:] if self.encoder else []
        self.names = kv_names(cfg.decoder_layers, "past")
        assert [n.replace("present", "past") for n in graphs["decoder"]["outputs"][2:]] == self.names
        self.dtype = past_dtype(self.decoder, self.names)

    def start(self, input_ids: np.ndarray, max_new_tokens: int) -> None:
        empty = np.zeros((input_ids.shape[0], self.cfg.kv_heads, 0, self.cfg.head_dim), self.dtype)
        self.past, self.fixed = dict.fromkeys(self.names, empty), {}

    def encode(self, input_ids: np.ndarray) -> None:
        mask = np.ones_like(input_ids)
        out = self.encoder.run(None, {"input_ids": input_ids, "attention_mask": mask})
        self.fixed = {"encoder_attention_mask": mask, **dict(zip(self.cross_names, out[1:], strict=True))}

    def decode(self, input_ids: np.ndarray) -> np.ndarray:
        out = self.decoder.run(None, {"input_ids": input_ids, **self.fixed, **self.past})
        self._logits, self.past = out[0], dict(zip(self.names, out[2:], strict=True))
        return out[1]

    def logits(self) -> np.ndarray:
        return self._logits.astype(np.float32)


def ort_step_logits(folder: Path, graphs: dict, cfg, prompt: np.ndarray, forced: np.ndarray) -> list[np.ndarray]:
    """Teacher-forced logits of an ONNX artifact's graphs (parity and accuracy checks)."""
    return parity.teacher_forced(OnnxSteps(folder, graphs, cfg), cfg, prompt, forced)


def onnx_artifact(spec: ModelSpec, precision: str = "fp32", cache_dir=None, force=False) -> tuple[Artifact, bool]:
    """The fp32 ONNX artifact of `spec` (the other precisions derive from it: quantize_onnx.py)."""
    check_supported("onnx", precision, "onnxruntime")
    if precision != "fp32":
        raise ValueError(f"onnx_artifact exports fp32; {precision} comes from quantize_onnx.quantized_onnx_artifact")
    return ensure_artifact(spec, "onnx", {"precision": precision}, export_onnx,
                           code_digest(__file__, parity.__file__, external_weights.__file__), cache_dir, force)
