"""Precision recipes as typed data, and the accuracy record every low-precision artifact carries.

A precision name (fp32, fp16, bf16, int8, int4) alone does not say what ran: the tool, its version, the
scheme (symmetric or not), the group size and which layers stay in higher precision all change
speed and accuracy. A `Recipe` says all of that; it goes into the artifact's variant (so it is part
of the cache key), its manifest and every result row.

Accuracy policy (docs/environment.md, issue 8): fp32 artifacts must match PyTorch within 1e-4 and
fail hard otherwise (slmbench.exporters.parity). Low precision is measured, not asserted: the max
|logit - fp32 PyTorch logit| and the greedy-token agreement over a teacher-forced sequence are
recorded with a loose, per-precision `tolerance` whose verdict (`passed`) is recorded but does not
stop the export; only non-finite logits (an fp16 overflow, a broken graph) do. The tests hold the
tiny models to the recorded tolerances, so a broken recipe still fails there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from importlib import metadata

from slmbench.errors import InvalidOption

PRECISIONS = ("fp32", "fp16", "int8", "int4")
# The group sizes tried for grouped (int4) weights, largest first: NNCF and MatMulNBits want the
# group to divide every MatMul's reduction dimension (tiny test models have a 64-wide attention).
PREFERRED_GROUP = 128
GROUPS = (128, 64, 32, 16)
# Loose, recorded bounds on max |logit difference| against fp32 PyTorch, in units of the reference
# logits' standard deviation (so they mean the same for any model); enforced only for fp32, whose
# bound is the absolute parity.FP32_TOLERANCE. Seen on the tiny models: fp16 0.004, int8 0.09,
# int4 0.95; the 330M pair: int8 0.11-0.15. Unrelated logits (another seed's model) score about 6.
TOLERANCES = {"fp16": 0.05, "bf16": 0.2, "int8": 0.5, "int4": 2.0}
# The teacher-forced sequence the accuracy is measured over.
ACCURACY_PROMPT, ACCURACY_STEPS, ACCURACY_BATCH = 16, 15, 2


@dataclass(frozen=True)
class Recipe:
    """How an artifact's precision was produced, exactly."""

    precision: str  # fp32 | fp16 | int8 | int4
    format: str  # onnx | openvino
    tool: str  # the function that produced the weights
    tool_version: str
    weights: str  # storage type of the MatMul weights
    activations: str  # what the MatMuls compute in
    symmetric: bool | None  # weight quantisation scheme; None when not quantised
    group_size: int | None  # weights per scale; None = not grouped (per channel or not quantised)
    higher_precision: tuple[str, ...] = ()  # layers/ops that stay in higher precision, and in what
    options: dict = field(default_factory=dict)  # the exact tool arguments
    # recorded bound on max |dlogit| vs fp32 PyTorch: absolute for fp32 (enforced), else relative to
    # the reference logits' std (recorded, not enforced)
    tolerance: float = 1e-4

    def to_dict(self) -> dict:
        d = asdict(self)
        d["higher_precision"] = list(self.higher_precision)
        return d


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def reduction_dims(cfg) -> list[int]:
    """The input widths of every MatMul weight: hidden (q/k/v, MLP up, LM head), attention inner
    width (o_proj) and MLP width (down)."""
    return sorted({cfg.hidden, cfg.attn_heads * cfg.head_dim, cfg.ffn})


def group_size_for(cfg, preferred: int = PREFERRED_GROUP) -> int:
    """The largest group size <= `preferred` dividing every reduction dimension (128 for the 330M
    pair; 64 for the tiny models, whose attention inner width is 64)."""
    for group in GROUPS:
        if group <= preferred and all(d % group == 0 for d in reduction_dims(cfg)):
            return group
    raise InvalidOption(
        f"no group size in {GROUPS} divides the MatMul widths {reduction_dims(cfg)}; "
        "use int8 (per-channel) for this model"
    )


# bf16 is a compute precision, not a storage one: OpenVINO's CPU plugin runs the fp32 IR in bf16
# where the CPU has it (AVX512-BF16, AMX). ONNX Runtime's CPU provider has no bf16 MatMul on x86.
SUPPORTED = {"onnx": PRECISIONS, "openvino": (*PRECISIONS, "bf16")}


def check_supported(fmt: str, precision: str, runtime: str | None = None) -> None:
    supported = SUPPORTED.get(fmt, ("fp32",))
    if precision not in supported:
        raise InvalidOption(
            f"{runtime or fmt} does not support precision {precision!r}; supported: {', '.join(supported)}"
        )


