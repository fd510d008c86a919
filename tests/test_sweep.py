"""Sweep files and the sweep runner: the grid, pairs in one process, resume, absent devices."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from slmbench.results import read_rows
from slmbench.sweep.files import SweepFileError, load_sweep, model_units, parse_sweep, shipped_sweeps
from slmbench.sweep.run import run_sweep

TINY_GRID = {"models": ["mu-tiny", "deconly-tiny"], "input_lens": [16, 32], "output_lens": [6]}
FAST = {"warmup": 0, "min_reps": 2, "min_time_s": 0.0, "max_reps": 5}


def tiny_sweep(tmp_path, **grid):
    return parse_sweep(
        {
            "name": "t",
            "grid": {**TINY_GRID, **grid},
            "repetitions": FAST,
            "limits": {"timeout_s": 120, "memory_limit_gb": 8},
        },
        str(tmp_path / "t.toml"),
    )


def test_every_shipped_sweep_loads_and_expands():
    shipped = shipped_sweeps()
    assert {"quick", "paper-cpu", "paper-gpu", "paper-npu", "input-scaling", "budget-scaling",
            "crossover"} <= set(shipped)
    for name in shipped:
        configs, _ = load_sweep(name).configurations()
        assert configs, name
    from click.testing import CliRunner

    from slmbench.cli import cli

    listed = " ".join(CliRunner().invoke(cli, ["sweep", "--help"]).output.split())
    assert all(name in listed for name in shipped), listed  # the help names every shipped sweep


def test_paper_cpu_is_the_paper_pair_and_the_100m_pair_on_two_runtimes():
    sweep = load_sweep("paper-cpu")
    configs, notes = sweep.configurations()
    assert notes == []
    assert {c.models for c in configs} == {("mu-330m", "deconly-330m"), ("mu-100m", "deconly-100m")}
    assert sorted({(c.runtime, c.settings.input_len) for c in configs}) == [
        (rt, n) for rt in ("onnxruntime", "openvino") for n in (512, 1024, 2048)
    ] and len(configs) == 12
    assert {c.settings.output_len for c in configs} == {128}
    assert sweep.repetitions.min_reps == 3 and sweep.repetitions.warmup == 1


def test_input_scaling_runs_the_pair_at_every_length():
    configs, notes = load_sweep("input-scaling").configurations()
    assert [c.settings.input_len for c in configs] == [64, 128, 256, 512, 1024, 2048, 4096, 8192]
    assert all(c.models == ("mu-330m", "deconly-330m") for c in configs) and not notes


def test_the_encoder_decoder_runs_alone_where_the_partner_cannot_hold_the_input(tmp_path):
    """deconly-tiny holds 1024 positions: prompt 1016 + 16 new tokens do not fit, mu-tiny's do."""
    configs, notes = tiny_sweep(tmp_path, input_lens=[1016], output_lens=[16]).configurations()
    assert [c.models for c in configs] == [("mu-tiny",)]
    assert len(notes) == 1 and "deconly-tiny" in notes[0] and "1016" in notes[0]


def test_pairs_group_each_encoder_decoder_with_its_decoder_only_partner():
    assert model_units(("deconly-tiny", "mu-100m", "mu-tiny", "deconly-100m"), True) == [
        ("mu-tiny", "deconly-tiny"),
        ("mu-100m", "deconly-100m"),
    ]
    assert model_units(("mu-tiny", "deconly-100m"), True) == [("mu-tiny",), ("deconly-100m",)]
    assert model_units(("mu-tiny", "deconly-tiny"), False) == [("mu-tiny",), ("deconly-tiny",)]


def test_grid_is_the_product_of_its_axes(tmp_path):
    sweep = tiny_sweep(
        tmp_path, input_lens=[8, 16, 32], output_lens=[4, 6], batch_sizes=[1, 2], pair_models=False
    )
    configs, _ = sweep.configurations()
    assert len(configs) == 3 * 2 * 2 * 2
    assert len({key for c in configs for key in c.keys.values()}) == len(configs)


def test_a_combination_a_runtime_cannot_run_is_left_out_with_a_note(tmp_path):
    configs, notes = tiny_sweep(tmp_path, devices=["cpu", "npu"]).configurations()
    assert {c.device for c in configs} == {"cpu"}
    assert any("onnxruntime does not run on npu" in n for n in notes)
    with pytest.raises(SweepFileError, match="does not run on npu"):
        tiny_sweep(tmp_path, devices=["npu"]).configurations()


