"""Fault battery for sweeps (issue 9, items 1 and 2): a configuration's process crashes, hangs or
runs out of memory -> a failed row with the cause and the sweep goes on; SIGINT / SIGTERM ->
every completed row intact, nothing of the partial one, exit 130; resume finishes the rest.
Each test counts rows lost (must be 0) and rows misattributed (must be 0)."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from slmbench.results import read_rows
from slmbench.sweep.files import parse_sweep
from slmbench.sweep.run import run_sweep
from slmbench.sweep.worker import INJECT_ENV

FAST = {"warmup": 0, "min_reps": 2, "min_time_s": 0.0, "max_reps": 4}
GRID = {"models": ["mu-tiny", "deconly-tiny"], "input_lens": [16, 24, 32], "output_lens": [6]}
HANG_TIMEOUT_S = 12  # a healthy tiny configuration takes a few seconds even on a busy 2-core box


def sweep(tmp_path, timeout_s=120, memory_gb=8, **grid):
    return parse_sweep(
        {
            "name": "faults",
            "grid": {**GRID, **grid},
            "repetitions": FAST,
            "limits": {"timeout_s": timeout_s, "memory_limit_gb": memory_gb},
        },
        str(tmp_path / "f.toml"),
    )


def by_input(rows):
    out = {}
    for r in rows:
        out.setdefault(r["input_len"], []).append(r)
    return out


def assert_complete_and_attributed(rows, expected_configs):
    """Every configuration has exactly its own two model rows; nothing lost, nothing misattributed."""
    grouped = by_input(rows)
    assert sorted(grouped) == sorted(expected_configs)
    for n, rs in grouped.items():
        assert sorted(r["model"] for r in rs) == ["deconly-tiny", "mu-tiny"], (n, rs)
        for r in rs:
            assert r["key"] == f"{r['model']}|cpu|onnxruntime|fp32|b1|in{n}|out6|t{r['threads']}"


def test_crash_and_hang_become_failed_rows_and_the_sweep_goes_on_then_resume_finishes(tmp_path, cache_dir,
                                                                                        monkeypatch):
    results = tmp_path / "r.jsonl"
    started = time.monotonic()
    monkeypatch.setenv(INJECT_ENV, "crash@|in16|;hang@|in24|")  # the workers inherit it
    outcome = run_sweep(sweep(tmp_path, timeout_s=HANG_TIMEOUT_S), results, cache_dir=cache_dir)
    assert time.monotonic() - started < HANG_TIMEOUT_S + 60
    assert (outcome.measured, outcome.failed) == (1, 2)
    rows = read_rows([results])
    assert_complete_and_attributed(rows, [16, 24, 32])
    crash, hang, fine = (by_input(rows)[n] for n in (16, 24, 32))
    for r in crash:
        assert r["status"] == "failed" and r["failure"]["kind"] == "crash"
        assert r["failure"]["signal"] == "SIGABRT" and "SIGABRT" in r["error"]
    for r in hang:
        assert r["status"] == "failed" and r["failure"]["kind"] == "timeout"
        assert f"timed out after {HANG_TIMEOUT_S}s" in r["error"]
    assert all(r["status"] == "ok" and r["metrics"]["ttft_s"]["count"] >= 2 for r in fine)
    for r in crash + hang:  # a failed row still says what it was and where
        assert r["environment"]["host"] and r["settings"]["input_len"] == r["input_len"]
        assert r["compared_with"] and r["sweep"] == "faults"

    monkeypatch.delenv(INJECT_ENV)
    resumed = run_sweep(sweep(tmp_path), results, cache_dir=cache_dir)
    assert (resumed.measured, resumed.failed, resumed.done_before) == (2, 0, 1)
    rows = read_rows([results])
    ok = [r for r in rows if r["status"] == "ok"]
    assert_complete_and_attributed(ok, [16, 24, 32])
    assert len(ok) == 6 and len(rows) == 10  # 4 failed rows stay as the record of what happened


def test_out_of_memory_under_the_child_memory_limit_is_a_failed_row(tmp_path, cache_dir, monkeypatch):
    results = tmp_path / "r.jsonl"
    monkeypatch.setenv(INJECT_ENV, "oom@|in16|")
    outcome = run_sweep(sweep(tmp_path, memory_gb=1.5, input_lens=[16, 24]), results, cache_dir=cache_dir)
    assert (outcome.measured, outcome.failed) == (1, 1)
    rows = by_input(read_rows([results]))
    for r in rows[16]:
        assert r["status"] == "failed" and r["failure"]["kind"] == "oom", r["error"]
        assert "out of memory" in r["error"] and "1.5 GiB" in r["error"]
    assert all(r["status"] == "ok" for r in rows[24])


def test_segfault_is_a_failed_row_naming_the_signal(tmp_path, cache_dir, monkeypatch):
    results = tmp_path / "r.jsonl"
    monkeypatch.setenv(INJECT_ENV, "segfault@|in16|")
    outcome = run_sweep(sweep(tmp_path, input_lens=[16]), results, cache_dir=cache_dir)
    assert outcome.failed == 1
    rows = read_rows([results])
    assert len(rows) == 2 and all(
        r["failure"]["signal"] == "SIGSEGV" and r["failure"]["kind"] == "crash" for r in rows
    )


def test_an_error_in_the_configuration_is_a_failed_row_with_its_message(tmp_path, cache_dir, monkeypatch):
    results = tmp_path / "r.jsonl"
    monkeypatch.setenv(INJECT_ENV, "error@|in16|")
    run_sweep(sweep(tmp_path, input_lens=[16]), results, cache_dir=cache_dir)
    rows = read_rows([results])
    assert [r["error"] for r in rows] == ["RuntimeError: injected error"] * 2


def _wait_for_rows(path, count, proc, limit_s=180):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"sweep ended early: {proc.communicate()}")
        time.sleep(0.1)
    raise AssertionError("no rows appeared")


def _running_workers(proc, limit_s: float = 120) -> list:
    """The sweep's worker processes, once one is running (its configuration hangs by design)."""
    deadline, workers = time.monotonic() + limit_s, []
    while not workers and time.monotonic() < deadline:
        workers = [c for c in psutil.Process(proc.pid).children(recursive=True)
                   if "slmbench.sweep.worker" in " ".join(c.cmdline())]
        time.sleep(0.1)
    assert workers, "the hanging configuration's process should be running"
    return workers


