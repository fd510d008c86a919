"""OpenVINO IR export: what every mode's export shares, and the stateful IR.

Modes (an artifact's `variant.mode`, recorded in every result row):
- `stateful` (CPU, GPU): the model's graphs, exported in the forms OpenVINO runs fastest (the
  attention it fuses, a GELU it leaves apart from the matmul: models/blocks.set_openvino_forms), read into
  OpenVINO and saved as IR, with the decoder's self-attention KV turned into OpenVINO state
  (past_* inputs -> present_* outputs), so the cache never crosses the API between steps, and the
  CPU plugin's stateful attention kernel reads it in place (export_stateful). The encoder
  (encoder-decoder) computes the cross-attention K/V once per request; they stay bound to the
  decoder until the next request.
- `static` and `npuw` (the Intel NPU): graphs built from torch (slmbench.exporters.static).

Every IR is checked against PyTorch logits before it is cached. The session that runs it belongs
to the runner (slmbench.runners.openvino), which hands a `SessionFactory` in: the export compiles
the IR on CPU at f32 (EXACT_CPU) and drives that session through parity.teacher_forced.

OpenVINO traps handled here (docs/environment.md, "Machines, versions and runtime traps"): a port
may carry internal aliases, so each port is renamed to exactly its manifest name; the CPU plugin
defaults to a u8 KV cache and, on AMX/AVX-512-BF16 machines, to bf16 inference, so the parity
check sets both to f32.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from slmbench.errors import InvalidOption
from slmbench.exporters import onnx as onnx_exporter
from slmbench.exporters import parity
from slmbench.exporters.artifact import Artifact, ArtifactError, code_digest, ensure_artifact
from slmbench.exporters.onnx import OPSET, io_names, kv_layout, kv_names
from slmbench.models.spec import ModelSpec

# What the parity check compiles with on CPU: no u8 KV cache, no bf16 matmuls.
EXACT_CPU = {"KV_CACHE_PRECISION": "f32", "INFERENCE_PRECISION_HINT": "f32"}

# (compiled models by graph role, manifest with "graphs", "kv" and, for static graphs, "static")
# -> a session with start/encode/decode/logits, as slmbench.exporters.parity.teacher_forced drives.
SessionFactory = Callable[[dict, dict], Any]


def ov_version() -> str:
    import openvino

    return openvino.get_version()


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



def rename_ports(model, inputs: list[str], outputs: list[str]) -> None:
    """Give every port exactly one name, its manifest name; fail on a port that has none."""
    for kind, ports, wanted in (("input", model.inputs, inputs), ("output", model.outputs, outputs)):
        for port, name in zip(ports, match_ports(ports, wanted, f"OpenVINO {kind}"), strict=True):
            port.get_tensor().set_names({name})


def save_ir(model, path: Path) -> None:
    import openvino as ov

    ov.save_model(model, str(path), compress_to_fp16=False)  # the default would halve the weights


def read_onnx(path: Path):
    import openvino as ov

    return ov.Core().read_model(str(path))


def compile_exact(path: Path, config: dict | None = None):
    """Compile on CPU with f32 everywhere (what the parity checks run), or with `config`; the
    compute precision asked for is read back, so a plugin that silently ran another is refused."""
    import openvino as ov

    config = dict(config or EXACT_CPU)
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    check_compute_precision(compiled, config.get("INFERENCE_PRECISION_HINT"))
    return compiled


def check_compute_precision(compiled, wanted: str | None) -> None:
    """Refuse a compiled model whose INFERENCE_PRECISION_HINT is not the one asked for."""
    if wanted is None:
        return
    try:
        got = compiled.get_property("INFERENCE_PRECISION_HINT")
    except RuntimeError:  # AUTO does not report it; its device's plugin was given the hint all the same
        return
    got = got.get_type_name() if hasattr(got, "get_type_name") else str(got)
    if got != wanted:
        raise InvalidOption(f"OpenVINO compiled for {wanted} compute runs {got}: this CPU has no {wanted} "
                            f"(see OpenVINO's CPU OPTIMIZATION_CAPABILITIES); refusing to report it as {wanted}")


def exact_session(folder: Path, manifest: dict, session: SessionFactory, config: dict | None = None):
    """The IR in `folder` compiled with EXACT_CPU (or `config`), every graph of `manifest`, in a
    fresh session."""
    return session({role: compile_exact(folder / g["file"], config) for role, g in manifest["graphs"].items()},
                   manifest)


def check_parity(model, cfg, folder: Path, manifest: dict, session: SessionFactory, runtime: str) -> dict:
    """The IR's teacher-forced logits (OpenVINO CPU, f32) against PyTorch, and its vision tower's
    image embeddings; raises beyond tolerance."""
    def candidate(prompt, forced, pixels):
        return parity.teacher_forced(exact_session(folder, manifest, session), cfg, prompt, forced, pixels)

    return {**parity.check(model, cfg, candidate, runtime, candidate_tower=ir_tower(folder, manifest["graphs"])),
            "config": dict(EXACT_CPU)}


def ir_tower(folder: Path, graphs: dict) -> parity.TowerFn:
    """The IR's vision tower, compiled exact when first called: pixels -> image embeddings."""
    def tower(pixels):
        request = compile_exact(folder / graphs["vision"]["file"]).create_infer_request()
        return request.infer({"pixel_values": pixels})["image_embeds"].copy()

    return tower


