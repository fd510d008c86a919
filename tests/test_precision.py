"""Precisions fp32 / fp16 / int8 / int4 on ONNX Runtime CPU and OpenVINO CPU (issue 8).

Every pair is exported, run through run_benchmark on the tiny models, and its recipe and accuracy
against fp32 PyTorch are checked in the row and the manifest. Runs are module-cached: one
run_benchmark per runtime x precision, shared by the tests that read it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from slmbench.errors import InvalidOption
from slmbench.exporters import precision as P
from slmbench.models import resolve_model

TINY = ("mu-tiny", "deconly-tiny")
PAIRS = [(rt, p) for rt in ("onnxruntime", "openvino") for p in P.PRECISIONS]
# What each precision's weights are stored as, in each format's own type names.
STORED = {("onnxruntime", "fp16"): "fp16", ("onnxruntime", "int8"): "int8",
          ("onnxruntime", "int4"): "int4 (MatMulNBits)", ("openvino", "fp16"): "f16",
          ("openvino", "int8"): "i8", ("openvino", "int4"): "i4"}


@pytest.fixture(scope="module")
def runs(cache_dir):
    """(runtime, precision) -> {model: row}, measured on first use."""
    from slmbench.config import RunSettings, plan
    from slmbench.core.benchmark import run_benchmark

    done: dict = {}
    settings = RunSettings(input_len=8, output_len=4, warmup=0, min_reps=1, min_time_s=0.0)

    def get(runtime: str, precision: str) -> dict:
        pytest.importorskip("onnxruntime" if runtime == "onnxruntime" else "openvino")
        if runtime == "openvino" and precision in ("int8", "int4"):
            pytest.importorskip("nncf", reason="OpenVINO int8/int4 need nncf (the quant extra)")
        if (runtime, precision) not in done:
            rows = run_benchmark(plan(TINY, "cpu", [runtime], precision, settings), cache_dir=cache_dir,
                                 log=lambda _: None)
            done[runtime, precision] = {r["model"]: r for r in rows}
        return done[runtime, precision]

    return get


@pytest.mark.parametrize(("runtime", "precision"), PAIRS, ids=[f"{r}-{p}" for r, p in PAIRS])
def test_every_pair_exports_runs_and_records_recipe_and_accuracy(runs, runtime, precision):
    from slmbench.exporters.artifact import Artifact

    for model, row in runs(runtime, precision).items():
        assert row["status"] == "ok" and row["precision"] == precision
        assert row["tokens_generated"] == 4 and row["metrics"]["ttft_s"]["median"] > 0
        recipe = row["precision_recipe"]
        assert recipe["precision"] == precision and recipe["tool"] and recipe["tool_version"]
        assert {"symmetric", "group_size", "higher_precision", "weights", "activations"} <= set(recipe)
        manifest = Artifact.open(row["artifact"]["path"]).manifest
        assert manifest["variant"]["precision"] == precision == row["artifact"]["variant"]["precision"]
        accuracy = row["accuracy"]
        assert math.isfinite(accuracy["max_abs_diff"]) and 0.0 <= accuracy["token_agreement"] <= 1.0
        if precision == "fp32":
            assert accuracy["max_abs_diff"] <= 1e-4 and accuracy["enforced"]
            continue
        # low precision: the recipe is part of the cache key, the accuracy is in the manifest too
        assert manifest["variant"]["recipe"] == recipe == manifest["precision_recipe"]
        assert manifest["accuracy"]["max_abs_diff"] == accuracy["max_abs_diff"]
        assert manifest["accuracy"]["steps"] == P.ACCURACY_STEPS + 1 and not accuracy["enforced"]
        assert accuracy["passed"], f"{model} {runtime} {precision}: {accuracy['relative_max_abs_diff']:.3f}"
        assert accuracy["token_agreement"] >= 0.5, f"{model} {runtime} {precision}"
        stored = STORED[runtime, precision]
        types = manifest["weights_by_type"]
        assert all(stored in t for t in types.values()), types


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_error_and_size_order_fp32_fp16_int8_int4(runs, runtime):
    """Fewer bits, larger logit error and smaller weights: measured, so a recipe that silently did
    nothing (or quantised the wrong thing) shows up here."""
    for model in TINY:
        rows = {p: runs(runtime, p)[model] for p in P.PRECISIONS}
        err = [rows[p]["accuracy"]["max_abs_diff"] for p in P.PRECISIONS]
        assert err[0] < err[1] < err[2] < err[3], (model, err)
        size = {p: rows[p]["artifact"]["weight_bytes"] for p in P.PRECISIONS}
        assert size["fp16"] < 0.6 * size["fp32"], size
        # the tiny models are mostly embedding, which ONNX Runtime's recipes keep in fp32
        assert size["int4"] < size["int8"] < 0.8 * size["fp32"], size


def test_onnx_fp16_keeps_an_fp16_kv_cache_and_fp32_statistics(runs):
    import onnx
    from onnx import TensorProto

    from slmbench.exporters.artifact import Artifact

    rows = runs("onnxruntime", "fp16")
    assert all(r["device_info"]["kv_dtype"] == "float16" for r in rows.values())
    artifact = Artifact.open(rows["deconly-tiny"]["artifact"]["path"])
    model = onnx.shape_inference.infer_shapes(onnx.load(str(artifact.graph_path("decoder"))))
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.output)}
    kept = [n for n in model.graph.node if n.op_type in ("ReduceMean", "Cos", "Sin", "Sqrt")]
    assert len(kept) >= 3 and all(types[n.output[0]] == TensorProto.FLOAT for n in kept)
    assert types["logits"] == TensorProto.FLOAT16 and types["present_key.0"] == TensorProto.FLOAT16


def test_openvino_int4_recipe_is_symmetric_with_a_recorded_group(runs):
    row = runs("openvino", "int4")["mu-tiny"]
    recipe = row["precision_recipe"]
    assert recipe["symmetric"] and recipe["group_size"] == 64  # tiny: attention inner width 64
    assert recipe["options"]["mode"] == "INT4_SYM" and recipe["options"]["backup_mode"] == "INT8_SYM"
    from slmbench.exporters.artifact import Artifact

    types = Artifact.open(row["artifact"]["path"]).manifest["weights_by_type"]
    # symmetric throughout: NNCF's asymmetric schemes store u4/u8 weights and zero points
    assert all("i4" in t and "i8" in t and not {"u4", "u8"} & set(t) for t in types.values()), types


def test_group_size_adapts_to_the_model():
    assert P.group_size_for(resolve_model("mu-330m").config) == 128
    assert P.group_size_for(resolve_model("deconly-tiny").config) == 64
    assert P.onnx_recipe("int4", resolve_model("mu-330m").config).options["block_size"] == 128


def test_unsupported_precision_is_one_line_listing_what_is(cache_dir):
    from click.testing import CliRunner

    from slmbench.cli import cli

    with pytest.raises(InvalidOption, match=r"onnxruntime does not support precision 'bf16'; supported: "
                                            r"fp32, fp16, int8, int4$"):
        P.recipe("onnx", "bf16", resolve_model("mu-tiny").config)
    result = CliRunner().invoke(cli, ["run", "-m", "deconly-tiny", "-r", "openvino", "-p", "int3", "-i", "8",
                                      "-o", "4", "--cache-dir", str(cache_dir), "--results",
                                      str(cache_dir / "never.jsonl")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    expected = "error: openvino does not support precision 'int3'; supported: fp32, fp16, int8, int4, bf16"
    assert expected in result.output


def test_fp32_parity_fails_hard_low_precision_records_and_nan_fails():
    from slmbench.exporters.parity import ParityError

    model = resolve_model("deconly-tiny")
    cfg, torch_model = model.config, model.build()
    from slmbench.exporters.parity import torch_step_logits

    def shifted(delta):
        return lambda prompt, forced: [x + delta for x in torch_step_logits(torch_model, cfg, prompt, forced)]

    fp32, int8 = P.onnx_recipe("fp32", cfg), P.onnx_recipe("int8", cfg)
    with pytest.raises(ParityError, match="tolerance 0.0001"):
        P.measure_accuracy(torch_model, cfg, shifted(1e-3), "test", fp32)
    recorded = P.measure_accuracy(torch_model, cfg, shifted(1e-3), "test", int8)
    assert recorded["passed"] and abs(recorded["max_abs_diff"] - 1e-3) < 1e-5
    assert recorded["token_agreement"] == 1
    far = P.measure_accuracy(torch_model, cfg, lambda p, f: [x * -1 for x in shifted(0)(p, f)], "test", int8)
    assert not far["passed"] and far["token_agreement"] < 0.5  # recorded as failed, not raised
    with pytest.raises(ParityError, match="not finite"):
        P.measure_accuracy(torch_model, cfg, shifted(np.nan), "test", int8)


def test_sweep_leaves_out_unsupported_precision_runtime_pairs(tmp_path):
    from slmbench.sweep.files import SweepFileError, expand, load_sweep

    text = """name = "prec"
