"""A tiny end-to-end run: every field of a result row, and the metric definitions."""

import numpy as np
import pytest

from slmbench.config import RunSettings, plan
from slmbench.core.benchmark import run_benchmark
from slmbench.core.measure import Repetition
from slmbench.models import resolve_model
from slmbench.results import load_results, read_rows

ROW_FIELDS = ("model", "family", "parameters", "device", "runtime", "precision", "batch", "input_len", "output_len",
              "threads", "metrics", "repetitions", "warnings", "environment", "artifact", "cold_ttft_s", "load_s",
              "peak_rss_bytes", "device_executed", "key", "status", "tokens_generated")
METRICS = ("ttft_s", "encoder_s", "prefill_s", "tpot_s", "decode_tps", "e2e_s", "e2e_tps", "itl_s")
STATS = ("median", "p90", "p99", "mean", "stdev", "min", "max", "count", "ci95_low", "ci95_high")


@pytest.fixture(scope="module")
def rows(tmp_path_factory, cache_dir):
    results = tmp_path_factory.mktemp("run") / "results.jsonl"
    settings = RunSettings(input_len=16, output_len=6, warmup=1, min_reps=3, min_time_s=0.0)
    specs = [resolve_model("mu-tiny"), resolve_model("deconly-tiny")]
    return run_benchmark(plan([s.name for s in specs], "cpu", ["onnxruntime"], settings=settings, threads=1),
                         results=results,
                         cache_dir=cache_dir, log=lambda m: None), results


def test_a_row_per_model_with_every_field(rows):
    rows, results = rows
    assert [r["model"] for r in rows] == ["mu-tiny", "deconly-tiny"]
    for row in rows:
        for field in ROW_FIELDS:
            assert row.get(field) is not None, field
        assert row["threads"] == 1 and row["device_executed"] == "CPUExecutionProvider"
        env = row["environment"]
        for field in ("cpu", "physical_cores", "os", "python", "packages", "host"):
            assert env[field], field
        assert env["packages"]["onnxruntime"] and row["artifact"]["spec_hash"]
    assert read_rows([results]) == [dict(r, _source=str(results)) for r in rows]


def test_metrics_have_every_statistic(rows):
    ed, do = rows[0]
    for name in METRICS:
        if name == "encoder_s":
            assert do["metrics"][name] is None  # decoder-only: no encoder, no fake zero
        for stat in STATS:
            assert ed["metrics"][name][stat] is not None, (name, stat)
    assert ed["metrics"]["ttft_s"]["count"] >= 3
    # ITL: t_i - t_{i-1} for i >= 2, so N - 1 = 5 gaps per repetition
    assert ed["metrics"]["itl_s"]["count"] == ed["metrics"]["ttft_s"]["count"] * 5


def test_raw_timestamps_are_kept_and_consistent(rows):
    for row in rows[0]:
        for rep in row["repetitions"]:
            t = rep["timestamps_ns"]
            assert len(t) == 7 and t[0] == 0 and all(b > a for a, b in zip(t, t[1:]))
        assert row["tokens_generated"] == 6
        first = Repetition(**row["repetitions"][0]).metrics(1)
        assert first["ttft_s"] == pytest.approx(row["repetitions"][0]["timestamps_ns"][1] * 1e-9)
    ed = rows[0][0]
    rep = ed["repetitions"][0]
    assert 0 < rep["encoder_end_ns"] < rep["timestamps_ns"][1]


def test_metric_definitions():
    rep = Repetition([0, 100_000_000, 150_000_000, 210_000_000, 260_000_000], encoder_end_ns=40_000_000)
    m = rep.metrics(batch=2)
    assert m["ttft_s"] == pytest.approx(0.1) and m["encoder_s"] == pytest.approx(0.04)
    assert m["prefill_s"] == pytest.approx(0.06)
    assert m["tpot_s"] == pytest.approx(0.16 / 3)  # (t_N - t_1) / (N - 1)
    assert m["decode_tps"] == pytest.approx(2 / (0.16 / 3))
    assert m["e2e_s"] == pytest.approx(0.26) and m["e2e_tps"] == pytest.approx(2 * 4 / 0.26)
    assert rep.itl_s() == pytest.approx([0.05, 0.06, 0.05])


def test_load_results_dataframe(rows):
    df = load_results(rows[1])
    assert len(df) == 2 and set(df["family"]) == {"encoder-decoder", "decoder-only"}
    assert (df["ttft_s_median"] > 0).all() and df["decode_tps_median"].notna().all()


def test_generation_is_deterministic_and_fixed_length(cache_dir):
    from slmbench.core.measure import generate, make_inputs
    from slmbench.runners.onnxruntime import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner("cpu", threads=1)
    spec = resolve_model("deconly-tiny")
    runner.load(runner.prepare(spec, "fp32", cache_dir)[0])
    ids = make_inputs(RunSettings(batch=2, input_len=5, output_len=3), spec.config.vocab_size)
    _, a = generate(runner, ids, 9, False, 0)
    _, b = generate(runner, ids, 9, False, 0)
    assert a.shape == (2, 9) and np.array_equal(a, b)


