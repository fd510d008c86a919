"""The comparison's statistics on known samples (cross-checked with scipy), its verdict rules, and
how it reads result rows: pairing, environments, failed configurations, the gate's reasons."""

import math

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from slmbench.errors import InvalidOption
from slmbench.gate.compare import (
    ALPHA,
    EnvMismatch,
    compare_rows,
    judge,
    mann_whitney,
    parse_thresholds,
    smallest_p,
)

# --- the test itself -------------------------------------------------------------------------


@pytest.mark.parametrize("x, y, p", [
    (range(1, 11), range(11, 21), 2 / math.comb(20, 10)),  # complete separation, 10 vs 10
    (range(1, 6), range(6, 11), 2 / math.comb(10, 5)),  # complete separation, 5 vs 5: 0.0079
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5, 10.5], None),
    ([1.1, 2.3, 0.7, 3.1, 2.2, 1.9, 0.4], [2.5, 3.3, 4.1, 2.9, 3.8, 1.5, 4.4], None),
])
def test_exact_p_values_on_known_samples(x, y, p):
    ours = mann_whitney(x, y)
    ref = mannwhitneyu(list(x), list(y), method="exact")
    assert ours.method == "exact"
    assert ours.u == ref.statistic
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-12)
    if p is not None:
        assert ours.p == pytest.approx(p, rel=1e-12)


def test_exact_p_values_agree_with_scipy_on_many_sizes():
    rng = np.random.default_rng(7)
    for _ in range(200):
        n, m = (int(v) for v in rng.integers(1, 40, 2))
        x, y = rng.normal(0, 1, n), rng.normal(rng.uniform(-1, 2), 1, m)
        assert mann_whitney(x, y).p == pytest.approx(mannwhitneyu(x, y, method="exact").pvalue, rel=1e-9)


def test_ties_use_the_normal_approximation_with_corrections_like_scipy():
    x = [1, 2, 2, 3, 3, 3, 4, 4, 5]
    y = [3, 4, 4, 5, 5, 6, 6, 7, 7, 8]
    ours = mann_whitney(x, y)
    ref = mannwhitneyu(x, y, method="asymptotic", use_continuity=True)
    assert ours.method == "asymptotic"
    assert ours.u == ref.statistic and ours.p == pytest.approx(ref.pvalue, rel=1e-12)
    assert 0.001 < ours.p < 0.01  # a fixed case: p = 0.0029


def test_large_samples_use_the_normal_approximation_like_scipy():
    rng = np.random.default_rng(3)
    x, y = rng.normal(0, 1, 60), rng.normal(0.5, 1, 70)  # 60 * 70 > the exact limit
    ours = mann_whitney(x, y)
    assert ours.method == "asymptotic"
    assert ours.p == pytest.approx(mannwhitneyu(x, y, method="asymptotic").pvalue, rel=1e-12)


def test_identical_samples_show_no_difference():
    assert mann_whitney([2.0] * 8, [2.0] * 8).p == 1.0
    assert mann_whitney([1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 7]).p == 1.0


def test_fewest_repetitions_that_can_reach_the_level():
    assert smallest_p(6, 6) == pytest.approx(0.0021645, rel=1e-4) and smallest_p(6, 6) > ALPHA
    assert smallest_p(7, 7) < ALPHA and smallest_p(6, 8) < ALPHA


# --- verdicts --------------------------------------------------------------------------------

BASE = [0.100 + 0.001 * i for i in range(12)]  # 100..111 ms


