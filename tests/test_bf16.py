"""bf16 as a precision: OpenVINO CPU's compute in bf16 on the fp32 IR, where the CPU has it; refused
with one line where it has not, and on runtimes without a bf16 path."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from slmbench.cli import cli
from slmbench.errors import InvalidOption
from slmbench.exporters.openvino import check_compute_precision
from slmbench.models import resolve_model
from slmbench.runners.openvino import OpenVinoRunner
from slmbench.runners.openvino import runner as ovr

ov = pytest.importorskip("openvino")
HAS_BF16 = "BF16" in [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 compute (no AVX512-BF16 or AMX)")


@needs_bf16
@pytest.mark.parametrize("name", ["mu-tiny", "deconly-tiny"])
def test_bf16_runs_the_fp32_ir_in_bf16_and_measures_that_error(cache_dir, name):
    runner = OpenVinoRunner("cpu", 1)
    artifact, _ = runner.prepare(resolve_model(name), "bf16", cache_dir)
    fp32, _ = OpenVinoRunner("cpu", 1).prepare(resolve_model(name), "fp32", cache_dir)
    accuracy = artifact.manifest["accuracy"]
    assert accuracy["config"]["INFERENCE_PRECISION_HINT"] == "bf16"
    assert accuracy["config"]["KV_CACHE_PRECISION"] == "f32"
    # bf16 keeps 8 bits of mantissa: an error well above fp32's 1e-4, well below unrelated logits'
    assert 1e-3 < accuracy["relative_max_abs_diff"] < accuracy["relative_tolerance"]
    assert fp32.manifest["parity"]["max_abs_diff"] < 1e-4
    assert artifact.manifest["precision_recipe"]["options"] == {"INFERENCE_PRECISION_HINT": "bf16"}
    stored = artifact.manifest["weights_by_type"]["decoder"]
    assert "f32" in stored and "bf16" not in stored  # a compute precision: the weights stay as stored
    info = runner.load(artifact)
    assert info.options["applied"]["INFERENCE_PRECISION_HINT"] == "bf16"
    assert info.options["kv_cache_precision"] == "f32"
    assert accuracy["batch"] == 1  # the one batch bf16 runs at
    with pytest.raises(InvalidOption, match="wrong logits at batch > 1"):
        runner.start(np.ones((2, 4), np.int64), 2)
    runner.start(np.ones((1, 4), np.int64), 2)
    if resolve_model(name).config.is_encoder_decoder:
        runner.encode(np.ones((1, 4), np.int64))
    assert runner.decode(np.ones((1, 4 if name == "deconly-tiny" else 1), np.int64)).shape == (1,)


def test_bf16_is_refused_on_a_cpu_without_it(monkeypatch, cache_dir):
    real = ov.Core.get_property

    def no_bf16(self, *args):
        if args[-1] == "OPTIMIZATION_CAPABILITIES":
            return ["FP32", "INT8", "BIN", "EXPORT_IMPORT"]
        return real(self, *args)

    monkeypatch.setattr(ov.Core, "get_property", no_bf16)
    with pytest.raises(InvalidOption, match="this CPU has no bf16 compute") as err:
        OpenVinoRunner("cpu", 1).prepare(resolve_model("deconly-tiny"), "bf16", cache_dir)
    assert "\n" not in str(err.value)
    with pytest.raises(InvalidOption, match="computes in f16 or f32"):
        ovr.check_bf16("GPU")


def test_a_compiled_model_that_runs_another_precision_is_refused():
    class Compiled:
        def get_property(self, key):
            assert key == "INFERENCE_PRECISION_HINT"
            return ov.Type.f32

    check_compute_precision(Compiled(), None)  # nothing asked: nothing to check
    check_compute_precision(Compiled(), "f32")
    with pytest.raises(InvalidOption, match="compiled for bf16 compute runs f32"):
        check_compute_precision(Compiled(), "bf16")


def test_bf16_on_onnxruntime_is_one_line_and_exit_2(tmp_path):
    result = CliRunner().invoke(cli, ["run", "-m", "deconly-tiny", "--runtime", "onnxruntime", "-p", "bf16",
                                      "--results", str(tmp_path / "r.jsonl")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and "bf16" in result.output  # refused before preparing anything
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
