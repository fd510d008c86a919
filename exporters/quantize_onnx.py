"""Low-precision ONNX artifacts, derived from the fp32 ONNX artifact of the same model.

- fp16: onnxruntime.transformers.float16 (the onnxconverter-common converter) with fp16 graph I/O,
  so the KV cache is fp16 too (the runner reads its dtype from the graph); RMSNorm statistics and
  the RoPE angles stay fp32 (overflow and position precision).
- int8: ONNX Runtime dynamic quantisation of the MatMul weights (int8 symmetric per channel,
  activations quantised at run time).
- int4: weight-only MatMulNBits (symmetric, block `group_size_for(cfg)`).
Every artifact records its recipe (slmbench.exporters.precision) and its logit error against fp32
PyTorch, measured through ONNX Runtime CPU.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from slmbench.exporters import external_weights, parity, precision
from slmbench.exporters import onnx as onnx_exporter
from slmbench.exporters.artifact import Artifact, code_digest, ensure_artifact
from slmbench.exporters.precision import Recipe
from slmbench.models.spec import ModelSpec

_NORM_CHAIN = ("Add", "Sqrt", "Reciprocal", "Div")
_WEIGHT_ELEMENTS = 1 << 16  # an initializer this large is a weight, not a RoPE or norm constant
_ONNX_TYPES = {
    1: "fp32",
    10: "fp16",
    16: "bf16",
    3: "int8",
    2: "uint8",
    21: "uint4",
    22: "int4",
    7: "int64",
    6: "int32",
    11: "fp64",
}
_MAX_PROTO = 1_800_000_000  # below protobuf's 2 GiB: bigger models are saved with external data


@contextmanager
def quiet_quantizer():
    """The quantisation tools log every tensor at INFO (and some print); keep the console clean."""
    names = (
        "root",
        "onnxruntime",
        "onnxruntime.quantization",
        "onnxruntime.transformers",
        "onnxruntime.quantization.matmul_nbits_quantizer",
    )
    loggers = [logging.getLogger(n if n != "root" else None) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:  # ERROR: "consider pre-processing before quantization" is no use here
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def fp16_block_nodes(model) -> list[str]:
    """Names of the nodes kept in fp32: RMSNorm statistics (Pow -> ReduceMean -> Add eps -> Sqrt ->
    1/x) and every node the RoPE Cos/Sin depend on (positions x inv_freq)."""
    nodes = list(model.graph.node)
    producer = {out: n for n in nodes for out in n.output}
    consumers: dict[str, list] = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    blocked: set[str] = set()
    for n in nodes:
        if (
            n.op_type == "ReduceMean"
            and n.input
            and getattr(producer.get(n.input[0]), "op_type", "") == "Pow"
        ):
            blocked.update({producer[n.input[0]].name, n.name})
            current = n
            while True:
                nxt = [c for c in consumers.get(current.output[0], []) if c.op_type in _NORM_CHAIN]
                if len(nxt) != 1:
                    break
                current = nxt[0]
                blocked.add(current.name)
                if current.op_type in ("Reciprocal", "Div"):
                    break
    # Walk up from Cos/Sin, but never into a node that reads a weight: that is no longer the angle
    # computation (Hugging Face models compute the angles with a MatMul of positions x inv_freq).
    weights = {i.name for i in model.graph.initializer if np.prod(i.dims, dtype=np.int64) >= _WEIGHT_ELEMENTS}
    stack = [n for n in nodes if n.op_type in ("Cos", "Sin")]
    while stack:
        n = stack.pop()
        if n.name in blocked or weights & set(n.input):
            continue
        blocked.add(n.name)
        stack.extend(producer[i] for i in n.input if i in producer)
    return sorted(blocked)


def to_fp16(model):
    from onnxruntime.transformers import float16

    for i, node in enumerate(model.graph.node):  # the block list names nodes
        node.name = node.name or f"slmbench_unnamed_{i}"
    with quiet_quantizer():
        return float16.convert_float_to_float16(
            model,
            keep_io_types=False,
            op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST),
            node_block_list=fp16_block_nodes(model),
        )


def to_int8(source: Path, target: Path, rec: Recipe) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    opts = rec.options
    with quiet_quantizer():
        quantize_dynamic(
            str(source),
            str(target),
            op_types_to_quantize=list(opts["op_types_to_quantize"]),
            per_channel=opts["per_channel"],
            reduce_range=opts["reduce_range"],
            weight_type=getattr(QuantType, opts["weight_type"]),
            use_external_data_format=source.stat().st_size > _MAX_PROTO,
            extra_options=dict(opts["extra_options"]),
        )


def to_int4(model, rec: Recipe):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    opts = rec.options
    with quiet_quantizer():
        quantizer = MatMulNBitsQuantizer(
            model,
            bits=opts["bits"],
            block_size=opts["block_size"],
            is_symmetric=opts["is_symmetric"],
            accuracy_level=opts["accuracy_level"],
            op_types_to_quantize=tuple(opts["op_types_to_quantize"]),
        )
        quantizer.process()
    return quantizer.model.model


def save(model, path: Path) -> None:
    import onnx

    large = model.ByteSize() > _MAX_PROTO
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=path.name + ".data" if large else None,
    )


def weight_types(path: Path) -> dict[str, int]:
    """Elements of every initializer by element type: what actually stayed in which precision.
    MatMulNBits weights are packed (two int4 per uint8) and counted as int4 elements."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    packed = {n.input[1]: dict((a.name, a.i) for a in n.attribute).get("bits", 4)
              for n in model.graph.node if n.op_type == "MatMulNBits"}
    counts: dict[str, int] = {}
    for init in model.graph.initializer:
        elements = int(np.prod(init.dims, dtype=np.int64))
        if init.name in packed:
            kind, elements = f"int{packed[init.name]} (MatMulNBits)", elements * 8 // packed[init.name]
        else:
            kind = _ONNX_TYPES.get(init.data_type, str(init.data_type))
        counts[kind] = counts.get(kind, 0) + elements
    return dict(sorted(counts.items()))


