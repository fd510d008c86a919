"""The CLI: help with examples, and every bad input as one line with exit code 2."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from slmbench.cli import cli

TINY = ["-m", "mu-tiny", "-m", "deconly-tiny", "-i", "16", "-o", "4", "--warmup", "0", "--min-reps", "2",
        "--min-time", "0"]


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_every_command_has_help_with_an_example():
    for name in cli.commands:
        result = invoke(name, "--help")
        assert result.exit_code == 0, name
        assert "Example" in result.output, f"{name} --help has no example"


def test_help_imports_no_heavy_library():
    code = ("import sys; from slmbench.cli import main; sys.argv=['slmbench','--help']\n"
            "try: main()\nexcept SystemExit: pass\n"
            "print(sorted(m for m in ('torch','onnxruntime','openvino','matplotlib','transformers','pandas') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_models_lists_presets_with_exact_counts():
    result = invoke("models", "--json")
    rows = {r["model"]: r for r in json.loads(result.output)}
    assert rows["mu-330m"]["parameters"] == 331_970_560 and rows["mu-330m"]["family"] == "encoder-decoder"
    assert abs(rows["deconly-330m"]["parameters"] / rows["mu-330m"]["parameters"] - 1) < 0.02


def test_tiny_run_prints_tables_and_ratios(tmp_path):
    results = tmp_path / "r.jsonl"
    result = invoke("run", *TINY, "--results", str(results))
    assert result.exit_code == 0, result.output
    assert "TTFT p50" in result.output and "TTFT reduction" in result.output
    assert len(results.read_text().splitlines()) == 2


@pytest.mark.parametrize("args, message", [
    (["run", "-m", "gpt-9"], "unknown model 'gpt-9'"),
    (["run", "-d", "tpu"], "unknown device 'tpu'; choose from cpu, cuda, gpu, npu"),
    (["run", "-d", "cuda", "-m", "mu-tiny"], "cuda"),
    (["run", "-r", "tensorrt"], "unknown runtime 'tensorrt'"),
    (["run", "-i", "0"], "input_len must be a positive integer"),
    (["run", "-o", "-3"], "output_len must be a positive integer"),
    (["run", "-b", "0"], "batch must be a positive integer"),
    (["run", "-t", "0"], "threads must be an integer from 1 to 4096"),
    (["run", "-t", "10000"], "threads must be an integer from 1 to 4096"),
    (["run", "-m", "mu-tiny", "-m", "mu-tiny"], "--model mu-tiny is given twice"),
    (["run", "-m", "deconly-tiny", "-i", "1000", "-o", "100"], "exceeds deconly-tiny's maximum positions (1024)"),
    (["run", "-m", "mu-tiny", "--results", "/proc/nope/r.jsonl"], "cannot write results to /proc/nope/r.jsonl"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output


def test_bad_input_through_the_real_entry_point():
    proc = subprocess.run([sys.executable, "-m", "slmbench.cli", "run", "--device", "tpu"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: unknown device")
    assert "Traceback" not in proc.stderr


def test_absent_device_writes_nothing(tmp_path):
    results = tmp_path / "r.jsonl"
    results.write_text('{"kept": 1}\n')
    CliRunner().invoke(cli, ["run", "-d", "cuda", "--results", str(results)])
    assert results.read_text() == '{"kept": 1}\n'


def test_corrupt_cached_artifact_is_reexported_not_a_crash(tmp_path):
    cache = tmp_path / "cache"
    assert invoke("export", "-m", "deconly-tiny", "--cache-dir", str(cache)).exit_code == 0
    graph = next(cache.glob("deconly-tiny-onnx-*/decoder.onnx"))
    graph.write_bytes(graph.read_bytes()[:500])
    result = invoke("run", "-m", "deconly-tiny", "-i", "8", "-o", "3", "--warmup", "0", "--min-reps", "1",
                    "--min-time", "0", "--cache-dir", str(cache), "--results", str(tmp_path / "r.jsonl"))
    assert result.exit_code == 0 and "warning: re-exporting" in result.output and "truncated" in result.output


def _one_line_exit_2(result, message):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output


def test_a_cache_dir_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("x")
    _one_line_exit_2(CliRunner().invoke(cli, ["export", "-m", "deconly-tiny", "--cache-dir", str(not_a_folder)]),
                     "is a file, not a folder")
    monkeypatch.setenv("SLMBENCH_CACHE_DIR", str(not_a_folder))
    _one_line_exit_2(CliRunner().invoke(cli, ["export", "-m", "deconly-tiny"]), "is a file, not a folder")


def test_report_output_that_cannot_be_a_folder_is_one_line(tmp_path):
    from slmbench.config import RunConfig, RunSettings
    from slmbench.results import append_rows
    from slmbench.rows import failed_row

    rows = tmp_path / "failed.jsonl"
    config = RunConfig("mu-tiny", "cpu", "onnxruntime", "fp32", RunSettings(), 1)
    append_rows(rows, [failed_row(config, "g", "boom", {"kind": "error"}, "encoder-decoder", 1)])
    done = CliRunner().invoke(cli, ["report", str(rows), "--out", str(tmp_path / "only-failed")])
    assert done.exit_code == 0 and (tmp_path / "only-failed" / "report.md").is_file(), done.output
    _one_line_exit_2(CliRunner().invoke(cli, ["report", str(rows), "--out", str(rows)]), "cannot write the report")
    _one_line_exit_2(CliRunner().invoke(cli, ["report", str(rows), "--out", "/proc/nope"]), "cannot write the report")


def test_a_command_leaves_no_global_state_changed(monkeypatch):
    """The warning display and --trust-remote-code's environment variable are the command's own:
    both are back as they were when it returns, error or not."""
    import os
    import warnings

    from slmbench.models.hf import TRUST_ENV

    monkeypatch.delenv(TRUST_ENV, raising=False)
    shown = warnings.showwarning
    result = CliRunner().invoke(cli, ["export", "-m", "no-such-model", "--trust-remote-code"])
    assert result.exit_code == 2 and "unknown model" in result.output
    assert warnings.showwarning is shown and TRUST_ENV not in os.environ
    monkeypatch.setenv(TRUST_ENV, "0")
    CliRunner().invoke(cli, ["export", "-m", "no-such-model", "--trust-remote-code"])
    assert os.environ[TRUST_ENV] == "0"
