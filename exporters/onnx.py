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
- a vision-language model (models/vision.py) adds `vision.onnx`: pixel_values [batch, 3, S, S]
  (S fixed per export) -> image_embeds [batch, image, hidden]; the encoder takes image_embeds after
  attention_mask (which then covers image + src positions), a decoder-only decoder after input_ids
  (the prefill's image; every later step feeds image 0).
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
    image = ["image_embeds"] if cfg.vision is not None else []
    decoder_in = ["input_ids"]
    if cfg.is_encoder_decoder:
        decoder_in += ["encoder_attention_mask", *kv_names(n, "cross")]
    else:
        decoder_in += image
    decoder_in += kv_names(n, "past")
    graphs = {"decoder": {"file": "decoder.onnx", "inputs": decoder_in,
                          "outputs": ["logits", "next_token", *kv_names(n, "present")]}}
    if cfg.is_encoder_decoder:
        graphs["encoder"] = {"file": "encoder.onnx", "inputs": ["input_ids", "attention_mask", *image],
                             "outputs": ["encoder_hidden_states", *kv_names(n, "cross")]}
    if image:
        graphs["vision"] = {"file": "vision.onnx", "inputs": ["pixel_values"], "outputs": ["image_embeds"]}
    return graphs


def vision_manifest(cfg, image_size: int | None) -> dict | None:
    """What an artifact says of its vision tower: the image size its graph takes and the tokens
    one image becomes (None for a text model)."""
    if image_size is None:
        return None
    return {"image_size": image_size, "image_tokens": cfg.vision.image_tokens(image_size), "hidden": cfg.hidden,
            "native_image_size": cfg.vision.image_size}


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

    image = cfg.vision is not None

    class DecoderOnlyStep(Wrapper):
        def forward(self, input_ids, *rest):
            embeds, past = ({"image_embeds": rest[0]}, rest[1:]) if image else ({}, rest)
            logits, present = self.model(input_ids, _pairs(past), **embeds)
            return (logits, torch.argmax(logits, -1), *_flat(present))

    class EncoderStep(Wrapper):
        def forward(self, input_ids, attention_mask, *embeds):
            hidden = self.model.encode(input_ids, attention_mask, *embeds)
            return (hidden, *_flat(self.model.cross_kv(hidden)))

    class VisionStep(Wrapper):
        def forward(self, pixel_values):
            return self.model.vision(pixel_values)

    class EncoderDecoderStep(Wrapper):
        def forward(self, input_ids, encoder_attention_mask, *kv):
            cross, past = _pairs(kv[:2 * n]), _pairs(kv[2 * n:])
            logits, present = self.model.decode(input_ids, encoder_attention_mask, cross, past)
            return (logits, torch.argmax(logits, -1), *_flat(present))

    # eval(): the tracer restores the wrappers' training flag onto the model afterwards (dropout!)
    return DecoderOnlyStep().eval(), EncoderStep().eval(), EncoderDecoderStep().eval(), VisionStep().eval()


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
    against PyTorch; return the manifest. A vision model's tower takes `spec.image` pixels a side."""
    import onnx
    import torch

    cfg = spec.config
    vision = vision_manifest(cfg, spec.image)
    model = spec.build() if model is None else model
    graphs = io_names(cfg)
    decoder_only, encoder, encoder_decoder, tower = _wrappers(model, cfg)
    b, src, past_len, image = 2, 5, 3, 2  # image: a trace length for image_embeds, whose axis is dynamic
    kv_shape = (b, cfg.kv_heads, past_len, cfg.head_dim)
    past = [torch.zeros(kv_shape) for _ in range(2 * cfg.decoder_layers)]
    ids = torch.ones((b, 1), dtype=torch.int64)
    embeds = [torch.zeros((b, image, cfg.hidden))] if vision else []
    embeds_axes = {"image_embeds": {0: "batch", 1: "image"}} if vision else {}
    kv_axes = {0: "batch", 2: "past"}
    dec = graphs["decoder"]
    dynamic = {"input_ids": {0: "batch", 1: "new"}, "logits": {0: "batch"}, "next_token": {0: "batch"},
               **_axes(kv_names(cfg.decoder_layers, "past"), kv_axes),
               **_axes(kv_names(cfg.decoder_layers, "present"), {0: "batch", 2: "total"})}
    with torch.no_grad():
        if vision:
            size = vision["image_size"]
            _export_graph(tower, [torch.zeros((b, 3, size, size))], out / graphs["vision"]["file"],
                          graphs["vision"]["inputs"], graphs["vision"]["outputs"],
                          {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}})
        if cfg.is_encoder_decoder:
            enc = graphs["encoder"]
            src_ids = torch.ones((b, src), dtype=torch.int64)
            mask = torch.ones((b, src + (image if vision else 0)), dtype=torch.int64)
            _export_graph(encoder, [src_ids, mask, *embeds], out / enc["file"], enc["inputs"], enc["outputs"],
                          {"input_ids": {0: "batch", 1: "src"}, "attention_mask": {0: "batch", 1: "source"},
                           "encoder_hidden_states": {0: "batch", 1: "source"}, **embeds_axes,
                           **_axes(kv_names(cfg.decoder_layers, "cross"), {0: "batch", 2: "source"})})
            cross = [torch.zeros((b, cfg.kv_heads, mask.shape[1], cfg.head_dim)) for _ in range(2 * cfg.decoder_layers)]
            dynamic.update({"encoder_attention_mask": {0: "batch", 1: "source"},
                            **_axes(kv_names(cfg.decoder_layers, "cross"), {0: "batch", 2: "source"})})
            _export_graph(encoder_decoder, [ids, mask, *cross, *past], out / dec["file"], dec["inputs"],
                          dec["outputs"], dynamic)
        else:
            _export_graph(decoder_only, [ids, *embeds, *past], out / dec["file"], dec["inputs"], dec["outputs"],
                          {**dynamic, **embeds_axes})
    stored = external_weights.externalize(out, [graph["file"] for graph in graphs.values()])
    for graph in graphs.values():
        onnx.checker.check_model(str(out / graph["file"]))
    steps = OnnxSteps(out, graphs, cfg)
    result = parity.check(model, cfg, lambda p, f, px: parity.teacher_forced(steps, cfg, p, f, px), "onnxruntime",
                          candidate_tower=steps.tower)
    return {"graphs": graphs, "kv": kv_layout(cfg), "opset": OPSET, "precision": variant["precision"],
            **({"vision": vision} if vision else {}),
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
        self.vision = load("vision") if "vision" in graphs else None
        self.cross_names = graphs["encoder"]["outputs"][1:] if self.encoder else []
        self.names = kv_names(cfg.decoder_layers, "past")
        assert [n.replace("present", "past") for n in graphs["decoder"]["outputs"][2:]] == self.names
        self.dtype = past_dtype(self.decoder, self.names)

    def start(self, input_ids: np.ndarray, max_new_tokens: int) -> None:
        empty = np.zeros((input_ids.shape[0], self.cfg.kv_heads, 0, self.cfg.head_dim), self.dtype)
        self.past, self.fixed, self.image = dict.fromkeys(self.names, empty), {}, None
        if self.vision is not None:
            self.image = np.zeros((input_ids.shape[0], 0, self.cfg.hidden), np.float32)

    def tower(self, pixels: np.ndarray) -> np.ndarray:
        return self.vision.run(None, {"pixel_values": pixels})[0]

    def encode_image(self, pixels: np.ndarray) -> None:
        self.image = self.tower(pixels)

    def encode(self, input_ids: np.ndarray) -> None:
        image = {} if self.image is None else {"image_embeds": self.image}
        mask = np.ones((input_ids.shape[0], input_ids.shape[1] + (0 if self.image is None else self.image.shape[1])),
                       np.int64)
        out = self.encoder.run(None, {"input_ids": input_ids, "attention_mask": mask, **image})
        self.fixed = {"encoder_attention_mask": mask, **dict(zip(self.cross_names, out[1:], strict=True))}

    def decode(self, input_ids: np.ndarray) -> np.ndarray:
        image = {}
        if self.image is not None and self.encoder is None:  # the image before the prompt, then none
            image, self.image = {"image_embeds": self.image}, self.image[:, :0]
        out = self.decoder.run(None, {"input_ids": input_ids, **image, **self.fixed, **self.past})
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