def onnx_recipe(precision: str, cfg) -> Recipe:
    check_supported("onnx", precision, "onnxruntime")
    ort = _version("onnxruntime")
    if precision == "fp32":
        return Recipe(
            "fp32", "onnx", "torch.onnx.export (TorchScript)", _version("torch"), "fp32", "fp32", None, None
        )
    if precision == "fp16":
        return Recipe(
            "fp16",
            "onnx",
            "onnxruntime.transformers.float16.convert_float_to_float16",
            ort,
            "fp16",
            "fp16 (ops without an fp16 kernel on the execution provider run in fp32 between casts)",
            None,
            None,
            (
                "RMSNorm statistics (Pow, ReduceMean, Add eps, Sqrt, Reciprocal/Div): fp32, so that x^2 "
                "cannot overflow fp16",
                "RoPE angle computation (positions x inv_freq, Cos, Sin): fp32; fp16 positions lose "
                "integer precision beyond 2048",
                "graph inputs/outputs: fp16 logits and KV cache (input_ids/masks stay int64)",
            ),
            {
                "keep_io_types": False,
                "op_block_list": "float16.DEFAULT_OP_BLOCK_LIST",
                "node_block_list": "the RMSNorm-statistics and RoPE nodes named above (found by pattern)",
            },
            TOLERANCES["fp16"],
        )
    if precision == "int8":
        return Recipe(
            "int8",
            "onnx",
            "onnxruntime.quantization.quantize_dynamic",
            ort,
            "int8, per output channel",
            "uint8 asymmetric per tensor, quantised at run time (dynamic)",
            True,
            None,
            (
                "embedding (Gather): fp32",
                "activation x activation MatMuls (attention scores, attention x V): fp32",
                "RMSNorm, RoPE, softmax, GELU: fp32",
            ),
            {
                "op_types_to_quantize": ["MatMul"],
                "per_channel": True,
                "reduce_range": False,
                "weight_type": "QInt8",
                "extra_options": {"MatMulConstBOnly": True, "WeightSymmetric": True},
            },
            TOLERANCES["int8"],
        )
    group = group_size_for(cfg)
    return Recipe(
        "int4",
        "onnx",
        "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer",
        ort,
        f"int4, symmetric, {group} weights per scale (MatMulNBits)",
        "int8 per block at run time (accuracy_level 4)",
        True,
        group,
        (
            "embedding (Gather): fp32",
            "activation x activation MatMuls (attention scores, attention x V): fp32",
            "RMSNorm, RoPE, softmax, GELU: fp32",
        ),
        {
            "bits": 4,
            "block_size": group,
            "is_symmetric": True,
            "accuracy_level": 4,
            "op_types_to_quantize": ["MatMul"],
            "quant_format": "QOperator",
        },
        TOLERANCES["int4"],
    )


def openvino_recipe(precision: str, cfg) -> Recipe:
    check_supported("openvino", precision, "openvino")
    ov = _version("openvino")
    compute = (
        "runtime's INFERENCE_PRECISION_HINT (recorded per row in runtime_options; the accuracy here is "
        "measured at f32)"
    )
    if precision == "fp32":
        return Recipe(
            "fp32", "openvino", "openvino.save_model(compress_to_fp16=False)", ov, "fp32", "f32", None, None
        )
    if precision == "bf16":
        return Recipe(
            "bf16",
            "openvino",
            "the fp32 IR, compiled with INFERENCE_PRECISION_HINT=bf16",
            ov,
            "fp32 (stored; the CPU plugin converts them to bf16 when it compiles)",
            "bf16 (INFERENCE_PRECISION_HINT=bf16, read back from every compiled graph; the accuracy here is "
            "measured so)",
            None,
            None,
            ("the KV cache: KV_CACHE_PRECISION, f32 unless --kv-cache-precision says otherwise",
             "ops the CPU plugin runs in f32 by its own choice"),
            {"INFERENCE_PRECISION_HINT": "bf16"},
            TOLERANCES["bf16"],
        )
    if precision == "fp16":
        return Recipe(
            "fp16",
            "openvino",
            "openvino.save_model(compress_to_fp16=True)",
            ov,
            "fp16 (stored)",
            compute,
            None,
            None,
            ("weights are decompressed to the compute precision at run time",),
            {"compress_to_fp16": True},
            TOLERANCES["fp16"],
        )
    nncf = _version("nncf")
    if precision == "int8":
        return Recipe(
            "int8",
            "openvino",
            "nncf.compress_weights",
            nncf,
            "int8, symmetric, per output channel",
            compute,
            True,
            None,
            ("none: every MatMul and the embedding are int8_sym",),
            {"mode": "INT8_SYM", "openvino": ov},
            TOLERANCES["int8"],
        )
    group = group_size_for(cfg)
    return Recipe(
        "int4",
        "openvino",
        "nncf.compress_weights",
        nncf,
        f"int4, symmetric, {group} weights per scale",
        compute,
        True,
        group,
        (
            "embedding and the last MatMul of each graph (NNCF's first/last-layer rule, all_layers=False): "
            "int8_sym per channel (backup_mode INT8_SYM, symmetric for the NPU)",
        ),
        {
            "mode": "INT4_SYM",
            "group_size": group,
            "ratio": 1.0,
            "all_layers": False,
            "backup_mode": "INT8_SYM",
            "openvino": ov,
        },
        TOLERANCES["int4"],
    )


