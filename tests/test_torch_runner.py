"""The torch runner on CPU: same tokens and logits as the ONNX Runtime runner, a KV cache that is
allocated once per request and never grows, every precision, honest rows."""

import subprocess
import sys

import numpy as np
import pytest

from slmbench.config import plan
from slmbench.core.benchmark import run_benchmark
from slmbench.core.measure import generate
from slmbench.errors import InvalidOption
from slmbench.exporters.parity import parity_inputs
from slmbench.models import reference, resolve_model
from slmbench.runners.onnxruntime import OnnxRuntimeRunner
from slmbench.runners.torch import TorchRunner

TINY = ("mu-tiny", "deconly-tiny")


class LogitsRecorder:
    """Test-only view into the ONNX Runtime runner's IOBinding: keeps each step's logits (output 0)
    before the runner rebinds its outputs, so the runner's own hot path is what is checked."""

    def __init__(self, binding):
        self._binding = binding
        self.logits = []

    def get_outputs(self):
        outputs = self._binding.get_outputs()
        self.logits.append(outputs[0].numpy().copy())
        return outputs

    def __getattr__(self, name):
        return getattr(self._binding, name)


def loaded(cls, name, cache_dir, precision="fp32"):
    runner = cls("cpu", 1)
    artifact, _ = runner.prepare(resolve_model(name), precision, cache_dir)
    runner.load(artifact)
    return runner


class _Keeping:
    """A runner as a session for the one teacher-forced loop, keeping what `step` returns for each
    fed token (ONNX Runtime's next tokens, or the torch runner's logits)."""

    def __init__(self, runner, step):
        self.runner, self.step = runner, step

    def start(self, input_ids, max_new_tokens):
        self.runner.start(input_ids, max_new_tokens)

    def encode(self, input_ids):
        self.runner.encode(input_ids)

    def decode(self, input_ids):
        self.kept = self.step(input_ids)
        return self.kept

    def logits(self):
        return self.kept


def teacher_forced(runner, cfg, prompt, forced, step):
    return reference.teacher_forced(_Keeping(runner, step), cfg, prompt, forced)


@pytest.mark.parametrize("name", TINY)
def test_logits_match_the_onnxruntime_runner_step_by_step(name, cache_dir):
    cfg = resolve_model(name).config
    prompt, forced = parity_inputs(cfg.vocab_size, batch=2, prompt=40, steps=10, seed=7)
    ort = loaded(OnnxRuntimeRunner, name, cache_dir)
    ort.binding = recorder = LogitsRecorder(ort.binding)
    ort_tokens = teacher_forced(ort, cfg, prompt, forced, ort.decode)
    torch_runner = loaded(TorchRunner, name, cache_dir)
    torch_logits = teacher_forced(torch_runner, cfg, prompt, forced, torch_runner.step_logits)
    assert len(recorder.logits) == len(torch_logits) == forced.shape[1] + 1
    for step, (a, b) in enumerate(zip(recorder.logits, torch_logits, strict=True)):
        assert a.shape == b.shape == (2, cfg.vocab_size)
        assert np.max(np.abs(a - b)) <= 1e-4, f"step {step}: {np.max(np.abs(a - b)):.3g}"
    # ONNX Runtime's in-graph argmax is the token the torch logits pick
    assert all(np.array_equal(t, lg.argmax(-1)) for t, lg in zip(ort_tokens, torch_logits, strict=True))


@pytest.mark.parametrize("name", TINY)
def test_greedy_generation_gives_the_same_tokens(name, cache_dir):
    cfg = resolve_model(name).config
    ids = np.random.default_rng(3).integers(1, cfg.vocab_size, size=(2, 24), dtype=np.int64)
    tokens = {}
    for cls in (OnnxRuntimeRunner, TorchRunner):
        runner = loaded(cls, name, cache_dir)
        rep, tokens[cls.runtime] = generate(runner, ids, 12, cfg.is_encoder_decoder, cfg.decoder_start_token)
        assert rep.tokens == 12 and all(np.diff(rep.timestamps_ns) > 0)
    assert np.array_equal(tokens["torch"], tokens["onnxruntime"])


@pytest.mark.parametrize("name", TINY)
def test_kv_cache_is_allocated_once_and_filled_in_place(name, cache_dir):
    cfg = resolve_model(name).config
    runner = loaded(TorchRunner, name, cache_dir)
    prompt = np.arange(1, 10, dtype=np.int64)[None]
    runner.start(prompt, 5)
    capacity = (1 if cfg.is_encoder_decoder else prompt.shape[1]) + 5
    assert len(runner._kv) == cfg.decoder_layers
    assert runner._kv[0][0].shape == (1, cfg.kv_heads, capacity, cfg.head_dim)
    pointers = [(k.data_ptr(), v.data_ptr()) for k, v in runner._kv]
    if cfg.is_encoder_decoder:
        runner.encode(prompt)
        token = runner.decode(np.zeros((1, 1), np.int64))
    else:
        token = runner.decode(prompt)
    for _ in range(4):
        token = runner.decode(token[:, None])
    assert [(k.data_ptr(), v.data_ptr()) for k, v in runner._kv] == pointers
    assert runner._len == capacity - 1  # the last generated token is never fed back
    with pytest.raises(InvalidOption, match="KV cache holds"):
        runner.decode(np.ones((1, 2), np.int64))


