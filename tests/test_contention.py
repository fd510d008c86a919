"""A run that competed for the CPU is noticed, recorded and, with --require-quiet, refused."""

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from slmbench.cli import cli
from slmbench.config import RunSettings, plan
from slmbench.core.benchmark import run_benchmark
from slmbench.host import contention
from slmbench.host.contention import Snapshot, Tally

SETTINGS = RunSettings(input_len=16, output_len=8, warmup=1, min_reps=5, min_time_s=1.5)


def _run(cache_dir, **kwargs):
    (row,) = run_benchmark(plan(["deconly-tiny"], "cpu", ["onnxruntime"], settings=SETTINGS, threads=1),
                           cache_dir=cache_dir, log=lambda m: None, **kwargs)
    return row


@pytest.fixture
def load():
    """A busy loop on every CPU this process may use (what another job on the box looks like)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in os.sched_getaffinity(0)]
    yield
    for p in procs:
        p.kill()
        p.wait()


def test_others_time_is_the_machines_busy_time_less_our_own():
    tally = Tally()
    tally.add(Snapshot(0, 1.0, 3, 10.0, 0.0), Snapshot(2_000_000_000, 2.5, 10, 13.5, 0.2))
    s = tally.summary()
    assert s["own_cpu_s"] == 1.5 and s["others_cpu_s"] == pytest.approx(2.0) and s["involuntary_switches"] == 7
    assert s["others_fraction"] == pytest.approx(2.0 / (2.0 * s["cpus"]))


def test_a_quiet_run_carries_its_contention_and_no_warning(cache_dir):
    row = _run(cache_dir)
    c = row["contention"]
    assert c["wall_s"] > 0.3 and c["own_cpu_s"] > 0 and c["others_fraction"] is not None
    assert c["others_fraction"] < contention.BUSY_FRACTION, c
    assert not any("competed for the CPU" in w for w in row["warnings"])


def test_a_run_under_load_is_flagged_and_require_quiet_refuses(cache_dir, load, monkeypatch, tmp_path):
    row = _run(cache_dir)
    assert row["contention"]["others_fraction"] > 0.3, row["contention"]
    assert any("competed for the CPU" in w for w in row["warnings"])
    monkeypatch.setattr(contention, "QUIET_WAIT_S", 2.0)
    results = tmp_path / "r.jsonl"
    result = CliRunner().invoke(cli, ["run", "-m", "deconly-tiny", "-i", "16", "-o", "8", "--min-reps", "3",
                                      "--min-time", "0", "-t", "1", "--require-quiet", "--results", str(results),
                                      "--cache-dir", str(cache_dir)])
    lines = [line for line in result.output.splitlines() if line.strip() and "preparing" not in line]
    assert result.exit_code == 2 and "the machine is busy" in result.output, result.output
    assert len([line for line in lines if line.startswith("error:")]) == 1 and not results.exists()


def test_the_bandwidth_ceiling_is_stored_per_machine_and_threads_only_when_quiet(tmp_path, monkeypatch):
    import json

    from slmbench.host import roofline
    from slmbench.host.environment import this_machine

    calls = []
    monkeypatch.setattr(roofline, "measure_bandwidth", lambda threads, **kw: calls.append(threads) or {
        "read_bytes_per_s": 4e10, "method": "onnxruntime_matvec", "threads": threads})
    cache = tmp_path / "artifacts"
    monkeypatch.setattr(contention, "wait_until_quiet", lambda **kw: (_ for _ in ()).throw(
        contention.MachineBusy("busy")))
    assert roofline.host_bandwidth(1, cache)["quiet"] is False
    assert not (tmp_path / "bandwidth.json").exists()  # a busy reading is used once, never stored
    monkeypatch.setattr(contention, "wait_until_quiet", lambda **kw: {})
    first = roofline.host_bandwidth(1, cache)
    assert first["quiet"] and roofline.host_bandwidth(1, cache) == first and calls == [1, 1]
    stored = json.loads((tmp_path / "bandwidth.json").read_text())
    assert list(stored) == [f"{this_machine()['id']}|t1"]


def test_the_ceiling_takes_the_best_read_kernel_and_names_it():
    from slmbench.host.roofline import measure_bandwidth

    found = measure_bandwidth(1, megabytes=64, trials=1)
    assert found["method"] in found["kernels"] and "onnxruntime_matvec" in found["kernels"]
    assert found["read_bytes_per_s"] == max(v for k, v in found["kernels"].items() if k != "numpy_copy")


def _fake_bandwidth(monkeypatch, readings):
    """host_bandwidth over scripted readings (bytes/s, in turn) on a quiet machine."""
    from slmbench.host import roofline

    calls = []

    def measure(threads, **kw):
        calls.append(threads)
        return {"read_bytes_per_s": readings[len(calls) - 1], "method": "onnxruntime_layers", "threads": threads}
    monkeypatch.setattr(roofline, "measure_bandwidth", measure)
    monkeypatch.setattr(contention, "wait_until_quiet", lambda **kw: {})
    return calls


def test_the_stored_ceiling_is_the_best_quiet_reading_and_counts_them(tmp_path, monkeypatch):
    from slmbench.host.roofline import host_bandwidth

    calls = _fake_bandwidth(monkeypatch, [40e9, 35e9, 45e9])
    cache = tmp_path / "artifacts"
    assert host_bandwidth(2, cache)["read_bytes_per_s"] == 40e9
    lower = host_bandwidth(2, cache, refresh=True)  # a slower reading never lowers the ceiling
    assert lower["read_bytes_per_s"] == 40e9 and lower["latest"]["read_bytes_per_s"] == 35e9 and lower["readings"] == 2
    higher = host_bandwidth(2, cache, refresh=True)
    assert higher["read_bytes_per_s"] == 45e9 and higher["readings"] == 3 and len(calls) == 3
    assert host_bandwidth(2, cache) == higher and len(calls) == 3


def test_a_decode_above_its_ceiling_remeasures_and_is_marked_if_still_above(tmp_path, monkeypatch):
    from slmbench.host import roofline
    from slmbench.host.roofline import row_roofline
    from slmbench.models.cost import decode_bytes_per_token, mean_decode_bytes
    from slmbench.models.presets import get_preset

    cfg = get_preset("deconly-330m")
    need = decode_bytes_per_token(cfg, "fp32", position=512 + 32)["bytes_per_token"]
    calls = _fake_bandwidth(monkeypatch, [30e9, 50e9, 50e9, 60e9])
    monkeypatch.setattr(roofline, "last_level_cache_bytes", lambda: 32 << 20)  # CI's CPU may have a far larger one
    cache = tmp_path / "artifacts"
    mean = mean_decode_bytes(cfg, "fp32", 512, 64)
    below = row_roofline(mean, 2, cache, decode_tps=20e9 / need)
    assert not below["remeasured"] and not below["exceeded"] and below["fraction_of_ceiling"] == pytest.approx(2 / 3)
    fixed = row_roofline(mean, 2, cache, decode_tps=40e9 / need)  # 40 > 30: re-measured
    assert fixed["remeasured"] and not fixed["exceeded"] and fixed["fraction_of_ceiling"] == pytest.approx(0.8)
    above = row_roofline(mean, 2, cache, decode_tps=55e9 / need)
    assert above["remeasured"] and above["exceeded"] and above["fraction_of_ceiling"] == pytest.approx(1.1)
    assert len(calls) == 3


def test_a_model_that_fits_in_the_cache_has_no_bandwidth_ceiling(tmp_path, monkeypatch):
    from slmbench.host import roofline
    from slmbench.models.cost import mean_decode_bytes
    from slmbench.models.presets import get_preset

    calls = _fake_bandwidth(monkeypatch, [])
    monkeypatch.setattr(roofline, "last_level_cache_bytes", lambda: 32 << 20)
    roof = roofline.row_roofline(mean_decode_bytes(get_preset("mu-tiny"), "fp32", 64, 16), 2, tmp_path / "a",
                                 decode_tps=900.0)
    assert roof["fraction_of_ceiling"] is None and roof["ceiling_tokens_per_s"] is None and not calls
    assert "last-level cache" in roof["bound"]