def test_sweep_measures_each_pair_in_one_run_then_resume_skips_it(tmp_path, cache_dir):
    results = tmp_path / "r.jsonl"
    first = run_sweep(tiny_sweep(tmp_path), results, cache_dir=cache_dir)
    assert (first.measured, first.failed, first.done_before) == (2, 0, 0)
    rows = read_rows([results])
    assert len(rows) == 4 and all(r["status"] == "ok" and r["sweep"] == "t" for r in rows)
    for n in (16, 32):
        pair = [r for r in rows if r["input_len"] == n]
        assert {r["model"] for r in pair} == {"mu-tiny", "deconly-tiny"}
        assert len({r["group"] for r in pair}) == 1, "a pair is measured in one interleaved run"
    again = run_sweep(tiny_sweep(tmp_path), results, cache_dir=cache_dir)
    assert (again.measured, again.done_before, again.rows) == (0, 2, [])
    assert len(read_rows([results])) == 4
    forced = run_sweep(tiny_sweep(tmp_path, input_lens=[16]), results, force=True, cache_dir=cache_dir)
    assert forced.measured == 1 and len(read_rows([results])) == 6


def test_absent_device_and_unregistered_runtime_are_reported_once_and_skipped(
    tmp_path, cache_dir, monkeypatch
):
    from slmbench import runners

    monkeypatch.delitem(runners.RUNNERS, "openvino", raising=False)
    sweep = tiny_sweep(
        tmp_path, devices=["cpu", "npu"], runtimes=["onnxruntime", "openvino"], input_lens=[16]
    )
    configs, _ = sweep.configurations()
    assert {(c.device, c.runtime) for c in configs} == {
        ("cpu", "onnxruntime"),
        ("cpu", "openvino"),
        ("npu", "openvino"),
    }
    outcome = run_sweep(sweep, tmp_path / "r.jsonl", cache_dir=cache_dir)
    assert outcome.measured == 1 and outcome.failed == 0
    assert len(outcome.skipped) == 2, outcome.skipped
    assert all("openvino" in line and "no runner" in line for line in outcome.skipped)
    assert {r["runtime"] for r in read_rows([tmp_path / "r.jsonl"])} == {"onnxruntime"}


def test_cli_sweep_runs_resumes_and_prints_tables(tmp_path, cache_dir):
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text(
        'name = "cli"\n[grid]\nmodels = ["mu-tiny", "deconly-tiny"]\ninput_lens = [16]\noutput_lens = [6]\n'
        "[repetitions]\nwarmup = 0\nmin_reps = 2\nmin_time_s = 0.0\n[limits]\ntimeout_s = 120\n"
    )
    results = tmp_path / "r.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "slmbench.cli",
        "sweep",
        str(sweep_file),
        "--results",
        str(results),
        "--cache-dir",
        str(cache_dir),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "1 configurations measured, 0 failed" in done.stdout
    assert "encoder-decoder vs decoder-only" in done.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "1 already done" in again.stdout
    assert len(results.read_text().splitlines()) == 2


def test_default_results_path_is_per_sweep(tmp_path, cache_dir, monkeypatch):
    from click.testing import CliRunner

    from slmbench.cli import cli

    monkeypatch.chdir(tmp_path)
    Path("g.toml").write_text(
        '[grid]\nmodels = ["deconly-tiny"]\ninput_lens = [8]\noutput_lens = [4]\n'
        "[repetitions]\nwarmup = 0\nmin_reps = 2\nmin_time_s = 0.0\n"
    )
    result = CliRunner().invoke(
        cli, ["sweep", "g.toml", "--cache-dir", str(cache_dir)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    rows = [
        json.loads(line) for line in (tmp_path / "results" / "g" / "results.jsonl").read_text().splitlines()
    ]
    assert [r["model"] for r in rows] == ["deconly-tiny"]


def test_runner_options_are_per_runtime_and_fill_what_run_would(tmp_path):
    doc = {
        "grid": {**TINY_GRID, "runtimes": ["onnxruntime", "openvino"], "devices": ["cpu", "npu"]},
        "options": {"openvino": {"kv_cache_precision": "f16"}},
    }
    configs, _ = parse_sweep(doc, "o.toml").configurations()
    by = {(c.device, c.runtime, c.settings.input_len): c.runs[0].option_dict for c in configs}
    assert by["cpu", "onnxruntime", 16] == {}
    assert by["cpu", "openvino", 16] == {"mode": "stateful", "kv_cache_precision": "f16"}
    assert by["npu", "openvino", 32] == {
        "mode": "static",
        "kv_cache_precision": "f16",
        "max_prompt_len": 32,
        "min_response_len": 6,
    }
    key = next(c for c in configs if c.runtime == "openvino" and c.device == "cpu").keys["mu-tiny"]
    assert key.endswith("|kv_cache_precision=f16,mode=stateful")


def test_allowed_runtimes_do_not_depend_on_registry_order(monkeypatch):
    """A runtime registered late (or re-registered) must not reorder the names error messages list."""
    from slmbench import runners
    from slmbench.sweep.files import known_runtimes

    before = known_runtimes()
    cls = runners.RUNNERS["onnxruntime"]
    monkeypatch.delitem(runners.RUNNERS, "onnxruntime")
    monkeypatch.setitem(runners.RUNNERS, "onnxruntime", cls)
    assert known_runtimes() == before == tuple(sorted(before))