@pytest.mark.parametrize("precision, dtype", [("fp16", "float16"), ("bf16", "bfloat16")])
def test_half_precisions_run_on_cpu_close_to_fp32(precision, dtype, cache_dir):
    import torch

    cfg = resolve_model("deconly-tiny").config
    prompt, forced = parity_inputs(cfg.vocab_size, batch=1, prompt=12, steps=4)
    reference = loaded(TorchRunner, "deconly-tiny", cache_dir)
    want = teacher_forced(reference, cfg, prompt, forced, reference.step_logits)
    runner = loaded(TorchRunner, "deconly-tiny", cache_dir, precision)
    assert all(p.dtype == getattr(torch, dtype) for p in runner.model.parameters())
    assert runner.model.rotary.inv_freq.dtype == torch.float32  # the RoPE table is not rounded
    assert runner._kv is None
    got = teacher_forced(runner, cfg, prompt, forced, runner.step_logits)
    assert runner._kv[0][0].dtype == getattr(torch, dtype)
    scale = max(float(np.abs(w).max()) for w in want)
    worst = max(float(np.abs(w - g).max()) for w, g in zip(want, got, strict=True))
    assert 0 < worst <= 0.05 * scale  # really computed in half precision, and still close


def test_unknown_precision_is_refused(cache_dir):
    with pytest.raises(InvalidOption, match="torch precision 'int8' is not supported; choose from fp32"):
        TorchRunner("cpu").prepare(resolve_model("mu-tiny"), "int8", cache_dir)


def test_rows_from_the_torch_runner_are_honest(tmp_path, quick_settings, cache_dir):
    specs = [resolve_model(n) for n in TINY]
    rows = run_benchmark(plan(TINY, "cpu", ["torch"], "bf16", quick_settings, threads=1),
                         results=tmp_path / "r.jsonl", cache_dir=cache_dir, log=lambda m: None)
    assert [r["model"] for r in rows] == list(TINY)
    for row, spec in zip(rows, specs, strict=True):
        assert row["runtime"] == "torch" and row["device_executed"] == "cpu" and row["precision"] == "bf16"
        art = row["artifact"]
        assert art["format"] == "torch" and art["path"] is None and art["parity_max_abs_diff"] is None
        assert art["export_seconds"] is None and art["spec_hash"] == spec.content_hash()
        assert art["weight_bytes"] == spec.parameters * 2  # bf16, tied embedding counted once
        assert row["runtime_options"]["threads"] == 1 and row["threads"] == 1
        assert row["runtime_options"]["kv_cache"] == "preallocated"
        assert row["peak_device_memory_bytes"] is None  # CPU: the process RSS covers it
        assert row["metrics"]["ttft_s"]["count"] >= quick_settings.min_reps
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2


def test_cli_runs_the_torch_runner(tmp_path):
    from click.testing import CliRunner

    from slmbench.cli import cli

    result = CliRunner().invoke(cli, ["run", "-r", "torch", "-m", "mu-tiny", "-m", "deconly-tiny", "-i", "8",
                                      "-o", "3", "--warmup", "0", "--min-reps", "1", "--min-time", "0",
                                      "--results", str(tmp_path / "r.jsonl")])
    assert result.exit_code == 0, result.output
    assert "TTFT reduction" in result.output
    bad = CliRunner().invoke(cli, ["run", "-r", "torch", "-p", "int4", "-m", "mu-tiny",
                                   "--results", str(tmp_path / "r.jsonl")])
    assert bad.exit_code == 2 and "torch does not support precision 'int4'; supported: fp32, fp16, bf16" in bad.output


def test_the_registry_does_not_import_torch():
    code = "import sys, slmbench.runners as r; assert 'torch' in r.RUNNERS; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_module_without_the_static_cache_step_is_refused():
    """Checkpoint adapters may lack `cache_len`; the runner says so instead of failing mid-run."""
    spec = resolve_model("deconly-tiny")

    class NoCacheLen:
        def forward(self, input_ids, past, position_ids=None, attention_mask=None):
            raise AssertionError("never called")

    class Spec:
        name, config = "hf:some-checkpoint", spec.config

        def build(self):
            return NoCacheLen()

    with pytest.raises(InvalidOption, match="hf:some-checkpoint: its module has no preallocated-KV-cache"):
        TorchRunner("cpu").prepare(Spec(), "fp32")