def _one_hanging_configuration(tmp_path, name: str):
    """A one-configuration sweep file, and the environment that makes its worker hang."""
    sweep_file = tmp_path / f"{name}.toml"
    sweep_file.write_text(f'name = "{name}"\n[grid]\nmodels = ["deconly-tiny"]\ninput_lens = [16]\n'
                          'output_lens = [6]\n[repetitions]\nwarmup = 0\nmin_reps = 2\nmin_time_s = 0.0\n'
                          "[limits]\ntimeout_s = 300\n")
    return sweep_file, dict(os.environ, **{INJECT_ENV: "hang@|in16|"})


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_keeps_completed_rows_drops_the_partial_one_and_resume_finishes(
    tmp_path, cache_dir, signum
):
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text(
        'name = "sig"\n[grid]\nmodels = ["mu-tiny", "deconly-tiny"]\ninput_lens = [16, 24, 32]\n'
        "output_lens = [6]\n[repetitions]\nwarmup = 0\nmin_reps = 2\nmin_time_s = 0.0\n"
        "[limits]\ntimeout_s = 300\n"
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
    # The second configuration hangs, so the signal surely lands while it is in progress.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **{INJECT_ENV: "hang@|in24|"}))
    try:
        _wait_for_rows(results, 2, proc)
        workers = _running_workers(proc, 60)
        time.sleep(0.5)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err and "2 rows written by this run" in err and "resume" in err
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, "the interrupted configuration's process must not outlive the sweep"
    lines = results.read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line whole: nothing torn
    assert (
        len(rows) == 2 and {r["input_len"] for r in rows} == {16} and all(r["status"] == "ok" for r in rows)
    )

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 configurations measured" in done.stdout and "1 already done" in done.stdout
    rows = read_rows([results])
    assert_complete_and_attributed(rows, [16, 24, 32])
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)


def test_a_worker_dies_with_its_sweep_even_when_the_sweep_is_killed(tmp_path, cache_dir):
    sweep_file, env = _one_hanging_configuration(tmp_path, "kill")
    proc = subprocess.Popen([sys.executable, "-m", "slmbench.cli", "sweep", str(sweep_file), "--results",
                             str(tmp_path / "r.jsonl"), "--cache-dir", str(cache_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        workers = _running_workers(proc, 60)
        proc.kill()  # SIGKILL: the sweep gets no chance to clean up
        proc.wait(10)
        _, alive = psutil.wait_procs(workers, timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    for p in alive:
        p.kill()
    assert not alive, "a worker must not outlive its sweep"


def test_a_library_that_cannot_be_mapped_under_the_memory_limit_is_out_of_memory():
    from slmbench.sweep.worker import is_out_of_memory

    exc = ImportError("libonnxruntime.so.1: failed to map segment from shared object")
    assert is_out_of_memory(exc) and not is_out_of_memory(ImportError("No module named 'onnxruntime'"))


def test_an_interrupt_under_heavy_load_ends_the_sweep_promptly(tmp_path, cache_dir):
    """Eight busy processes per CPU compete with the sweep when the signal lands: the interrupt
    path (kill the worker, count the kept rows, say so) must still end it within seconds."""
    sweep_file, env = _one_hanging_configuration(tmp_path, "load")
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(3)))  # rows an earlier run kept
    proc = subprocess.Popen([sys.executable, "-m", "slmbench.cli", "sweep", str(sweep_file), "--results", str(results),
                             "--cache-dir", str(cache_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    load = []
    try:
        workers = _running_workers(proc)
        time.sleep(1.0)
        load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(8 * os.cpu_count())]
        time.sleep(2.0)  # the load is running
        signalled = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - signalled
    finally:
        for p in load:
            p.kill()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "3 completed rows" in err and "0 rows written by this run" in err, err
    assert took < 30, f"the interrupted sweep took {took:.1f}s to exit under load"
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive


def test_an_interrupted_sweep_whose_clean_up_sticks_still_exits_130_with_the_stacks(tmp_path, cache_dir):
    """If tidying up after Ctrl-C hangs (here: the progress display never stops), the sweep ends
    anyway once the grace period has passed, exit 130, every thread's stack on stderr."""
    sweep_file, env = _one_hanging_configuration(tmp_path, "grace")
    code = ("import sys, time\nfrom slmbench import cli\nfrom slmbench.sweep import run\ncli.EXIT_GRACE_S = 2.0\n"
            "run.RichSweepProgress.__exit__ = lambda self, *exc: time.sleep(3600)\n"
            f"sys.argv = ['slmbench', 'sweep', {str(sweep_file)!r}, '--results', {str(tmp_path / 'r.jsonl')!r}, "
            f"'--cache-dir', {str(cache_dir)!r}]\ncli.main()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        workers = _running_workers(proc)
        time.sleep(0.5)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "exiting after 2s of clean-up" in err and "Thread" in err, err[-2000:]
    assert took < 30
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
