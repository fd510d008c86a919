"""The same-job A/B gate: a base revision measured beside the working tree on this machine."""

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from slmbench.cli import cli
from slmbench.errors import InvalidOption
from slmbench.gate import ab
from slmbench.gate.compare import compare_rows

REPO = Path(__file__).resolve().parents[1]
SLOW_STEP = (
    "        self.decoder.run_with_iobinding(b)\n        outputs = b.get_outputs()\n",
    "        began = time.perf_counter()\n        self.decoder.run_with_iobinding(b)\n"
    "        until = time.perf_counter() + 0.2 * (time.perf_counter() - began)  # 20% more work per step\n"
    "        while time.perf_counter() < until:\n            pass\n        outputs = b.get_outputs()\n",
)


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def _commit_all(repo, message):
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", message)


@pytest.fixture
def clone(tmp_path):
    """This repository's last commit, alone (a shallow clone)."""
    target = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{REPO}", str(target)], check=True)
    return target


def _commands(tmp_path):
    sweep = tmp_path / "gate.toml"
    sweep.write_text('name = "gate"\n[grid]\nmodels = ["mu-tiny", "deconly-tiny"]\ninput_lens = [32]\n'
                     'output_lens = [16]\nthreads = 1\n[repetitions]\nwarmup = 1\nmin_reps = 20\nmin_time_s = 0.5\n')
    return [["sweep", str(sweep), "--force"],
            ["overhead", "-m", "deconly-tiny", "--threads", "1", "-i", "32", "-o", "16", "--min-reps", "20",
             "--min-time", "0.5"]]


def _slow(tree: Path) -> None:
    runner = tree / "bench" / "runners" / "onnxruntime.py"
    text = runner.read_text()
    assert SLOW_STEP[0] in text, "the ONNX Runtime decode step changed: update SLOW_STEP"
    runner.write_text(text.replace(SLOW_STEP[0], SLOW_STEP[1]))


def _verdicts(base, candidate):
    report = compare_rows(base, candidate)
    assert not report.env_differences  # one machine: everything is compared
    return {(c.config.split("|")[0], c.metric): c.verdict for c in report.comparisons if c.same_run}


def test_a_slower_candidate_is_a_regression_and_a_faster_one_an_improvement(clone, tmp_path, cache_dir):
    _slow(clone)
    _commit_all(clone, "20% more work per decode step")  # HEAD~1 is the plain code
    commands = _commands(tmp_path)
    base, candidate, info = ab.run_ab("HEAD~1", commands, rounds=1, repo=clone, cache_dir=cache_dir,
                                      log=lambda m: None)
    assert info["candidate"].startswith("working tree (") and "HEAD~1" in info["base"]
    slower = _verdicts(base, candidate)
    assert slower["deconly-tiny", "overhead_step"] == "regression"  # harness/bare, within one process
    # What the CI gate acts on (same-run ratios) fails; absolute times of two processes are context only:
    # seen here, one process of the same code ran 10% slower than the next.
    failures = compare_rows(base, candidate).gate_failures("same-run")
    assert any("decode step harness/bare: regression" in f for f in failures), failures
    _git(clone, "checkout", "HEAD~1", "--", "bench/runners/onnxruntime.py")  # the working tree: fast again
    base, candidate, info = ab.run_ab("HEAD", commands, rounds=1, repo=clone, cache_dir=cache_dir,
                                      log=lambda m: None)
    assert "uncommitted changes" in info["candidate"]
    faster = _verdicts(base, candidate)
    assert faster["deconly-tiny", "overhead_step"] == "improvement"
    # An improvement is not a failure. (The ratio of enc-dec to dec-only TTFT may move for real: the
    # change slows the decoder-only prefill and only the first decoder step of the encoder-decoder.)
    failures = compare_rows(base, candidate).gate_failures("same-run")
    assert not any("harness/bare" in f for f in failures), failures


def test_a_shallow_clone_without_a_stored_baseline_gates_nothing_and_says_so(clone, tmp_path):
    with pytest.raises(ab.NothingGated, match="not in this shallow clone .* no stored baseline"):
        ab.gate_rows("HEAD~1", [], 1, tmp_path / "absent.jsonl", log=lambda m: None, repo=clone)
    with pytest.raises(ab.RevisionError, match="shallow clone"):
        ab.resolve_revision("HEAD~1", clone)


def test_a_base_revision_without_slmbench_is_refused(tmp_path):
    repo = tmp_path / "other"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "README").write_text("not slmbench\n")
    _git(repo, "add", "README")
    _commit_all(repo, "first")
    with pytest.raises(ab.RevisionError, match="has no slmbench"):
        ab.run_ab("HEAD", [], repo=repo, log=lambda m: None)
    assert _git(repo, "worktree", "list").count("\n") == 1  # the scratch worktree is gone


@pytest.mark.parametrize("args, message", [
    (["compare", "--base-rev", "no-such-rev-xyz"], "unknown revision 'no-such-rev-xyz'"),
    (["compare", "--base-rev", "HEAD", "--rounds", "0"], "--rounds must be an integer from 1 to 50"),
    (["compare", "a.jsonl"], "give BASELINE and CANDIDATE"),
    (["compare", "--noise-study", "1"], "--noise-study must be from 2 to 20 runs"),
    (["compare", "--noise-study", "3", "--base-rev", "HEAD~1"], "compares a commit with itself"),
    (["compare", "a.jsonl", "b.jsonl", "--base-rev", "HEAD"], "not both"),
])
def test_bad_gate_input_is_one_line_and_exit_2(args, message, monkeypatch):
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(cli, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output


def test_thresholds_inside_the_machines_noise_band_are_refused(tmp_path):
    from slmbench.gate.compare import Comparison, Report, parse_thresholds

    a_a = [Report([Comparison("p", "ed_do_ttft", "no change", ratio=r), Comparison("q", "ttft_s", "no change",
                                                                                   ratio=1.3)], [], [], [])
           for r in (0.957, 1.02)]
    band = ab.noise_band(a_a)
    assert band == {"ed_do_ttft": pytest.approx(1 / 0.957)}  # same-run metrics only; the widest either way
    path = tmp_path / "m.noise.json"
    ab.record_noise(path, band, 2, 3, "0" * 40)
    assert ab.check_thresholds(parse_thresholds(None), path) == band  # 1.10 stands above a 4.5% band
    with pytest.raises(InvalidOption, match="inside this machine's noise band .* ed_do_ttft=1.04"):
        ab.check_thresholds(parse_thresholds(["ed_do_ttft=1.04"]), path)
    assert ab.check_thresholds(parse_thresholds(["ed_do_ttft=1.04"]), tmp_path / "absent.json") == {}
