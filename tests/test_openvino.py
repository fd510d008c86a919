"""OpenVINO: stateful IR export and parity, the runner on CPU, device truth (GPU/NPU absence,
refused silent fallback, AUTO), compile caching, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from slmbench.cli import cli
from slmbench.core.measure import generate
from slmbench.errors import DeviceUnavailable, InvalidOption
from slmbench.exporters import parity
from slmbench.exporters.artifact import ArtifactError
from slmbench.models import resolve_model
from slmbench.runners import select_runner
from slmbench.runners.openvino import OpenVinoRunner, openvino_artifact
from slmbench.runners.openvino import runner as ovr
from slmbench.runners.openvino.stateful import StatefulSession

ov = pytest.importorskip("openvino")
FAMILIES = ("mu-tiny", "deconly-tiny")


@pytest.fixture(scope="module")
def stateful(cache_dir):
    return {name: openvino_artifact(resolve_model(name), cache_dir=cache_dir)[0] for name in FAMILIES}


@pytest.mark.parametrize("name", FAMILIES)
def test_stateful_ir_and_manifest(stateful, name):
    art = stateful[name]
    m = art.manifest
    assert m["format"] == "openvino" and m["variant"] == {"precision": "fp32", "mode": "stateful"}
    assert m["versions"]["openvino"] == ov.get_version()
    cfg = resolve_model(name).config  # one fused attention per self-attention block (exporters/openvino.py)
    assert m["attention"]["fused_sdpa_ops"]["decoder"] >= cfg.decoder_layers
    assert m["attention"]["fused_sdpa_ops"].get("encoder", 0) == cfg.encoder_layers
    assert m["parity"]["passed"] and m["parity"]["max_abs_diff"] <= parity.FP32_TOLERANCE
    assert m["parity"]["config"]["KV_CACHE_PRECISION"] == "f32"
    assert set(m["files"]) == {f"{g}.{ext}" for g in m["graphs"] for ext in ("xml", "bin")}
    model = ov.Core().read_model(str(art.graph_path("decoder")))
    dec = m["graphs"]["decoder"]
    # The KV cache is state: no past_* inputs, no present_* outputs, one variable per K and V.
    assert [next(iter(p.get_names())) for p in model.inputs] == dec["inputs"]
    assert [p.get_names() for p in model.outputs] == [{"logits"}, {"next_token"}]
    assert not any(n.startswith("past_") for n in dec["inputs"]) and "beam_idx" in dec["inputs"]
    assert len(model.get_sinks()) == len(dec["states"]) == 2 * art.manifest["config"]["decoder_layers"]
    if name == "mu-tiny":
        assert "encoder_attention_mask" in dec["inputs"] and "cross_key.0" in dec["inputs"]
        assert m["graphs"]["encoder"]["outputs"][1:] == [n for n in dec["inputs"] if n.startswith("cross_")]


@pytest.mark.parametrize("name", FAMILIES)
def test_the_decoder_fuses_no_gelu_into_a_matmul(stateful, name):
    """The CPU plugin runs a FullyConnected with a Gelu fused on brgemm, at one token about 2/3 of
    MLAS's bandwidth (models/blocks.set_openvino_forms): the decoder writes its GELU so none is fused;
    the encoder, which runs over the whole prompt, keeps the fusion."""
    art = stateful[name]
    assert resolve_model(name).config.activation == "gelu_tanh"
    core = ov.Core()
    for graph in art.manifest["graphs"]:
        model = core.read_model(str(art.graph_path(graph)))
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        fused = [op.get_rt_info()["originalLayersNames"].astype(str) for op in compiled.get_runtime_model().get_ops()
                 if op.get_rt_info()["layerType"].astype(str) == "FullyConnected"]
        with_gelu = [names for names in fused if "Gelu" in names or "Sigmoid" in names]
        if graph == "decoder":
            assert fused and not with_gelu
            assert not any(op.get_type_name() == "Gelu" for op in model.get_ops())
        else:
            assert len(with_gelu) == resolve_model(name).config.encoder_layers


def test_export_is_cached(stateful, cache_dir):
    art, reused = openvino_artifact(resolve_model("deconly-tiny"), cache_dir=cache_dir)
    assert reused and art.path == stateful["deconly-tiny"].path


def _session(art, config):
    core = ov.Core()
    graphs = art.manifest["graphs"]
    compiled = {role: core.compile_model(str(art.graph_path(role)), "CPU", config) for role in graphs}
    return StatefulSession(
        compiled["decoder"], compiled.get("encoder"), art.manifest["kv"], graphs["decoder"]["inputs"]
    )


@pytest.mark.parametrize("name", FAMILIES)
def test_exact_config_is_what_parity_depends_on(stateful, name):
    """f32 everywhere matches PyTorch to 1e-4 (batch 2, 5 steps). Where the CPU plugin's own default
    inference precision is bf16 (AMX / AVX-512-BF16 machines), the default config does not."""
    art, spec = stateful[name], resolve_model(name)
    model, cfg = spec.build(), spec.config
    prompt, forced = parity.parity_inputs(cfg.vocab_size, batch=2, prompt=9, steps=4, seed=7)
    reference = parity.torch_step_logits(model, cfg, prompt, forced)
    run = lambda config: parity.compare(
        reference,
        parity.teacher_forced(_session(art, config), cfg, prompt, forced),
        parity.FP32_TOLERANCE,
        "ov",
    )
    exact = run({"KV_CACHE_PRECISION": "f32", "INFERENCE_PRECISION_HINT": "f32"})
    assert exact["passed"] and exact["token_agreement"] == 1.0
    if ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT") == ov.Type.bf16:
        assert run({})["max_abs_diff"] > 10 * exact["max_abs_diff"]


def test_unfed_input_is_refused(stateful):
    """OpenVINO would run the decoder with empty cross K/V; the session refuses instead."""
    art = stateful["mu-tiny"]
    session = _session(art, {"INFERENCE_PRECISION_HINT": "f32"})
    ids = np.ones((1, 4), np.int64)
    session.start(ids, 2)  # no encode(): cross_* and encoder_attention_mask never set
    with pytest.raises(ArtifactError, match="cross_key.0.*not fed|not fed"):
        session.decode(np.zeros((1, 1), np.int64))


def test_wrong_names_are_refused(stateful):
    art = stateful["deconly-tiny"]
    compiled = ov.Core().compile_model(str(art.graph_path("decoder")), "CPU")
    with pytest.raises(ArtifactError, match="input_ids"):
        StatefulSession(compiled, None, art.manifest["kv"], ["ids"])


def test_runner_matches_onnxruntime_tokens(stateful, cache_dir):
    """Same prompt, same greedy tokens as ONNX Runtime, both families; batch 2."""
    ids = np.random.default_rng(3).integers(1, 8192, size=(2, 12), dtype=np.int64)
    for name in FAMILIES:
        spec = resolve_model(name)
        tokens = {}
        for runtime in ("openvino", "onnxruntime"):
            runner = select_runner("cpu", runtime)("cpu", 1)
            runner.load(runner.prepare(spec, "fp32", cache_dir)[0])
            tokens[runtime] = generate(runner, ids, 5, spec.config.is_encoder_decoder, 0)[1]
            tokens[runtime + "-again"] = generate(runner, ids, 5, spec.config.is_encoder_decoder, 0)[1]
            runner.close()
        assert np.array_equal(tokens["openvino"], tokens["onnxruntime"]), name
        assert np.array_equal(tokens["openvino"], tokens["openvino-again"]), name  # state reset per request


def test_load_records_settings_and_device(stateful):
    runner = OpenVinoRunner("cpu", 1, {"kv_cache_precision": "f16"})
    info = runner.load(stateful["mu-tiny"])
    o = info.options
    assert info.device_executed == "CPU" and info.compile_s > 0 and info.runtime_version == ov.get_version()
    assert o["mode"] == "stateful" and o["config"]["PERFORMANCE_HINT"] == "LATENCY"
    assert o["applied"]["INFERENCE_NUM_THREADS"] == 1 and o["applied"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert o["kv_cache_precision"] == "f16" and set(o["compile_s"]) == {"encoder", "decoder"}
    assert info.device_info["full_device_name"] and info.device_info["execution_devices"]["decoder"] == [
        "CPU"
    ]
    json.dumps(info.options), json.dumps(info.device_info)  # rows must serialise


def _mapped_bytes(name: str) -> int:
    """This process's resident bytes of mappings of files called `name` (smaps)."""
    total, current = 0, None
    for line in open("/proc/self/smaps"):
        head = line.split()
        if "-" in head[0] and len(head) >= 5:
            current = head[5] if len(head) > 5 else None
        elif head[0] == "Rss:" and current and current.endswith(name):
            total += int(head[1]) * 1024
    return total