def convert_graph(source: Path, target: Path, rec: Recipe) -> None:
    import onnx

    if rec.precision == "int8":
        to_int8(source, target, rec)
        return
    model = onnx.load(str(source))
    save(to_fp16(model) if rec.precision == "fp16" else to_int4(model, rec), target)


def export_quantized(spec: ModelSpec, out: Path, source: Artifact, rec: Recipe) -> dict:
    """Convert every graph of the fp32 artifact `source` by `rec`, then measure its accuracy."""
    cfg = spec.config
    graphs = source.manifest["graphs"]
    for graph in graphs.values():
        convert_graph(source.path / graph["file"], out / graph["file"], rec)
    stored = external_weights.externalize(out, [graph["file"] for graph in graphs.values()])
    model = spec.build()
    accuracy = precision.measure_accuracy(
        model, cfg, lambda p, f: onnx_exporter.ort_step_logits(out, graphs, cfg, p, f), "onnxruntime(CPU)", rec
    )
    versions = dict(source.manifest.get("versions", {}))
    versions[rec.tool.split(".")[0]] = rec.tool_version
    return {
        "graphs": graphs,
        "kv": source.manifest["kv"],
        "opset": source.manifest.get("opset"),
        "precision": rec.precision,
        "precision_recipe": rec.to_dict(),
        "exporter": f"{source.manifest.get('exporter')} -> {rec.tool}",
        "source_artifact": source.key,
        "versions": versions,
        "parity": accuracy,
        "accuracy": accuracy,
        "weights": stored,
        "weights_by_type": {role: weight_types(out / g["file"]) for role, g in graphs.items()},
        "reference_parity": source.manifest.get("reference_parity"),
    }


def quantized_onnx_artifact(
    spec: ModelSpec, precision_name: str, cache_dir=None, force: bool = False
) -> tuple[Artifact, bool]:
    """The fp16/int8/int4 ONNX artifact of `spec`, derived from (and exporting if needed) fp32."""
    rec = precision.onnx_recipe(precision_name, spec.config)
    source, _ = onnx_exporter.onnx_artifact(spec, "fp32", cache_dir)
    code = code_digest(onnx_exporter.__file__, parity.__file__, precision.__file__, external_weights.__file__,
                       __file__)
    return ensure_artifact(
        spec,
        "onnx",
        {"precision": precision_name, "recipe": rec.to_dict(), "source": source.key},
        lambda s, out, variant: export_quantized(s, out, source, rec),
        code,
        cache_dir,
        force,
    )