def ir_code(*modules: str) -> str:
    """The cache's code digest of an fp32 IR: this module, parity, the ONNX exporter, and `modules`."""
    return code_digest(__file__, parity.__file__, onnx_exporter.__file__, *modules)


def stateful_graphs(cfg) -> dict:
    onnx_graphs = io_names(cfg)
    dec = onnx_graphs["decoder"]
    graphs = {
        "decoder": {
            "file": "decoder.xml",
            "weights": "decoder.bin",
            "inputs": [n for n in dec["inputs"] if not n.startswith("past_")] + ["beam_idx"],
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
    if cfg.vision is not None:
        graphs["vision"] = vision_graph(cfg)
    return graphs


def vision_graph(cfg) -> dict:
    """The IR's tower graph, its ports named as the ONNX export names them (every mode's)."""
    onnx_graph = io_names(cfg)["vision"]
    return {"file": "vision.xml", "weights": "vision.bin", "inputs": onnx_graph["inputs"],
            "outputs": onnx_graph["outputs"]}


def add_beam_idx(model, past_names: list[str]) -> None:
    """A `beam_idx` input [batch] (i32) through which every past K/V is gathered along the batch, as
    optimum-intel's stateful models have it. The NPU plugin's stateful-to-stateless pass requires
    it, and the CPU plugin fuses ReadValue -> Gather(beam_idx) -> Concat -> ScaledDotProductAttention
    into one kernel that keeps the cache in its own buffer only with that Gather. Greedy decoding
    feeds arange(batch): nothing is reordered."""
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


def add_state_initializers(model) -> None:
    """Give every state an initializer: an empty cache [batch, kv_heads, 0, head_dim], batch taken
    from input_ids. The CPU plugin's fused attention node reads its state's initializer; a state
    made without one (apply_make_stateful_transformation's) fails its compile."""
    import numpy as np
    from openvino import opset13 as ops

    ids = model.input("input_ids")
    batch = ops.gather(ops.shape_of(ids, output_type="i64"), ops.constant(np.array([0], np.int64)),
                       ops.constant(np.int64(0)))
    for op in model.get_ops():
        if op.get_type_name() != "ReadValue":
            continue
        dims = [batch if i == 0 else ops.constant(np.array([d.get_min_length()], np.int64))
                for i, d in enumerate(op.get_output_partial_shape(0))]
        empty = ops.broadcast(ops.constant(np.zeros((), np.float32)).output(0), ops.concat(dims, 0))
        op.set_arguments([empty])
    model.validate_nodes_and_infer_types()


def fused_attention(model) -> int:
    """How many ScaledDotProductAttention ops the IR has (one per attention block when fused)."""
    return sum(op.get_type_name() == "ScaledDotProductAttention" for op in model.get_ops())


def make_stateful(decoder, states: dict) -> None:
    """The decoder's KV cache as OpenVINO state, in the form the CPU plugin's fused attention takes:
    the cache gathered through beam_idx, past/present made states, each state an initializer."""
    from openvino._offline_transformations import apply_make_stateful_transformation

    add_beam_idx(decoder, list(states))
    apply_make_stateful_transformation(decoder, states)
    add_state_initializers(decoder)


def _moc_ir(folder: Path, onnx_graph: dict, graph: dict, out: Path, before_moc=None) -> int:
    """One ONNX graph in `folder` as IR in `out`: its ports named as the export names them,
    `before_moc` applied (the decoder made stateful), OpenVINO's MOC pipeline (which creates the
    fused attention), then named as the IR's manifest says. Returns its fused attention count."""
    from openvino._offline_transformations import apply_moc_transformations

    ir = read_onnx(folder / onnx_graph["file"])
    rename_ports(ir, onnx_graph["inputs"], onnx_graph["outputs"])
    if before_moc:
        before_moc(ir)
    apply_moc_transformations(ir, cf=False)
    rename_ports(ir, graph["inputs"], graph["outputs"])
    save_ir(ir, out / graph["file"])
    return fused_attention(ir)


def export_stateful(spec: ModelSpec, out: Path, variant: dict, cache_dir, session: SessionFactory) -> dict:
    """IR from the model exported to ONNX in OpenVINO's forms (a temporary export, not the ONNX
    artifact: ONNX Runtime runs the grouped form, which copies no K/V per step), the cache
    gathered through `beam_idx`, the decoder made stateful, then OpenVINO's MOC pipeline, whose
    SDPAFusion turns each attention into ScaledDotProductAttention (Core.read_model does not, and
    the CPU plugin no longer runs it when it compiles); checked against PyTorch."""
    import tempfile

    from slmbench.models.blocks import set_openvino_forms

    cfg = spec.config
    model = set_openvino_forms(spec.build())
    graphs = stateful_graphs(cfg)
    fused = {}
    with tempfile.TemporaryDirectory(prefix="slmbench-ov-") as tmp:
        folder = Path(tmp)
        source = onnx_exporter.export_onnx(spec, folder, {"precision": variant["precision"]}, model=model)
        onnx_graphs = source["graphs"]
        if cfg.is_encoder_decoder:
            fused["encoder"] = _moc_ir(folder, onnx_graphs["encoder"], graphs["encoder"], out)
        if "vision" in graphs:
            fused["vision"] = _moc_ir(folder, onnx_graphs["vision"], graphs["vision"], out)
        fused["decoder"] = _moc_ir(folder, onnx_graphs["decoder"], graphs["decoder"], out,
                                   lambda ir: make_stateful(ir, graphs["decoder"]["states"]))

    kv = kv_layout(cfg)
    vision = {"vision": source["vision"]} if "vision" in source else {}
    set_openvino_forms(model, False)  # checked against the model as written, not the export's forms
    result = check_parity(model, cfg, out, {"graphs": graphs, "kv": kv, **vision}, session,
                          "openvino-stateful(CPU, KV f32)")
    return {
        "graphs": graphs,
        "kv": kv,
        "opset": OPSET,
        "precision": variant["precision"],
        "exporter": "torch.onnx.export (set_openvino_forms) -> openvino.Core.read_model -> beam_idx -> "
                    "apply_make_stateful_transformation -> apply_moc_transformations",
        "attention": {"fused_sdpa_ops": fused, "onnx_parity": source["parity"]},
        "versions": {"openvino": ov_version(), **source["versions"]},
        "parity": result,
        **vision,
    }


def stateful_artifact(spec: ModelSpec, session: SessionFactory, cache_dir=None,
                      force: bool = False) -> tuple[Artifact, bool]:
    """The fp32 stateful IR of `spec`, exported (and checked through `session`) unless cached."""
    export = lambda s, out, v: export_stateful(s, out, v, cache_dir, session)
    return ensure_artifact(spec, "openvino", {"precision": "fp32", "mode": "stateful"}, export, ir_code(),
                           cache_dir, force)
