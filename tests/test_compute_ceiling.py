"""The first token's compute ceiling: peak FLOP/s of the runtime's own MatMul, and a row's fraction
of it (bench/host/compute.py)."""

from __future__ import annotations

import pytest

from slmbench.host import compute, contention


def test_the_peak_is_the_runtimes_best_matmul_and_names_it():
    found = compute.measure_peak_flops("onnxruntime", "f32", threads=1, trials=1)
    assert found["flops_per_s"] == max(found["kernels"].values()) > 1e9
    assert found["method"].startswith("onnxruntime MatMul ") and found["method"].endswith(" f32")
    assert compute.measure_peak_flops("onnxruntime", "bf16", threads=1, trials=1)["flops_per_s"] is None


def test_openvino_states_a_peak_only_for_a_precision_it_computes_in():
    pytest.importorskip("openvino")
    f32 = compute.measure_peak_flops("openvino", "f32", threads=1, trials=1)
    assert f32["flops_per_s"] > 1e9
    import openvino as ov

    has_bf16 = "BF16" in [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    bf16 = compute.measure_peak_flops("openvino", "bf16", threads=1, trials=1)
    assert (bf16["flops_per_s"] is not None) == has_bf16


def _scripted(monkeypatch, readings):
    calls = []

    def measure(runtime, precision, threads, trials=5):
        calls.append((runtime, precision, threads))
        return {"flops_per_s": readings[len(calls) - 1], "method": "scripted", "kernels": {}}
    monkeypatch.setattr(compute, "measure_peak_flops", measure)
    monkeypatch.setattr(contention, "wait_until_quiet", lambda **kw: {})
    return calls


def test_a_rows_fraction_is_its_ceiling_ttft_over_its_ttft(tmp_path, monkeypatch):
    calls = _scripted(monkeypatch, [100e9])
    roof = compute.row_compute_ceiling(50e9, "onnxruntime", "f32", 2, tmp_path / "artifacts", ttft_s=1.0)
    assert roof["ceiling_ttft_s"] == pytest.approx(0.5) and roof["fraction_of_ceiling"] == pytest.approx(0.5)
    assert not roof["exceeded"] and not roof["remeasured"] and calls == [("onnxruntime", "f32", 2)]
    again = compute.row_compute_ceiling(50e9, "onnxruntime", "f32", 2, tmp_path / "artifacts", ttft_s=1.0)
    assert again["peak_flops_per_s"] == 100e9 and len(calls) == 1  # the stored reading, not a new one


def test_a_first_token_above_its_ceiling_remeasures_and_is_marked_if_still_above(tmp_path, monkeypatch):
    calls = _scripted(monkeypatch, [10e9, 40e9, 40e9])
    fine = compute.row_compute_ceiling(20e9, "openvino", "bf16", 1, tmp_path / "a", ttft_s=1.0)
    assert fine["remeasured"] and fine["peak_flops_per_s"] == 40e9 and fine["fraction_of_ceiling"] == 0.5
    above = compute.row_compute_ceiling(80e9, "openvino", "bf16", 1, tmp_path / "a", ttft_s=1.0)
    assert above["remeasured"] and above["exceeded"] and above["fraction_of_ceiling"] == 2.0 and len(calls) == 3


def test_no_peak_no_fraction_and_the_row_says_why(tmp_path, monkeypatch):
    _scripted(monkeypatch, [None])
    assert compute.row_compute_ceiling(1e9, "torch", "f32", 1, tmp_path, 1.0)["bound"].startswith("none:")
    assert compute.row_compute_ceiling(1e9, "onnxruntime", None, 1, tmp_path, 1.0)["fraction_of_ceiling"] is None
    none = compute.row_compute_ceiling(1e9, "openvino", "bf16", 1, tmp_path / "b", 1.0)
    assert none["fraction_of_ceiling"] is None and "does not compute in bf16" in none["bound"]


def test_rows_carry_the_compute_ceiling_and_the_report_shows_it(tmp_path, cache_dir):
    from slmbench.config import RunSettings, plan
    from slmbench.core.benchmark import run_benchmark
    from slmbench.models import resolve_model
    from slmbench.models.cost import generation_flops
    from slmbench.report.frames import build
    from slmbench.report.markdown import compute_rows

    settings = RunSettings(input_len=64, output_len=4, warmup=0, min_reps=2, min_time_s=0.0)
    rows = run_benchmark(plan(["mu-tiny", "deconly-tiny"], "cpu", ["onnxruntime"], settings=settings, threads=1),
                         cache_dir=cache_dir, log=lambda m: None)
    for row in rows:
        roof = row["compute_roofline"]
        assert roof["first_token_flops"] == generation_flops(resolve_model(row["model"]).config, 64, 4)[
            "first_token_flops"]
        assert roof["compute_precision"] == "f32" and 0 < roof["fraction_of_ceiling"] <= 1
    table = compute_rows(build(rows))
    assert set(table["model"]) == {"mu-tiny", "deconly-tiny"} and all(table["of ceiling"].str.endswith("%"))
