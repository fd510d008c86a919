"""CUDA on a machine without a GPU: the silent CPU fallback is refused, an absent GPU is one line
and exit 2, provenance parsing is right; the GPU tests themselves are marked and skip with the
reason. `bench/tools/gpu_check.py` (the script for a lent GPU machine) is run here in its CPU mode."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from slmbench.cli import cli
from slmbench.errors import DeviceUnavailable
from slmbench.exporters.artifact import ArtifactError
from slmbench.exporters.parity import parity_inputs
from slmbench.models import resolve_model
from slmbench.runners import cuda
from slmbench.runners.onnxruntime import OnnxRuntimeRunner, check_provider, past_dtype
from slmbench.runners.torch import TorchRunner

REPO = Path(__file__).resolve().parent.parent
TORCH_CUDA = TorchRunner.availability("cuda")
ORT_CUDA = OnnxRuntimeRunner.availability("cuda")
gpu = pytest.mark.gpu
needs_torch_cuda = pytest.mark.skipif(not TORCH_CUDA.ok,
                                      reason=f"no CUDA GPU for torch: {TORCH_CUDA.reason}")
needs_ort_cuda = pytest.mark.skipif(not ORT_CUDA.ok, reason=f"no CUDA for onnxruntime: {ORT_CUDA.reason}")
no_gpu_here = pytest.mark.skipif(TORCH_CUDA.ok or ORT_CUDA.ok, reason="a CUDA GPU is present")


class FakeSession:
    """What onnxruntime returns when CUDAExecutionProvider could not load: a working CPU session."""

    def __init__(self, providers):
        self._providers = providers

    def get_providers(self):
        return self._providers


def test_session_that_fell_back_to_cpu_is_refused(monkeypatch):
    import onnxruntime as ort

    made = []

    def fake_session(path, opts, providers):
        made.append(providers)
        return FakeSession(["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", fake_session)
    runner = OnnxRuntimeRunner("cuda", threads=1)
    with pytest.raises(DeviceUnavailable, match="fell back to CPUExecutionProvider instead of "
                                                "CUDAExecutionProvider; refusing"):
        runner._session("decoder.onnx")
    assert made == [[("CUDAExecutionProvider", {"use_tf32": "0"})]]  # asked for CUDA only (IEEE fp32)


def test_provider_check_accepts_the_device_it_asked_for():
    check_provider("CUDAExecutionProvider", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(DeviceUnavailable, match="fell back to nothing"):
        check_provider("CUDAExecutionProvider", [])


class FakeInput:
    def __init__(self, name, type_):
        self.name, self.type = name, type_


class FakeDecoder:
    def __init__(self, types):
        self._inputs = [FakeInput("input_ids", "tensor(int64)")]
        self._inputs += [FakeInput(n, t) for n, t in types.items()]

    def get_inputs(self):
        return self._inputs


def test_empty_past_takes_the_graph_dtype(tiny_onnx):
    names = ["past_key.0", "past_value.0"]
    assert past_dtype(FakeDecoder(dict.fromkeys(names, "tensor(float16)")), names) == np.float16
    assert past_dtype(FakeDecoder(dict.fromkeys(names, "tensor(float)")), names) == np.float32
    with pytest.raises(ArtifactError, match="past K/V inputs have types"):
        past_dtype(FakeDecoder({"past_key.0": "tensor(float16)", "past_value.0": "tensor(float)"}), names)
    runner = OnnxRuntimeRunner("cpu", 1)
    runner.load(tiny_onnx["deconly-tiny"])
    assert runner.kv_dtype == np.float32  # read from the real session


@no_gpu_here
def test_run_on_cuda_without_a_gpu_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "slmbench.cli", "run", "--device", "cuda", "-m", "mu-tiny",
                           "--results", str(tmp_path / "r.jsonl")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: device cuda is unavailable here"), proc.stderr
    assert "onnxruntime:" in lines[0] and "torch:" in lines[0]  # every candidate says why
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "r.jsonl").exists() or not (tmp_path / "r.jsonl").read_text()  # no row


@no_gpu_here
@pytest.mark.parametrize("runtime, reason", [("torch", "torch on cuda is unavailable: torch "),
                                             ("onnxruntime", "onnxruntime on cuda is unavailable: ")])
def test_each_cuda_runtime_says_why_it_is_absent(runtime, reason, tmp_path):
    result = CliRunner().invoke(cli, ["run", "-d", "cuda", "-r", runtime, "-m", "mu-tiny",
                                      "--results", str(tmp_path / "r.jsonl")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and reason in lines[0], result.output


def test_torch_cuda_reasons(monkeypatch):
    import torch

    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    assert "is a CPU-only build" in TorchRunner.availability("cuda").reason
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    found = TorchRunner.availability("cuda")
    assert not found.ok and "(CUDA 12.8) sees no CUDA GPU" in found.reason
    assert not TorchRunner.availability("npu").ok and TorchRunner.availability("cpu").ok


def test_nvidia_smi_rows_and_device_info(monkeypatch):
    line = "GPU-1234-abcd, NVIDIA H200, 570.86.15, 143771"
    monkeypatch.setattr(cuda, "_smi", lambda query: [line] if query.startswith("uuid") else ["NVIDIA H200"])
    monkeypatch.setattr(cuda, "driver_cuda_version", lambda: "12.8")
    rows = cuda.smi_rows()
    assert rows == [{"uuid": "GPU-1234-abcd", "gpu_name": "NVIDIA H200", "driver_version": "570.86.15",
                     "gpu_memory_bytes": 143771 * 1024 * 1024}]
    assert cuda.cuda_absent_reason() == ""
    info = cuda.cuda_device_info()
    assert info["gpu_name"] == "NVIDIA H200" and info["driver_version"] == "570.86.15"
    assert info["cuda_driver_supports"] == "12.8"


def test_no_gpu_facts_are_invented_here(monkeypatch):
    monkeypatch.setattr(cuda, "_smi", lambda query: [])
    assert "nvidia-smi is missing or lists no GPU" in cuda.cuda_absent_reason()
    version = cuda.driver_cuda_version()
    assert version is None or version.count(".") == 1
    assert set(cuda.cuda_device_info()) <= {"cuda_driver_supports"} | set(cuda.torch_device_info())


class FakeCudaMemory:
    """CUDA's per-device counters: bytes allocated now, and the high-water mark since a reset."""

    def __init__(self, allocated):
        self.allocated = self.peak = allocated

    def request(self, kept, transient):
        self.peak = max(self.peak, self.allocated + kept + transient)
        self.allocated += kept

    def install(self, monkeypatch, torch):
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: self.allocated)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: self.peak)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: setattr(self, "peak",
                                                                                                self.allocated))