@pytest.mark.parametrize("metric, candidate, verdict, kwargs", [
    ("ttft_s", [v * 1.5 for v in BASE], "regression", {}),
    ("ttft_s", [v / 1.5 for v in BASE], "improvement", {}),
    ("ttft_s", [v * 1.05 for v in BASE], "no change", {}),  # significant, but a 5% effect
    ("ttft_s", [v * 1.5 for v in BASE], "no change", {"threshold": 1.6}),
    ("decode_tps", [v / 1.5 for v in BASE], "regression", {}),  # fewer tokens/s is worse
    ("decode_tps", [v * 1.5 for v in BASE], "improvement", {}),
    ("ed_do_ttft", [v * 1.2 for v in BASE], "regression", {}),
    ("overhead_step", list(BASE), "no change", {}),
])
def test_verdict_needs_significance_and_effect_in_the_right_direction(metric, candidate, verdict, kwargs):
    got = judge(BASE, candidate, metric, **kwargs)
    assert got.verdict == verdict, got
    assert got.ratio == pytest.approx(np.median(candidate) / np.median(BASE))


def test_a_large_effect_in_noise_is_not_a_change():
    base = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    cand = [1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]  # median 8 against 6
    got = judge(base, cand, "tpot_s")
    assert got.ratio > 1.1 and got.p > ALPHA and got.verdict == "no change"
    assert "not significant" in got.note


def test_too_few_repetitions_is_said_not_passed_off_as_no_change():
    got = judge([1, 2, 3, 4, 5, 6], [10, 20, 30, 40, 50, 60], "ttft_s")
    assert got.verdict == "too few reps" and "need at least 7" in got.note


def test_thresholds_are_configurable_per_metric_and_checked():
    t = parse_thresholds(["ttft_s=1.25", "ed_do_decode_tps = 1.05"])
    assert t["ttft_s"] == 1.25 and t["ed_do_decode_tps"] == 1.05 and t["tpot_s"] == 1.10
    for bad, message in (("speed=1.2", "unknown metric 'speed'"), ("ttft_s=0.9", "ratio above 1"),
                         ("ttft_s=fast", "must be a number")):
        with pytest.raises(InvalidOption, match=message):
            parse_thresholds([bad])


# --- reading rows ----------------------------------------------------------------------------

ENV = {"cpu": "Test CPU", "physical_cores": 2, "packages": {"onnxruntime": "1.32.0", "slmbench": "0.1.0"},
       "host": "a"}


def _row(model, family, group, per_token_ms, n_reps=12, env=ENV, ttft_ms=10.0, jitter=0.0, loop=None,
         **extra):
    """A row with raw timestamps: TTFT ttft_ms, then 8 tokens per_token_ms apart (rep i slightly
    slower by i * jitter, so paired repetitions drift together)."""
    reps = []
    for i in range(n_reps):
        scale = 1 + i * jitter
        stamps = [0] + [int(1e6 * scale * (ttft_ms + k * per_token_ms)) for k in range(9)]
        encoder_end = int(1e6 * scale * 4) if family == "encoder-decoder" else None
        reps.append({"timestamps_ns": stamps, "encoder_end_ns": encoder_end})
    key = f"{model}|cpu|onnxruntime|fp32|b1|in32|out8|t1" + (f"|loop={loop}" if loop else "")
    return {"key": key, "group": group, "status": "ok", "model": model, "family": family, "device": "cpu",
            "runtime": "onnxruntime", "precision": "fp32", "batch": 1, "input_len": 32, "output_len": 8,
            "threads": 1, "repetitions": reps, "environment": env, "loop": loop, **extra}


def _pair(group, ed_ms, do_ms, jitter, env=ENV):
    return [_row("mu-x", "encoder-decoder", group, ed_ms, jitter=jitter, env=env),
            _row("dec-x", "decoder-only", group, do_ms, jitter=jitter, env=env)]


