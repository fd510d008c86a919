"""One identity for every measurement: the configuration, the machine, the row and the pair, each
with one owner, carried from run to resume, report and gate so that nothing is misattributed."""

import errno
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from slmbench.cli import cli
from slmbench.config import RunConfig, RunSettings, check_one_run
from slmbench.core.metrics import same_run_pairs
from slmbench.errors import InvalidOption
from slmbench.gate.compare import env_differences
from slmbench.host.environment import environment, machine_identity, machine_of, this_machine
from slmbench.report.frames import build
from slmbench.results import ResultsError, append_rows, read_rows
from slmbench.rows import FIELDS, SCHEMA, RowError, failed_row, measured_row
from slmbench.sweep.files import parse_sweep
from slmbench.sweep.run import completed_keys, run_sweep

COMMITTED = Path(__file__).resolve().parents[1] / "results"


def _schema_1_rows(tmp_path) -> Path:
    """The committed rows written before schema 2 (measured on an Intel Xeon VM), as a file."""
    lines = [line for line in (COMMITTED / "paper-cpu" / "results.jsonl").read_text().splitlines()
             if json.loads(line).get("schema") == 1]
    assert lines, "the committed schema-1 rows are gone"
    path = tmp_path / "schema1.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
SETTINGS = RunSettings(input_len=32, output_len=8, min_reps=3, min_time_s=0.0)


def _config(model="mu-tiny", threads=1, **options) -> RunConfig:
    runtime = "openvino" if options else "onnxruntime"
    return RunConfig(model, "cpu", runtime, "fp32", SETTINGS, threads, tuple(options.items()))


def _row(config: RunConfig, group="g", env=None, step_ms=1.0) -> dict:
    family = "encoder-decoder" if config.model.startswith("mu") else "decoder-only"
    reps = [{"timestamps_ns": [0] + [int(1e6 * (5 + k * step_ms)) for k in range(8)],
             "encoder_end_ns": 2_000_000 if family == "encoder-decoder" else None} for _ in range(4)]
    return measured_row(config, group, env or environment(), family=family, parameters=1, repetitions=reps,
                        metrics={})


def _elsewhere(**changes) -> dict:
    """This machine's environment with some identity fields changed: another machine."""
    return {**environment(), **changes}


# --- the configuration ----------------------------------------------------------------------------

def test_run_config_is_the_key_and_round_trips_through_json():
    config = _config(mode="static", max_prompt_len=32, min_response_len=8)
    assert config.key == ("mu-tiny|cpu|openvino|fp32|b1|in32|out8|t1|max_prompt_len=32,min_response_len=8,"
                          "mode=static")
    again = RunConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.key == config.key
    assert config.peer_key == _config("deconly-tiny", mode="static", max_prompt_len=32,
                                      min_response_len=8).peer_key


@pytest.mark.parametrize("change, message", [
    ({"threads": 0}, "threads must be an integer from 1 to 4096"),
    ({"threads": 10000}, "threads must be an integer from 1 to 4096"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"model": "a|b"}, "without '|'"),
    ({"options": (("mode", [1]),)}, "must be a string, number or boolean"),
])
def test_run_config_refuses_bad_values_on_construction(change, message):
    fields = {"model": "mu-tiny", "device": "cpu", "runtime": "onnxruntime", "precision": "fp32",
              "settings": SETTINGS, "threads": 1, **change}
    with pytest.raises(InvalidOption, match=message):
        RunConfig(**fields)


def test_create_fills_in_what_a_run_would_and_sweeps_build_the_same_key():
    config = RunConfig.create("deconly-tiny", "cpu", "openvino", "fp32", SETTINGS, 2)
    assert config.option_dict == {"mode": "stateful"}
    sweep = parse_sweep({"name": "s", "grid": {"models": ["deconly-tiny"], "input_lens": [32], "output_lens": [8],
                                              "runtimes": ["openvino"], "threads": 2},
                         "repetitions": {"min_reps": 3, "min_time_s": 0.0}})
    (only,), _ = sweep.configurations()
    assert only.keys == {"deconly-tiny": config.key}


def test_a_configuration_given_twice_is_refused():
    with pytest.raises(InvalidOption, match="given twice"):
        check_one_run([_config(), _config()])


# --- the machine ----------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("host", "other"), ("cpu", "Some Other CPU 9000"), ("cpus_allowed", [0]),
                                          ("memory_bytes", 1 << 30), ("kernel", "0.0.1"),
                                          ("transparent_hugepages", "never"), ("python", "3.0.0")])
def test_every_identity_field_makes_another_machine(field, value):
    here, there = environment(), _elsewhere(**{field: value})
    assert machine_identity(here) != machine_identity(there)
    assert machine_identity(here)["name"] != machine_identity(there)["name"]
    assert any(d.startswith(f"{field}:") for d in env_differences(here, there))  # and compare says so


def test_the_slmbench_commit_is_not_the_machine():
    env = environment()
    moved = {**env, "slmbench_commit": "0" * 40, "packages": {**env["packages"], "slmbench": "9.9"}}
    assert machine_identity(moved) == machine_identity(env)


# --- resume ---------------------------------------------------------------------------------------

def test_another_machines_rows_never_satisfy_a_resume(tmp_path):
    results = tmp_path / "r.jsonl"
    mine, theirs = _config("mu-tiny"), _config("deconly-tiny")
    append_rows(results, [_row(mine), _row(theirs, env=_elsewhere(cpu="Intel(R) Xeon(R) Platinum 8481C CPU"))])
    assert completed_keys(results) == {mine.key}
    # The committed schema-1 rows were measured on another machine: none counts as done here.
    assert completed_keys(_schema_1_rows(tmp_path)) == set()


