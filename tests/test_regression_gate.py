"""The regression gate on real measurements (tiny models, ONNX Runtime, one thread).

A real slowdown is real extra work: a runner whose every decoder step runs twice (the second run
recomputes the same outputs, so tokens and KV cache are unchanged). Baseline, slowed candidate and
an A/A candidate (the same configuration again) are measured interleaved in one run, groups in a
shuffled order each round, so the machine's drift and any periodic disturbance hit all of them
alike; 24 repetitions a side let the rank test reach p < 0.002 with room to spare (7 is the floor).
"""

import uuid

import numpy as np
import pytest
from click.testing import CliRunner

from slmbench.cli import cli
from slmbench.config import RunConfig, RunSettings
from slmbench.core.measure import Subject, generate, make_inputs, measure
from slmbench.gate.compare import compare, compare_rows
from slmbench.host.environment import environment
from slmbench.models import resolve_model
from slmbench.results import append_row
from slmbench.runners.onnxruntime import OnnxRuntimeRunner
from slmbench.tools.overhead import measure_overhead, overhead_ratios

SETTINGS = RunSettings(input_len=32, output_len=16, warmup=1, min_reps=24, min_time_s=0.0)
MODELS = ("mu-tiny", "deconly-tiny")


class _RunTwice:
    """A session whose run_with_iobinding runs the step twice on the same bound inputs."""

    def __init__(self, session):
        self._session = session

    def run_with_iobinding(self, binding, *args):
        self._session.run_with_iobinding(binding, *args)
        self._session.run_with_iobinding(binding, *args)

    def __getattr__(self, name):
        return getattr(self._session, name)


class DoubleStepRunner(OnnxRuntimeRunner):
    """The harness's decode step does twice the runtime work (bare_generate does not)."""

    def decode(self, input_ids):
        session = self.decoder
        self.decoder = _RunTwice(session)
        try:
            return super().decode(input_ids)
        finally:
            self.decoder = session


def _rows(subjects, specs, group):
    env = environment()
    return [{"key": RunConfig(spec.name, "cpu", "onnxruntime", "fp32", SETTINGS, 1).key, "group": group,
             "status": "ok", "model": spec.name, "family": spec.family.value, "device": "cpu",
             "runtime": "onnxruntime", "precision": "fp32", "batch": 1, "input_len": SETTINGS.input_len,
             "output_len": SETTINGS.output_len, "threads": 1,
             "repetitions": [{"timestamps_ns": r.timestamps_ns, "encoder_end_ns": r.encoder_end_ns}
                             for r in s.reps],
             "environment": env} for s, spec in zip(subjects, specs, strict=True)]


@pytest.fixture(scope="module")
def measured(cache_dir, tmp_path_factory):
    """Three groups, all interleaved in one run: A (baseline), B (mu-tiny's decoder doing each step
    twice), C (A again). Written as three result files.

    All three run on A's loaded ONNX Runtime sessions: two sessions of one tiny model in one process
    can differ by 10-70% on their own (seen on this machine), which is not a change in the code
    measured. B's mu-tiny is a DoubleStepRunner over A's sessions, so the doubled decoder step is
    the only difference between A and B."""
    specs = [resolve_model(m) for m in MODELS]
    plan = {"A": (OnnxRuntimeRunner, OnnxRuntimeRunner), "B": (DoubleStepRunner, OnnxRuntimeRunner),
            "C": (OnnxRuntimeRunner, OnnxRuntimeRunner)}
    subjects, inputs = {}, {}
    for name, classes in plan.items():
        subjects[name] = []
        for i, (spec, cls) in enumerate(zip(specs, classes, strict=True)):
            if name == "A":
                runner = cls("cpu", threads=1)
                runner.load(runner.prepare(spec, "fp32", cache_dir)[0])
            elif cls is OnnxRuntimeRunner:
                runner = subjects["A"][i].runner
            else:  # the same sessions and state as A's runner, with the doubled decode step
                runner = cls.__new__(cls)
                runner.__dict__ = dict(subjects["A"][i].runner.__dict__)
            label = f"{name}:{spec.name}"
            subjects[name].append(Subject(label, runner, spec.config.is_encoder_decoder,
                                          spec.config.decoder_start_token))
            inputs[label] = make_inputs(SETTINGS, spec.config.vocab_size)
    run = lambda s: generate(s.runner, inputs[s.label], SETTINGS.output_len, s.encoder_decoder, s.start_token)
    measure(list(subjects.values()), SETTINGS, run)
    folder = tmp_path_factory.mktemp("gate")
    files = {}
    for name, group in subjects.items():
        # the doubled step is the same work twice: the same tokens
        assert np.array_equal(group[0].tokens, subjects["A"][0].tokens)
        files[name] = folder / f"{name}.jsonl"
        for row in _rows(group, specs, uuid.uuid4().hex[:12]):
            append_row(files[name], row)
        for s in group:
            s.runner.close()
    return files


def _verdicts(report):
    return {(c.config.split("|")[0], c.config.split("|")[5], c.metric): c for c in report.comparisons}


