"""OpenVINO IR export: what every mode's export shares, and the stateful IR.

Modes (an artifact's `variant.mode`, recorded in every result row):
- `stateful` (CPU, GPU): the ONNX artifact's graphs read into OpenVINO and saved as IR, with the
  decoder's self-attention KV turned into OpenVINO state (past_* inputs -> present_* outputs), so
  the cache never crosses the API between steps. The encoder (encoder-decoder) computes the
  cross-attention K/V once per request; they stay bound to the decoder until the next request.
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


def compile_exact(path: Path):
    """Compile on CPU with f32 everywhere: what the parity checks run."""
    import openvino as ov

    return ov.Core().compile_model(str(path), "CPU", dict(EXACT_CPU))


def exact_session(folder: Path, manifest: dict, session: SessionFactory):
    """The IR in `folder` compiled with EXACT_CPU, every graph of `manifest`, in a fresh session."""
    return session({role: compile_exact(folder / g["file"]) for role, g in manifest["graphs"].items()}, manifest)


def check_parity(model, cfg, folder: Path, manifest: dict, session: SessionFactory, runtime: str) -> dict:
    """The IR's teacher-forced logits (OpenVINO CPU, f32) against PyTorch; raises beyond tolerance."""
    def candidate(prompt, forced):
        return parity.teacher_forced(exact_session(folder, manifest, session), cfg, prompt, forced)

    return {**parity.check(model, cfg, candidate, runtime), "config": dict(EXACT_CPU)}


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


def export_stateful(spec: ModelSpec, out: Path, variant: dict, cache_dir, session: SessionFactory) -> dict:
    """IR from the ONNX artifact (exported first if needed), decoder made stateful, checked."""
    from openvino._offline_transformations import apply_make_stateful_transformation

    cfg = spec.config
    source, _ = onnx_exporter.onnx_artifact(spec, variant["precision"], cache_dir)
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

    kv = kv_layout(cfg)
    result = check_parity(spec.build(), cfg, out, {"graphs": graphs, "kv": kv}, session,
                          "openvino-stateful(CPU, KV f32)")
    return {
        "graphs": graphs,
        "kv": kv,
        "opset": OPSET,
        "precision": variant["precision"],
        "exporter": "ONNX artifact -> openvino.Core.read_model -> apply_make_stateful_transformation",
        "source_artifact": source.key,
        "versions": {"openvino": ov_version(), **source.manifest["versions"]},
        "parity": result,
    }


def stateful_artifact(spec: ModelSpec, session: SessionFactory, cache_dir=None,
                      force: bool = False) -> tuple[Artifact, bool]:
    """The fp32 stateful IR of `spec`, exported (and checked through `session`) unless cached."""
    export = lambda s, out, v: export_stateful(s, out, v, cache_dir, session)
    return ensure_artifact(spec, "openvino", {"precision": "fp32", "mode": "stateful"}, export, ir_code(),
                           cache_dir, force)