def test_same_run_ratios_pair_repetitions_by_index():
    # Drift of 3% per repetition hits both models alike: the per-repetition ratio stays exact.
    report = compare_rows(_pair("g1", 1.0, 2.0, 0.03), _pair("g2", 1.0, 1.0, 0.03))
    by = {(c.config, c.metric): c for c in report.comparisons}
    pair = "mu-x/dec-x|cpu|onnxruntime|fp32|b1|in32|out8|t1"
    assert by[(pair, "ed_do_decode_tps")].baseline_median == pytest.approx(2.0)
    assert by[(pair, "ed_do_decode_tps")].candidate_median == pytest.approx(1.0)
    assert by[(pair, "ed_do_decode_tps")].verdict == "regression"
    assert by[("dec-x|cpu|onnxruntime|fp32|b1|in32|out8|t1", "tpot_s")].verdict == "improvement"
    assert not report.env_differences and not report.missing


def test_harness_and_bare_rows_give_overhead_ratios():
    def rows(group, harness_ms):
        of = "m|cpu|onnxruntime|fp32|b1|in32|out8|t1"
        return [_row("m", "decoder-only", group, harness_ms, loop="harness", overhead_of=of),
                _row("m", "decoder-only", group, 1.0, loop="bare", overhead_of=of)]

    report = compare_rows(rows("g1", 1.01), rows("g2", 1.5))
    by = {c.metric: c for c in report.comparisons if c.same_run}
    assert by["overhead_step"].baseline_median == pytest.approx(1.01)
    assert by["overhead_step"].verdict == "regression"
    assert "ed_do_ttft" not in by  # harness/bare rows are never paired as enc-dec vs dec-only


def test_environment_mismatch_is_refused_naming_what_differs():
    other = dict(ENV, cpu="Other CPU", packages={"onnxruntime": "1.31.0", "slmbench": "9"}, host="b")
    with pytest.raises(EnvMismatch) as err:
        compare_rows(_pair("g1", 1.0, 2.0, 0), _pair("g2", 1.0, 2.0, 0, env=other))
    message = str(err.value)
    assert "cpu: 'Test CPU' (baseline) vs 'Other CPU' (candidate)" in message
    assert "packages.onnxruntime: 1.32.0 (baseline) vs 1.31.0 (candidate)" in message
    assert "host: a (baseline) vs b (candidate)" in message  # two machines, whatever their names
    assert "machine: a-test-" in message and "slmbench" not in message.split("(")[0]
    assert "--allow-env-mismatch" in message
    report = compare_rows(_pair("g1", 1.0, 2.0, 0), _pair("g2", 1.0, 2.0, 0, env=other),
                          allow_env_mismatch=True)
    assert {c.verdict for c in report.comparisons if not c.same_run} == {"not compared"}
    assert {c.verdict for c in report.comparisons if c.same_run} == {"no change"}
    assert report.gate_failures("same-run") == []
    assert report.gate_failures("all") == []  # not-compared metrics are not gated


def test_a_failed_candidate_configuration_fails_the_gate():
    failed = [{"key": "mu-x|cpu|onnxruntime|fp32|b1|in32|out8|t1", "status": "failed",
               "error": "crashed (SIGSEGV)"}, _row("dec-x", "decoder-only", "g2", 2.0)]
    report = compare_rows(_pair("g1", 1.0, 2.0, 0), failed)
    verdicts = {(c.config.split("|")[0], c.verdict) for c in report.comparisons}
    assert ("mu-x", "failed") in verdicts
    assert any("crashed (SIGSEGV)" in r for r in report.gate_failures("same-run"))
    assert "mu-x/dec-x|cpu|onnxruntime|fp32|b1|in32|out8|t1" in report.missing


def test_a_gate_that_compared_nothing_fails():
    report = compare_rows([_row("a", "decoder-only", "g1", 1.0)], [_row("b", "decoder-only", "g2", 1.0)])
    assert report.comparisons == []
    assert any("nothing comparable" in r for r in report.gate_failures("all"))


def test_compare_help_names_every_metric_a_threshold_accepts():
    from click.testing import CliRunner

    from slmbench.cli import cli
    from slmbench.gate.compare import METRICS

    text = " ".join(CliRunner().invoke(cli, ["compare", "--help"]).output.split())
    assert all(name in text for name in METRICS), text