def test_a_sweep_measures_what_only_another_machine_has_measured(tmp_path, cache_dir):
    sweep = parse_sweep({"name": "s", "grid": {"models": ["deconly-tiny"], "input_lens": [8], "output_lens": [4],
                                              "threads": 1},
                         "repetitions": {"warmup": 0, "min_reps": 2, "min_time_s": 0.0}})
    (config,), _ = sweep.configurations()
    results = tmp_path / "r.jsonl"
    append_rows(results, [_row(config.runs[0], env=_elsewhere(host="laptop"))])
    first = run_sweep(sweep, results, cache_dir=cache_dir)
    assert (first.measured, first.done_before) == (1, 0)
    assert machine_of(first.rows[0]) == this_machine()
    again = run_sweep(sweep, results, cache_dir=cache_dir)
    assert (again.measured, again.done_before) == (0, 1)


# --- the row --------------------------------------------------------------------------------------

def test_rows_are_built_only_from_the_schema():
    with pytest.raises(RowError, match="not in the row schema"):
        measured_row(_config(), "g", environment(), ttft_ms=3)
    row = failed_row(_config(), "g", "boom", {"kind": "error"}, "encoder-decoder", 1)
    assert row["schema"] == SCHEMA and row["machine"] == this_machine() and row["status"] == "failed"


def test_every_rss_figure_says_what_it_measures():
    rss = [f for f in FIELDS if "rss" in f]
    assert set(rss) >= {"peak_rss_bytes", "load_peak_rss_bytes", "load_rss_delta_bytes", "rss_scope"}
    assert "negative when" in FIELDS["load_rss_delta_bytes"]
    assert all(len(FIELDS[f]) > 30 for f in rss)


def test_schema_1_rows_migrate_and_keep_their_own_machine(tmp_path):
    rows = read_rows([_schema_1_rows(tmp_path)])
    assert rows and {r["schema"] for r in rows} == {SCHEMA}
    assert {r["machine"]["name"] for r in rows} == {machine_identity(rows[0]["environment"])["name"]}
    assert "xeon" in rows[0]["machine"]["name"] and rows[0]["machine"] != this_machine()
    assert all("load_rss_bytes" not in r and "load_rss_delta_bytes" in r for r in rows if r["status"] == "ok")
    assert all(RunConfig.from_dict(r["config"]).key == r["key"] for r in rows)


def test_the_rows_of_a_run_land_together_or_not_at_all(tmp_path, monkeypatch):
    results = tmp_path / "r.jsonl"
    append_rows(results, [_row(_config("mu-tiny"), group="earlier")])
    before = results.read_bytes()
    pair = [_row(_config("mu-tiny")), _row(_config("deconly-tiny"))]
    real_write = os.write
    calls = []

    def nearly_full(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))  # a short write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", nearly_full)
    with pytest.raises(ResultsError, match="disk full .* none of the 2 rows of this run was recorded"):
        append_rows(results, pair)
    monkeypatch.undo()
    assert results.read_bytes() == before

    def short(fd, data):  # the kernel may write less than asked without an error: the rest follows
        return real_write(fd, bytes(data[: max(1, len(data) // 3)]))

    monkeypatch.setattr(os, "write", short)
    append_rows(results, pair)
    monkeypatch.undo()
    assert [r["model"] for r in read_rows([results])] == ["mu-tiny", "mu-tiny", "deconly-tiny"]


def test_a_refused_run_leaves_no_results_file(tmp_path):
    results = tmp_path / "new" / "r.jsonl"
    result = CliRunner().invoke(cli, ["run", "-m", "deconly-tiny", "-r", "openvino", "--ov-mode", "npuw",
                                      "-i", "8", "-o", "4", "--results", str(results)])
    assert result.exit_code == 2 and "npuw" in result.output
    assert not results.exists() and not results.parent.exists()


# --- the pair and the report ----------------------------------------------------------------------

def test_pairs_keep_the_openvino_mode_and_the_threads():
    rows = []
    for cfg in ({"mode": "stateful"}, {"mode": "static", "max_prompt_len": 32, "min_response_len": 8}):
        rows += [_row(_config("mu-tiny", **cfg)), _row(_config("deconly-tiny", **cfg))]
    rows += [_row(_config(m, threads=2)) for m in ("mu-tiny", "deconly-tiny")]
    pairs = same_run_pairs(rows)
    assert len(pairs) == 3 and len({p.label for p in pairs}) == 3
    data = build(rows)
    assert len(data.ratios) == 3 and data.ratios["series"].nunique() == 3
    assert data.configs["series"].nunique() == len(data.configs) == 6


def test_machines_that_share_a_hostname_are_never_merged():
    xeon = _elsewhere(host="vm", cpu="Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz")
    epyc = _elsewhere(host="vm", cpu="AMD EPYC 9B14")
    rows = [_row(_config(m), group=g, env=env) for g, env in (("x", xeon), ("e", epyc))
            for m in ("mu-tiny", "deconly-tiny")]
    data = build(rows)
    assert len(data.machines) == 2 and set(data.machines["host"]) == {"vm"}
    assert len(data.configs) == 4 and data.configs["platform"].nunique() == 2
    names = set(data.machines["machine"])
    assert set(data.configs["platform"]) == {f"cpu @ {n}" for n in names}
    assert any("xeon" in n for n in names) and any("epyc" in n for n in names)
    assert len(data.ratios) == 2 and set(data.ratios["machine"]) == names
    # and a pair is never formed across machines, even within one group id
    assert same_run_pairs([_row(_config("mu-tiny"), env=xeon), _row(_config("deconly-tiny"), env=epyc)]) == []
