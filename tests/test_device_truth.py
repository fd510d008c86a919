"""A runtime that reports a different device than asked for is an error, never a number."""

import pytest

from slmbench import runners
from slmbench.config import RunSettings, plan
from slmbench.core.benchmark import run_benchmark
from slmbench.errors import DeviceUnavailable
from slmbench.runners.onnxruntime import OnnxRuntimeRunner, check_provider


class FallbackRunner(OnnxRuntimeRunner):
    """Loads for real on CPU but claims to be a CUDA runner: what a silent fallback looks like."""

    runtime = "fallback"
    devices = ("cuda",)

    @classmethod
    def availability(cls, device):
        return runners.Availability(True)

    def load(self, artifact):
        self.device = "cpu"
        return super().load(artifact)


def test_silent_fallback_is_refused_before_timing(monkeypatch, tmp_path, cache_dir):
    monkeypatch.setitem(runners.RUNNERS, "fallback", FallbackRunner)
    results = tmp_path / "r.jsonl"
    with pytest.raises(DeviceUnavailable, match="asked for cuda but the runtime runs on CPUExecutionProvider"):
        run_benchmark(plan(["deconly-tiny"], "cuda", ["fallback"], settings=RunSettings(input_len=4)),
                      results=results, cache_dir=cache_dir, log=lambda m: None)
    assert not results.exists()  # refused before measuring: no file left behind


def test_provider_check():
    check_provider("CUDAExecutionProvider", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(DeviceUnavailable, match="fell back to CPUExecutionProvider"):
        check_provider("CUDAExecutionProvider", ["CPUExecutionProvider"])