def test_the_gate_flags_a_real_slowdown(measured):
    report = compare(measured["A"], measured["B"])
    v = _verdicts(report)
    for metric in ("tpot_s", "decode_tps", "e2e_s"):
        assert v[("mu-tiny", "in32", metric)].verdict == "regression", v[("mu-tiny", "in32", metric)]
    assert v[("mu-tiny/deconly-tiny", "in32", "ed_do_decode_tps")].verdict == "regression"
    assert v[("mu-tiny/deconly-tiny", "in32", "ed_do_decode_tps")].ratio < 0.75
    # What did not change is not blamed: the encoder, and the decoder-only model measured beside it.
    assert v[("mu-tiny", "in32", "encoder_s")].verdict != "regression"
    for metric in ("ttft_s", "tpot_s", "decode_tps"):
        assert v[("deconly-tiny", "in32", metric)].verdict != "regression"
    assert any("tok/s enc-dec/dec-only: regression" in r for r in report.gate_failures("same-run"))


def test_the_same_configuration_twice_is_no_change(measured):
    report = compare(measured["A"], measured["C"])
    assert report.comparisons and not report.env_differences
    changed = [c for c in report.comparisons if c.verdict != "no change"]
    assert changed == [], changed
    assert report.gate_failures("all") == []


def test_compare_command_exit_codes_on_real_measurements(measured, tmp_path):
    run = lambda *a: CliRunner().invoke(cli, ["compare", *map(str, a)], catch_exceptions=False)
    slow = run(measured["A"], measured["B"], "--fail-on-regression")
    assert slow.exit_code == 1 and "regression" in slow.output and "gate failed" in slow.output
    assert run(measured["A"], measured["B"]).exit_code == 0  # without the flag it only reports
    same = run(measured["A"], measured["C"], "--fail-on-regression", "--gate", "same-run")
    assert same.exit_code == 0, same.output
    assert "no change" in same.output and "not gated" in same.output
    # A candidate from other hardware and another runtime version is refused, saying what differs.
    import json

    moved = tmp_path / "moved.jsonl"
    for line in measured["B"].read_text().splitlines():
        row = json.loads(line)
        row["environment"] = dict(row["environment"], cpu="Some Other CPU",
                                  packages=dict(row["environment"]["packages"], onnxruntime="0.0.1"))
        append_row(moved, row)
    refused = run(measured["A"], moved)
    assert refused.exit_code == 2
    assert "(baseline) vs 'Some Other CPU' (candidate)" in refused.output
    assert "packages.onnxruntime:" in refused.output and "0.0.1 (candidate)" in refused.output
    allowed = run(measured["A"], moved, "--allow-env-mismatch", "--fail-on-regression")
    assert allowed.exit_code == 1 and "only same-run ratios are compared" in allowed.output
    assert "tok/s enc-dec/dec-only: regression" in allowed.output
    strict = run(measured["A"], measured["A"], "--threshold", "ttft_s=0.5")
    assert strict.exit_code == 2 and "ratio above 1" in strict.output


def test_bare_loop_generates_what_the_harness_generates(cache_dir):
    for name in MODELS:
        spec = resolve_model(name)
        runner = OnnxRuntimeRunner("cpu", threads=1)
        runner.load(runner.prepare(spec, "fp32", cache_dir)[0])
        ids = make_inputs(RunSettings(batch=2, input_len=9, output_len=7), spec.config.vocab_size)
        start = spec.config.decoder_start_token
        rep_h, harness = generate(runner, ids, 7, spec.config.is_encoder_decoder, start)
        stamps, encoder_end, bare = runner.bare_generate(ids, 7, start)
        assert np.array_equal(harness, bare), name
        assert len(stamps) == 8 and stamps[0] == 0
        assert all(np.diff(stamps) > 0)
        assert (encoder_end is not None) == spec.config.is_encoder_decoder
        runner.close()


def test_overhead_gate_sees_a_harness_doing_double_work(cache_dir, tmp_path):
    spec = resolve_model("deconly-tiny")
    measure_ = lambda cls: measure_overhead(spec, SETTINGS, threads=1, cache_dir=cache_dir, runner_cls=cls,
                                            results=tmp_path / "o.jsonl", log=lambda m: None)
    base, again, slow = measure_(None), measure_(None), measure_(DoubleStepRunner)
    assert [r["loop"] for r in base] == ["harness", "bare"] and base[0]["group"] == base[1]["group"]
    plain = RunConfig(spec.name, "cpu", "onnxruntime", "fp32", SETTINGS, 1).key
    assert base[0]["overhead_of"] == base[1]["overhead_of"] == plain
    ratio = overhead_ratios(base)[0]
    assert 0.8 < ratio["overhead_step"] < 1.25  # the bare loop does the same work as the harness
    assert overhead_ratios(slow)[0]["overhead_step"] > 1.5
    # Three separate runs: only the same-run ratio is compared between them.
    aa = {c.metric: c for c in compare_rows(base, again).comparisons if c.same_run}
    assert {c.verdict for c in aa.values()} == {"no change"}, aa
    ab = {c.metric: c for c in compare_rows(base, slow).comparisons if c.same_run}
    assert ab["overhead_step"].verdict == "regression", ab["overhead_step"]
