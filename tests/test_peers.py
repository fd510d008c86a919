"""The optimum side-by-side script (bench/tools/peers.py): its parts that need no optimum."""

from __future__ import annotations

import sys

from click.testing import CliRunner

from slmbench.tools import peers


def test_the_streamer_stamps_generated_tokens_not_the_prompt():
    stamps = peers._Stamps()
    stamps.put("the prompt ids")  # generate() hands the prompt over first
    assert stamps.stamps == []
    for token in range(3):
        stamps.put(token)
    assert len(stamps.stamps) == 3 and stamps.stamps == sorted(stamps.stamps)


def test_every_runtime_is_compared_at_f32_on_both_sides():
    assert all(("fp32", "f32") in configs for configs in peers.CONFIGS.values())
    assert ("bf16", "default") in peers.CONFIGS["openvino"]  # slmbench bf16 against optimum as it comes


def test_the_script_lists_its_commands():
    result = CliRunner().invoke(peers.main, ["--help"])
    assert result.exit_code == 0
    assert all(name in result.output for name in ("checkpoint", "optimum", "compare"))


def test_compare_runs_only_the_checkpoints_named(tmp_path):
    for name in ("llama", "t5"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    result = CliRunner().invoke(peers.main, ["compare", "--peer-python", sys.executable, "--ckpt", str(tmp_path),
                                             "--model", "gpt2", "--out", str(tmp_path / "peers.jsonl")])
    assert result.exit_code == 2 and "no checkpoint named gpt2" in result.output
    assert not (tmp_path / "peers.jsonl").exists()


def test_a_failed_measuring_process_is_one_line(tmp_path):
    """A checkpoint slmbench cannot run (here: an empty config) stops compare with one line naming
    the process and what it said last, not a traceback; nothing is written."""
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text("{}")
    result = CliRunner().invoke(peers.main, ["compare", "--peer-python", sys.executable, "--ckpt", str(tmp_path),
                                             "--runtime", "onnxruntime", "--out", str(tmp_path / "peers.jsonl")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    (line,) = [text for text in result.output.splitlines() if text.strip()]
    assert line.startswith("Error: -m slmbench.cli run") and "exited 2" in line
    assert not (tmp_path / "peers.jsonl").exists()
