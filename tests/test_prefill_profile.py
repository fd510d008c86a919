"""The ONNX Runtime first-token profile (bench/tools/prefill_profile.py) on the tiny pair: node times
within the wall time, and the matrix products' FLOPs, read from the profiler's shapes, the ones
models/cost.py counts for the first token."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from slmbench.models import resolve_model
from slmbench.models.cost import generation_flops
from slmbench.tools import prefill_profile


def test_the_first_token_profile_adds_up(tmp_path, cache_dir, monkeypatch):
    from slmbench.host import compute

    # the stored ceiling would be measured with 20 trials of 4 shapes when none is stored: one trial stands in
    monkeypatch.setattr(compute, "host_peak_flops",
                        lambda runtime, precision, threads, store: compute.measure_peak_flops(runtime, precision,
                                                                                              threads, trials=1))
    out = tmp_path / "profile.jsonl"
    result = CliRunner().invoke(prefill_profile.main, ["-m", "deconly-tiny", "-m", "mu-tiny", "-i", "64", "-n", "3",
                                                       "-t", "1", "--out", str(out), "--cache-dir", str(cache_dir)])
    assert result.exit_code == 0, result.output
    (line,) = [json.loads(text) for text in out.read_text().splitlines()]
    assert line["machine"]["id"] and line["ceiling"]["flops_per_s"] > 0
    assert [m["model"] for m in line["models"]] == ["deconly-tiny", "mu-tiny"]
    for model in line["models"]:
        assert len(model["walls_s"]) == 3
        assert 0 < model["product_s"] <= model["nodes_s"] <= model["wall_s"]
        assert model["nodes_s"] == pytest.approx(sum(model["by_type"].values()))
        assert model["gap_s"] == pytest.approx(model["wall_s"] - model["nodes_s"])
        counted = generation_flops(resolve_model(model["model"]).config, 64, 1)["first_token_flops"]
        assert model["product_flops"] == pytest.approx(counted, rel=0.05), model["products"]
        assert all(p["nodes"] >= 1 and p["flops_per_s"] > 0 for p in model["products"])
