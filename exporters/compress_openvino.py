"""Low-precision OpenVINO IR, derived from the fp32 IR of the same model and mode.

- fp16: the fp32 IR saved again with `openvino.save_model(compress_to_fp16=True)` (weights stored
  in fp16, decompressed at run time to the plugin's compute precision).
- int8: `nncf.compress_weights(INT8_SYM)`: symmetric per-channel int8 weights, data-free.
- int4: `nncf.compress_weights(INT4_SYM, group_size=group_size_for(cfg), ratio=1, backup INT8_SYM)`:
  the NPU's preferred scheme (symmetric; asymmetric group int4 aborts its compiler).
- bf16: a compute precision: the fp32 IR itself (hard-linked), compiled with
  INFERENCE_PRECISION_HINT=bf16 on a CPU that has it (AVX512-BF16 or AMX).
Deriving from the fp32 artifact means every mode (stateful, static, npuw) gets every precision
through the same code, and the fp32 graph it starts from has already passed the 1e-4 parity check.
The accuracy against fp32 PyTorch is measured on OpenVINO CPU at f32 compute (EXACT_CPU), so it is
the artifact's error, not the plugin's compute precision (that is recorded per result row), except
for bf16, measured at bf16 compute: its error is the compute's. It runs through the session the
runner passes in for the artifact's mode, as the fp32 parity check does.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from slmbench.errors import BenchError
from slmbench.exporters import openvino as ov_exporter
from slmbench.exporters import parity, precision, static
from slmbench.exporters.artifact import Artifact, code_digest, ensure_artifact
from slmbench.exporters.openvino import EXACT_CPU, SessionFactory, exact_session
from slmbench.exporters.precision import Recipe
from slmbench.models.spec import ModelSpec

# The static graphs take batch 1 and at most P prompt tokens and R - 1 forced ones.
STATIC_BATCH = 1


@contextlib.contextmanager
def quiet_nncf():
    """NNCF logs a bit-width table at INFO and draws its own rich progress bar on stdout (beside the
    CLI's); keep both off the console."""
    from nncf.common.logging.logger import nncf_logger

    level = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        nncf_logger.setLevel(level)


def compress_model(model, rec: Recipe):
    """The recipe applied to one openvino.Model (int8/int4); fp16 happens at save time."""
    if rec.precision not in ("int8", "int4"):
        return model
    try:
        import nncf
    except ImportError:
        raise BenchError(f"OpenVINO {rec.precision} needs nncf: pip install 'slmbench[quant]' "
                         "(or nncf==3.4.0)") from None

    opts = rec.options
    kwargs = {"mode": getattr(nncf.CompressWeightsMode, opts["mode"])}
    if rec.precision == "int4":
        kwargs.update(group_size=opts["group_size"], ratio=opts["ratio"], all_layers=opts["all_layers"],
                      backup_mode=getattr(nncf.BackupMode, opts["backup_mode"]))
    with quiet_nncf():
        return nncf.compress_weights(model, **kwargs)


def constant_types(model) -> dict[str, int]:
    """Elements of every Constant by element type: what actually stayed in which precision."""
    counts: dict[str, int] = {}
    for op in model.get_ops():
        if op.get_type_name() == "Constant":
            kind = op.get_element_type().get_type_name()
            counts[kind] = counts.get(kind, 0) + int(np.prod(list(op.get_output_shape(0)), dtype=np.int64))
    return dict(sorted(counts.items()))


def convert_graph(source: Path, target: Path, rec: Recipe) -> dict[str, int]:
    import openvino as ov

    if compute_precision(rec):  # the fp32 IR itself: linked, not copied
        for suffix in (".xml", ".bin"):
            _link_or_copy(source.with_suffix(suffix), target.with_suffix(suffix))
    else:
        model = compress_model(ov.Core().read_model(str(source)), rec)
        ov.save_model(model, str(target), compress_to_fp16=rec.precision == "fp16")
    return constant_types(ov.Core().read_model(str(target)))


def _link_or_copy(source: Path, target: Path) -> None:
    import shutil

    try:
        target.hardlink_to(source)
    except OSError:  # another file system
        shutil.copyfile(source, target)


def compute_precision(rec: Recipe) -> str | None:
    """The compute precision a recipe sets (bf16), None for a storage precision (fp16, int8, int4)."""
    return rec.options.get("INFERENCE_PRECISION_HINT")


def accuracy_config(rec: Recipe) -> dict:
    """What the accuracy is measured at: f32 compute, so it is the stored weights' error alone;
    for a compute precision, that precision, whose error it is."""
    return {**EXACT_CPU, "INFERENCE_PRECISION_HINT": compute_precision(rec) or EXACT_CPU["INFERENCE_PRECISION_HINT"]}


def _candidate(source: Artifact, out: Path, cfg, session: SessionFactory, config: dict):
    """Teacher-forced logits of the converted graphs in `out`, through the session the artifact's mode
    runs with, on CPU with `config`."""
    def run(prompt, forced):
        return parity.teacher_forced(exact_session(out, source.manifest, session, config), cfg, prompt, forced)

    return run


def accuracy_inputs_for(source: Artifact, cfg, batch: int | None = None):
    """The standard teacher-forced sequence (at `batch` where given), cut to what static graphs hold
    (batch 1, P, R - 1). bf16 is measured at batch 1, the only batch it runs (Stateful.check_request)."""
    static = source.manifest.get("static")
    if not static:
        return precision.accuracy_inputs(cfg.vocab_size, **({"batch": batch} if batch else {}))
    return precision.accuracy_inputs(cfg.vocab_size, batch=STATIC_BATCH,
                                     prompt=min(precision.ACCURACY_PROMPT, static["prompt_len"]),
                                     steps=max(0, min(precision.ACCURACY_STEPS, static["response_len"] - 1)))


def export_compressed(spec: ModelSpec, out: Path, source: Artifact, rec: Recipe, session: SessionFactory) -> dict:
    """Every graph of the fp32 IR `source` converted by `rec`, then its accuracy measured."""
    cfg = spec.config
    graphs = source.manifest["graphs"]
    types = {role: convert_graph(source.path / g["file"], out / g["file"], rec) for role, g in graphs.items()}
    config = accuracy_config(rec)
    runtime = f"openvino-{source.manifest['variant']['mode']}(CPU, {config['INFERENCE_PRECISION_HINT']})"
    inputs = accuracy_inputs_for(source, cfg, batch=1 if compute_precision(rec) == "bf16" else None)
    accuracy = precision.measure_accuracy(spec.build(), cfg, _candidate(source, out, cfg, session, config),
                                          runtime, rec, inputs=inputs, config=config)
    versions = dict(source.manifest.get("versions", {}))
    versions[rec.tool.split(".")[0]] = rec.tool_version
    manifest = {k: v for k, v in source.manifest.items()
                if k in ("graphs", "kv", "static", "opset", "reference_parity")}
    manifest.update({"precision": rec.precision, "precision_recipe": rec.to_dict(),
                     "exporter": f"{source.manifest.get('exporter')} -> {rec.tool}",
                     "source_artifact": source.key, "versions": versions, "parity": accuracy,
                     "accuracy": accuracy, "weights_by_type": types})
    return manifest


def compressed_openvino_artifact(spec: ModelSpec, precision_name: str,
                                 fp32: Callable[[], tuple[Artifact, bool]], session: SessionFactory,
                                 cache_dir=None, force: bool = False) -> tuple[Artifact, bool]:
    """The fp16/int8/int4 IR of `spec`, derived from the fp32 IR that `fp32()` returns (exporting it
    if needed) in the same mode; its accuracy is measured through `session`."""
    rec = precision.openvino_recipe(precision_name, spec.config)
    source, _ = fp32()
    variant = {**source.manifest["variant"], "precision": precision_name, "recipe": rec.to_dict(),
               "source": source.key}  # a changed fp32 artifact invalidates this one
    code = code_digest(ov_exporter.__file__, static.__file__, parity.__file__, precision.__file__, __file__)
    export = lambda s, out, v: export_compressed(s, out, source, rec, session)
    return ensure_artifact(spec, "openvino", variant, export, code, cache_dir, force)