def recipe(fmt: str, precision: str, cfg) -> Recipe:
    if fmt == "onnx":
        return onnx_recipe(precision, cfg)
    if fmt == "openvino":
        return openvino_recipe(precision, cfg)
    raise InvalidOption(f"no precision recipes for format {fmt!r}")


def recorded_recipe(manifest: dict, precision_name: str) -> dict:
    """The recipe a result row carries: the artifact's own; for an fp32 ONNX/OpenVINO artifact
    exported before recipes were recorded, the fp32 recipe with the manifest's tool version."""
    if manifest.get("precision_recipe"):
        return manifest["precision_recipe"]
    fmt = manifest.get("format")
    if precision_name == "fp32" and fmt in SUPPORTED:
        rec = recipe(fmt, "fp32", None).to_dict()
        versions = manifest.get("versions") or {}
        rec["tool_version"] = versions.get("openvino" if fmt == "openvino" else "torch", rec["tool_version"])
        return rec
    return {"precision": precision_name, "format": fmt, "tool": manifest.get("exporter"),
            "note": "the exporter recorded no recipe"}


# ---- accuracy against fp32 PyTorch ----


def accuracy_inputs(
    vocab: int,
    batch: int = ACCURACY_BATCH,
    prompt: int = ACCURACY_PROMPT,
    steps: int = ACCURACY_STEPS,
    seed: int = 4321,
):
    from slmbench.exporters.parity import parity_inputs

    return parity_inputs(vocab, batch=batch, prompt=prompt, steps=steps, seed=seed)


def measure_accuracy(
    model, cfg, candidate_steps, runtime: str, rec: Recipe, inputs=None, config: dict | None = None
) -> dict:
    """Teacher-forced logits of the candidate against fp32 PyTorch: max |dlogit|, greedy-token
    agreement, and the reference logits' spread for scale. Raises ParityError only for fp32 beyond
    1e-4 or for non-finite logits."""
    import numpy as np

    from slmbench.exporters import parity

    prompt, forced = inputs if inputs is not None else accuracy_inputs(cfg.vocab_size)
    reference = parity.torch_step_logits(model, cfg, prompt, forced)
    candidate = [np.asarray(c, dtype=np.float32) for c in candidate_steps(prompt, forced)]
    bad = [i for i, c in enumerate(candidate) if not np.all(np.isfinite(c))]
    if bad:
        raise parity.ParityError(
            f"{runtime} {rec.precision} logits are not finite at steps {bad} "
            "(overflow or a broken graph); this artifact cannot be measured"
        )
    spread = float(np.std(np.concatenate([r.ravel() for r in reference])))
    exact = rec.precision == "fp32"
    result = parity.compare(reference, candidate, rec.tolerance if exact else rec.tolerance * spread, runtime)
    result.update(
        {
            "precision": rec.precision,
            "reference": "fp32 PyTorch, teacher-forced",
            "prompt_len": int(prompt.shape[1]),
            "forced_tokens": int(forced.shape[1]),
            "reference_logit_std": spread,
            "relative_max_abs_diff": result["max_abs_diff"] / spread if spread > 0 else math.inf,
            "relative_tolerance": None if exact else rec.tolerance,
            "enforced": exact,
            "policy": (
                "fails beyond tolerance"
                if exact
                else "recorded; tolerance is a loose expectation, only non-finite logits fail"
            ),
        }
    )
    if config is not None:
        result["config"] = dict(config)
    if exact and not result["passed"]:
        raise parity.ParityError(
            f"{runtime} logits differ from PyTorch by {result['max_abs_diff']:.3g} "
            f"(tolerance {rec.tolerance:g})"
        )
    return result


ACCURACY_KEYS = ("max_abs_diff", "token_agreement", "relative_max_abs_diff", "reference_logit_std",
                 "tolerance", "passed", "enforced", "runtime", "steps", "batch", "config")


def row_fields(manifest: dict, precision_name: str) -> dict:
    """What a result row carries about precision: the recipe, and the artifact's logit error against
    fp32 PyTorch (the low-precision accuracy record, or the fp32 parity check)."""
    measured = manifest.get("accuracy") or manifest.get("parity") or {}
    accuracy = {k: measured[k] for k in ACCURACY_KEYS if k in measured}
    if accuracy:
        accuracy["reference"] = measured.get("reference", "fp32 PyTorch, teacher-forced")
        accuracy.setdefault("enforced", "accuracy" not in manifest)  # a plain parity check raises
    return {"precision_recipe": recorded_recipe(manifest, precision_name), "accuracy": accuracy or None}