def test_peak_device_memory_is_attributed_to_each_model(monkeypatch):
    """Two models share one device counter; interleaved requests each credit their own model,
    without the other model's weights or its KV cache left from its last request."""
    import torch

    memory = FakeCudaMemory(allocated=150)  # weights: a 100, b 50
    memory.install(monkeypatch, torch)
    runners = {}
    for name, resident in (("a", 100), ("b", 50)):
        r = TorchRunner("cuda", 1)
        r.cuda, r.index, r.torch_device, r.dtype = True, 0, torch.device("cpu"), torch.float32
        r.encoder_decoder, r.layers, r.kv_heads, r.head_dim = False, 1, 1, 2
        r._resident, r._peak = resident, None
        runners[name] = r
    a, b = runners["a"], runners["b"]
    ids = np.ones((1, 3), np.int64)
    a.start(ids, 2)
    memory.request(kept=30, transient=20)  # a: KV 30 kept until its next request, activations 20
    b.start(ids, 2)
    memory.request(kept=10, transient=5)
    assert a.peak_device_memory() == 100 + 30 + 20
    assert b.peak_device_memory() == 50 + 10 + 5
    memory.allocated -= 30  # a releases its previous KV cache in start()
    a.start(ids, 2)
    memory.request(kept=30, transient=60)  # a bigger second request
    assert a.peak_device_memory() == 100 + 30 + 60 and b.peak_device_memory() == 65
    a.close()
    b.close()
    assert TorchRunner("cpu").peak_device_memory() is None


def test_gpu_check_script_runs_from_source_in_cpu_mode(tmp_path):
    """The script a lent GPU machine runs, exercised end to end on CPU with the tiny pair."""
    results = tmp_path / "rows.jsonl"
    args = ["--device", "cpu", "--models", "mu-tiny,deconly-tiny", "--precisions", "fp32,bf16", "-i", "12",
            "-o", "4", "--warmup", "0", "--min-reps", "2", "--min-time", "0",
            "--check-models", "deconly-tiny", "--results", str(results)]
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "tools" / "gpu_check.py"), *args], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    first = out.splitlines()[0]
    assert first.startswith("slmbench imported from /") and "slmbench-src-" in first  # the symlinked layout
    assert f"(models: {REPO / 'models'})" in first
    assert "check deconly-tiny   torch/cpu fp32: max |dlogit| vs cpu fp32 0.00e+00" in out and "PASS" in out
    for model in ("mu-tiny", "deconly-tiny"):
        for precision in ("fp32", "bf16"):
            assert f"{model:14s} torch/cpu {precision:5s} TTFT p50" in out
    assert out.count("mu-tiny / deconly-tiny: TTFT reduction") == 2
    assert len(results.read_text().splitlines()) == 4


@no_gpu_here
def test_gpu_check_script_without_a_gpu_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "tools" / "gpu_check.py")], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: torch on cuda is unavailable")