[grid]
models = ["mu-tiny", "deconly-tiny"]
runtimes = {runtimes}
precisions = {precisions}
input_lens = [8]
output_lens = [4]
"""
    path = tmp_path / "prec.toml"
    path.write_text(text.format(runtimes='["onnxruntime", "torch"]', precisions='["fp32", "int8"]'))
    configs, notes = expand(load_sweep(str(path)))
    pairs = sorted((c.runtime, c.precision) for c in configs)
    assert pairs == [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("torch", "fp32")]
    assert any("torch does not support precision 'int8'" in n for n in notes)
    path.write_text(text.format(runtimes='["torch"]', precisions='["int4"]'))
    with pytest.raises(SweepFileError, match="torch does not support precision 'int4'"):
        expand(load_sweep(str(path)))


def test_report_shows_the_accuracy_of_each_precision(runs):
    from slmbench.report.frames import build
    from slmbench.report.markdown import accuracy_rows

    rows = [r for p in P.PRECISIONS for r in runs("onnxruntime", p).values()]
    table = accuracy_rows(build(rows))
    assert len(table) == 8 and list(table["precision"].unique()) == list(P.PRECISIONS)
    assert {"model", "runtime", "precision", "max abs Δlogit", "token agreement"} <= set(table.columns)


def test_openvino_weight_compression_without_nncf_says_how_to_install(monkeypatch):
    import sys

    from slmbench.errors import BenchError
    from slmbench.exporters.compress_openvino import compress_model

    monkeypatch.setitem(sys.modules, "nncf", None)  # import nncf -> ImportError
    rec = P.openvino_recipe("int8", resolve_model("deconly-tiny").config)
    with pytest.raises(BenchError, match=r"needs nncf: pip install 'slmbench\[quant\]'"):
        compress_model(object(), rec)