@pytest.mark.parametrize("name", FAMILIES)
def test_load_primes_the_plugin_and_lets_the_ir_pages_go(stateful, name):
    """The CPU plugin packs part of the weights at the first inference: load makes one request, then
    the .bin's mapped pages are released; the model still generates what it generated before."""
    runner = OpenVinoRunner("cpu", 1)
    primed = runner.load(stateful[name]).options["primed"]
    assert primed["request_s"] > 0 and primed["released_file_bytes"] > 0
    assert _mapped_bytes("decoder.bin") < 0.5 * (stateful[name].path / "decoder.bin").stat().st_size
    ids = np.arange(1, 9, dtype=np.int64)[None]
    fresh = OpenVinoRunner("cpu", 1)
    fresh.load(stateful[name])
    start = resolve_model(name).config.decoder_start_token
    a = generate(runner, ids, 6, name.startswith("mu"), start)[1]
    b = generate(fresh, ids, 6, name.startswith("mu"), start)[1]
    np.testing.assert_array_equal(a, b)


def test_warm_compile_uses_the_cache(stateful, tmp_path):
    blobs = tmp_path / "ov-cache"
    loads = []
    for _ in range(2):
        runner = OpenVinoRunner("cpu", 1, {"ov_cache_dir": str(blobs)})
        loads.append(runner.load(stateful["deconly-tiny"]).options)
        runner.close()
    cold, warm = loads
    assert cold["cache_warm_before"] is False and cold["loaded_from_cache"] == {"decoder": False}
    assert warm["cache_warm_before"] is True and warm["loaded_from_cache"] == {"decoder": True}
    assert any(blobs.iterdir())