def test_lengths_must_fit_the_model():
    from slmbench.errors import InvalidOption

    with pytest.raises(InvalidOption, match="exceeds deconly-tiny's maximum positions"):
        RunSettings(input_len=1000, output_len=100).check_fits("deconly-tiny", resolve_model("deconly-tiny").config)


def test_runtimes_side_by_side_in_one_interleaved_run(tmp_path, cache_dir):
    """Several runtimes in one run: one row per (model, runtime), one group, each key with only
    its own runtime's options."""
    from click.testing import CliRunner

    from slmbench.cli import cli

    results = tmp_path / "r.jsonl"
    result = CliRunner().invoke(cli, ["run", "-m", "deconly-tiny", "-r", "onnxruntime", "-r", "openvino", "-i", "8",
                                      "-o", "4", "--warmup", "0", "--min-reps", "2", "--min-time", "0",
                                      "--results", str(results), "--cache-dir", str(cache_dir)])
    assert result.exit_code == 0, result.output
    assert "runtimes side by side" in result.output
    rows = read_rows([results])
    assert [r["runtime"] for r in rows] == ["onnxruntime", "openvino"]
    assert len({r["group"] for r in rows}) == 1
    assert "mode=stateful" in rows[1]["key"] and "mode" not in rows[0]["key"]
    assert rows[0]["label"] == "deconly-tiny@onnxruntime"


def test_run_length_from_ci_width(cache_dir):
    """--target-ci: never stops before a 95% CI of the median exists (6 repetitions, even with
    min_reps 3); an unreachable target runs to max_reps."""
    from slmbench.core.measure import ci_is_tight
    from slmbench.errors import InvalidOption

    steady = [Repetition([0, 1000, 2000, 3000]) for _ in range(6)]
    assert not ci_is_tight(steady[:5], 0.5) and ci_is_tight(steady, 0.5)  # 5 values have no 95% CI
    spec = resolve_model("deconly-tiny")
    for target, at_least, at_most in ((0.99, 6, 8), (1e-9, 8, 8)):
        settings = RunSettings(input_len=8, output_len=4, warmup=0, min_reps=3, max_reps=8, min_time_s=0.0,
                               target_ci=target)
        row = run_benchmark(plan([spec.name], "cpu", ["onnxruntime"], settings=settings, threads=1),
                            cache_dir=cache_dir, log=lambda m: None)[0]
        assert at_least <= len(row["repetitions"]) <= at_most and row["settings"]["target_ci"] == target
    for bad in (0, 1.5, float("nan"), True):
        with pytest.raises(InvalidOption, match="target_ci"):
            RunSettings(target_ci=bad)


def test_more_threads_than_allowed_cpus_is_a_recorded_warning(cache_dir):
    import os

    from slmbench.config import plan

    threads = len(os.sched_getaffinity(0)) + 1
    settings = RunSettings(input_len=8, output_len=4, warmup=0, min_reps=2, min_time_s=0.0)
    (row,) = run_benchmark(plan(["deconly-tiny"], "cpu", ["onnxruntime"], settings=settings, threads=threads),
                           cache_dir=cache_dir, log=lambda m: None)
    assert row["threads"] == threads and any(w.startswith("oversubscribed:") for w in row["warnings"])


def test_every_row_has_its_memory_by_phase(tmp_path, cache_dir, quick_settings):
    """Each model alone in a fresh process, one untimed generation: the RSS its load adds and the peak
    of each phase above it; a longer input needs more memory to its first token (activations)."""
    from slmbench.config import RunSettings, plan
    from slmbench.core.benchmark import run_benchmark

    rows = {}
    for n in (16, 512):
        settings = RunSettings(input_len=n, output_len=6, warmup=0, min_reps=2, min_time_s=0.0)
        rows[n] = run_benchmark(plan(["mu-tiny", "deconly-tiny"], "cpu", ["onnxruntime"], settings=settings,
                                     threads=1), cache_dir=cache_dir, log=lambda m: None)
    for row in rows[16] + rows[512]:
        phases = row["memory_phases"]
        assert phases["load_bytes"] > 0 and phases["first_token_bytes"] >= 0 and phases["decode_bytes"] >= 0
    long = {r["model"]: r["memory_phases"]["first_token_bytes"] for r in rows[512]}
    short = {r["model"]: r["memory_phases"]["first_token_bytes"] for r in rows[16]}
    assert long["deconly-tiny"] > short["deconly-tiny"]  # 4 heads x 512 x 512 fp32 scores alone are 4 MiB