def _teacher_forced_logits(device, precision, name):
    spec = resolve_model(name)
    cfg = spec.config
    prompt, forced = parity_inputs(cfg.vocab_size, batch=2, prompt=20, steps=6)
    runner = TorchRunner(device, 1)
    runner.load(runner.prepare(spec, precision)[0])
    runner.start(prompt, forced.shape[1] + 1)
    if cfg.is_encoder_decoder:
        runner.encode(prompt)
        first = np.full((2, 1), cfg.decoder_start_token, np.int64)
    else:
        first = prompt
    logits = [runner.step_logits(first)] + [runner.step_logits(forced[:, i:i + 1]) for i in range(6)]
    return runner, logits


@gpu
@needs_torch_cuda
@pytest.mark.parametrize("name", ["mu-tiny", "deconly-tiny"])
def test_torch_cuda_fp32_matches_cpu(name):
    _, cpu_logits = _teacher_forced_logits("cpu", "fp32", name)
    runner, cuda_logits = _teacher_forced_logits("cuda", "fp32", name)
    assert max(float(np.abs(a - b).max()) for a, b in zip(cpu_logits, cuda_logits, strict=True)) <= 1e-4
    peak = runner.peak_device_memory()
    assert peak is not None and peak >= runner._resident > 0


@gpu
@needs_torch_cuda
def test_torch_cuda_rows_carry_device_provenance(tmp_path, quick_settings, cache_dir):
    from slmbench.config import plan
    from slmbench.core.benchmark import run_benchmark

    specs = [resolve_model("mu-tiny"), resolve_model("deconly-tiny")]
    rows = run_benchmark(plan([s.name for s in specs], "cuda", ["torch"], "fp16", quick_settings),
                         results=tmp_path / "r.jsonl", cache_dir=cache_dir, log=lambda m: None)
    for row in rows:
        assert row["device_executed"].startswith("cuda")
        info = row["device_info"]
        assert info["gpu_name"] and info["torch_cuda_runtime"] and info.get("driver_version")
        assert row["peak_device_memory_bytes"] >= row["artifact"]["weight_bytes"]


@gpu
@needs_ort_cuda
def test_onnxruntime_cuda_matches_torch_cpu(tiny_onnx):
    from slmbench.core.measure import generate

    for name in ("mu-tiny", "deconly-tiny"):
        cfg = resolve_model(name).config
        ids = np.random.default_rng(5).integers(1, cfg.vocab_size, size=(2, 16), dtype=np.int64)
        ort = OnnxRuntimeRunner("cuda", 1)
        assert ort.load(tiny_onnx[name]).device_executed == "CUDAExecutionProvider"
        reference = TorchRunner("cpu", 1)
        reference.load(reference.prepare(resolve_model(name), "fp32")[0])
        got = generate(ort, ids, 8, cfg.is_encoder_decoder, cfg.decoder_start_token)[1]
        want = generate(reference, ids, 8, cfg.is_encoder_decoder, cfg.decoder_start_token)[1]
        assert np.array_equal(got, want)


def test_a_process_device_memory_is_its_own_nvml_reading(monkeypatch):
    me = os.getpid()
    listing = {"compute-apps": [f"{me + 1}, 9000", f"{me}, 1500", f"{me}, 24", "garbage"]}
    monkeypatch.setattr(cuda, "_smi", lambda query, kind="gpu": listing.get(kind, []))
    assert cuda.process_device_memory() == (1500 + 24) * 1024 * 1024  # every GPU it holds, not the others'
    assert cuda.process_device_memory(me + 1) == 9000 * 1024 * 1024
    assert cuda.process_device_memory(me + 2) is None  # not listed: no context, or PIDs hidden; never 0


def test_memory_by_phase_reads_the_device_where_it_has_memory_of_its_own(tiny_onnx):
    """A CUDA runner's phases carry the device's readings: loaded, then each phase's growth above
    it; on a CPU there is no device entry. The CUDA runner is the ONNX Runtime CPU one with its
    device reading replaced by a pool that grows by 4 MiB per call and never shrinks."""
    from slmbench.core.measure import memory_by_phase
    from slmbench.host.memory import current_rss

    runner = OnnxRuntimeRunner("cpu", threads=1)
    runner.load(tiny_onnx["deconly-tiny"])
    ids = np.ones((1, 8), np.int64)
    cpu = memory_by_phase(runner, ids, 4, False, 0, current_rss())
    assert "device" not in cpu and cpu["decode_bytes"] is not None
    pool = iter(range(500 << 20, 600 << 20, 4 << 20))
    runner.device_memory_in_use = lambda: next(pool)
    device = memory_by_phase(runner, ids, 4, False, 0, current_rss())["device"]
    assert device["loaded_bytes"] == 500 << 20
    assert device["first_token_bytes"] == 4 << 20 and device["decode_bytes"] == 8 << 20


def test_the_memory_claim_counts_a_cuda_models_device_memory():
    from slmbench.report.markdown import _measured_memory

    host = {"load_bytes": 100, "first_token_bytes": 5, "decode_bytes": 7}
    assert _measured_memory({"memory_phases": host}) == 107
    device = {"loaded_bytes": 2000, "first_token_bytes": 30, "decode_bytes": 40}
    assert _measured_memory({"memory_phases": {**host, "device": device}}) == 2040