# ---- device truth ----


def test_gpu_and_npu_absence_is_explained():
    """The real behaviour of this machine: no OpenCL for the GPU plugin, no NPU driver/compiler."""
    seen = ov.Core().available_devices
    if "NPU" not in seen:
        found = OpenVinoRunner.availability("npu")
        assert (
            not found.ok
            and found.reason.startswith("no Intel NPU: OpenVINO")
            and "install the Intel NPU driver" in found.reason
        )
        assert "\n" not in found.reason
    if not any(d.startswith("GPU") for d in seen):
        found = OpenVinoRunner.availability("gpu")
        assert not found.ok and found.reason.startswith("no Intel GPU") and "\n" not in found.reason
    assert OpenVinoRunner.availability("cpu").ok


@pytest.mark.parametrize("device", ["npu", "gpu"])
def test_cli_absent_device_exits_2_with_one_line(device, tmp_path, cache_dir):
    plugin = device.upper()
    if any(d.startswith(plugin) for d in ov.Core().available_devices):
        pytest.skip(f"this machine has an {plugin}")
    result = CliRunner().invoke(
        cli,
        [
            "run",
            "--device",
            device,
            "-m",
            "mu-tiny",
            "--results",
            str(tmp_path / "r.jsonl"),
            "--cache-dir",
            str(cache_dir),
        ],
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: device {device} is unavailable")
    results = tmp_path / "r.jsonl"
    assert "Traceback" not in result.output and (not results.exists() or results.read_text() == "")


class _FakeCompiled:
    def __init__(self, executes):
        self.executes = executes

    def get_property(self, key):
        if key == "EXECUTION_DEVICES":
            return self.executes
        raise RuntimeError(f"unsupported {key}")


class _FakeCore:
    """What AUTO:NPU,CPU does on a machine without an NPU: compiles, then runs on CPU."""

    calls: list = []

    def __init__(self):
        pass

    def set_property(self, *args):
        pass

    def compile_model(self, path, target, config):
        _FakeCore.calls.append(target)
        return _FakeCompiled(["(CPU)"])


def _static_artifact(cache_dir, name="deconly-tiny"):
    return openvino_artifact(
        resolve_model(name), mode="static", cache_dir=cache_dir, prompt_len=8, response_len=4
    )[0]


def test_fake_npu_via_auto_falling_back_to_cpu_is_refused(monkeypatch, cache_dir):
    art = _static_artifact(cache_dir)
    monkeypatch.setattr(ovr, "_availability", lambda device: ovr.Availability(True))
    monkeypatch.setattr(ov, "Core", _FakeCore)
    runner = OpenVinoRunner(
        "npu", options={"ov_device": "AUTO:NPU,CPU", "max_prompt_len": 8, "min_response_len": 4}
    )
    with pytest.raises(
        DeviceUnavailable, match=r"AUTO:NPU,CPU executes on CPU, not NPU; refusing a silent fallback"
    ):
        runner.load(art)
    assert _FakeCore.calls[-1] == "AUTO:NPU,CPU"


def test_real_auto_on_this_machine_is_refused_for_npu(monkeypatch, cache_dir):
    """Real OpenVINO: AUTO:NPU,CPU compiles here and runs on CPU; pretend the NPU was detected."""
    if "NPU" in ov.Core().available_devices:
        pytest.skip("this machine has an NPU")
    monkeypatch.setattr(ovr, "_availability", lambda device: ovr.Availability(True))
    runner = OpenVinoRunner(
        "npu", options={"ov_device": "AUTO:NPU,CPU", "max_prompt_len": 8, "min_response_len": 4}
    )
    with pytest.raises(DeviceUnavailable, match="executes on CPU, not NPU"):
        runner.load(_static_artifact(cache_dir))


def test_auto_when_asked_records_what_ran(stateful):
    runner = OpenVinoRunner("cpu", 1, {"ov_device": "AUTO:CPU"})
    info = runner.load(stateful["deconly-tiny"])
    assert info.options["compile_target"] == "AUTO:CPU" and info.device_executed == "CPU"
    assert info.device_info["execution_devices"]["decoder"] == ["CPU"]


def test_runner_option_errors():
    with pytest.raises(InvalidOption, match="npuw.*--device npu"):
        OpenVinoRunner("cpu", options={"mode": "npuw"})
    with pytest.raises(InvalidOption, match="unknown OpenVINO options"):
        OpenVinoRunner("cpu", options={"kv_precision": "f32"})
    with pytest.raises(InvalidOption, match="explicit f32 tensors"):
        OpenVinoRunner("cpu", options={"mode": "static", "kv_cache_precision": "u8"})
    with pytest.raises(InvalidOption, match="KV cache precision"):
        OpenVinoRunner("cpu", options={"kv_cache_precision": "f64"})
    with pytest.raises(InvalidOption, match="max_prompt_len"):
        OpenVinoRunner("cpu", options={"mode": "static"}).prepare(resolve_model("mu-tiny"), "fp32")
    with pytest.raises(InvalidOption, match="decoder-only"):
        OpenVinoRunner("npu", options={"mode": "npuw", "max_prompt_len": 8, "min_response_len": 4}).prepare(
            resolve_model("mu-tiny"), "fp32"
        )


# ---- CLI ----

ROW_FIELDS = (
    "model",
    "family",
    "parameters",
    "device",
    "runtime",
    "runtime_version",
    "precision",
    "batch",
    "input_len",
    "output_len",
    "threads",
    "metrics",
    "repetitions",
    "warnings",
    "environment",
    "artifact",
    "cold_ttft_s",
    "load_s",
    "compile_s",
    "peak_rss_bytes",
    "device_executed",
    "key",
    "status",
    "tokens_generated",
    "mode",
    "runtime_options",
    "device_info",
)


def test_cli_run_openvino_writes_rows_like_onnxruntime(tmp_path, cache_dir):
    results = tmp_path / "results.jsonl"
    common = [
        "-m",
        "mu-tiny",
        "-m",
        "deconly-tiny",
        "-i",
        "16",
        "-o",
        "6",
        "--min-reps",
        "3",
        "--min-time",
        "0",
        "--threads",
        "1",
        "--results",
        str(results),
        "--cache-dir",
        str(cache_dir),
    ]
    for runtime in ("openvino", "onnxruntime"):
        result = CliRunner().invoke(cli, ["run", "--runtime", runtime, *common])
        assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    ov_rows, ort_rows = rows[:2], rows[2:]
    assert [r["runtime"] for r in rows] == ["openvino"] * 2 + ["onnxruntime"] * 2
    for row in ov_rows:
        for field in ROW_FIELDS:
            assert row.get(field) is not None, field
        assert row["device_executed"] == "CPU" and row["mode"] == "stateful" and row["compile_s"] > 0
        assert row["runtime_options"]["kv_cache_precision"] == "f32" and row["tokens_generated"] == 6
        assert row["artifact"]["format"] == "openvino" and "mode=stateful" in row["key"]
    for ov_row, ort_row in zip(ov_rows, ort_rows, strict=True):
        assert set(ov_row) == set(ort_row)
        assert set(ov_row["metrics"]) == set(ort_row["metrics"])


def test_cli_openvino_options_need_openvino(tmp_path):
    result = CliRunner().invoke(
        cli, ["run", "-m", "mu-tiny", "--ov-mode", "static", "--results", str(tmp_path / "r.jsonl")]
    )
    assert result.exit_code == 2 and "--runtime openvino" in result.output


def test_cli_export_openvino(cache_dir):
    result = CliRunner().invoke(
        cli, ["export", "--runtime", "openvino", "-m", "deconly-tiny", "--cache-dir", str(cache_dir)]
    )
    assert result.exit_code == 0, result.output
    assert "deconly-tiny-openvino-" in result.output and "parity max" in result.output


@pytest.mark.parametrize("name", ["mu-tiny", "deconly-tiny"])
def test_bare_loop_does_the_same_work_as_the_harness(name, cache_dir):
    """The harness-overhead floor on OpenVINO: same tokens as the harness (measure_overhead checks)."""
    from slmbench.config import RunSettings
    from slmbench.runners.openvino import OpenVinoRunner
    from slmbench.tools.overhead import measure_overhead, overhead_ratios

    rows = measure_overhead(resolve_model(name), RunSettings(input_len=12, output_len=5, min_reps=3, min_time_s=0),
                            "cpu", 1, "fp32", cache_dir, None, OpenVinoRunner, log=lambda m: None)
    assert {r["loop"] for r in rows} == {"harness", "bare"}
    assert overhead_ratios(rows)[0]["overhead_step"] > 0
