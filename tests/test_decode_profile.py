"""The OpenVINO decode profile (bench/tools/decode_profile.py) on the tiny pair: the report's
structure, and node times (running means, see totals()) that add up to no more than the step's wall time."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

pytest.importorskip("openvino")

from slmbench.tools import decode_profile  # noqa: E402


def test_the_profile_of_each_step_fits_inside_its_wall_time(tmp_path, cache_dir, monkeypatch):
    from slmbench.host import roofline

    # the stored best would be measured over 512 MiB when none is stored: the spot kernels stand in
    monkeypatch.setattr(roofline, "host_bandwidth",
                        lambda threads, store: roofline.measure_bandwidth(threads, megabytes=16, trials=1))
    out = tmp_path / "profile.jsonl"
    result = CliRunner().invoke(decode_profile.main, ["-m", "deconly-tiny", "-m", "mu-tiny", "-i", "16", "-n", "8",
                                                      "-t", "1", "--bandwidth-mb", "16", "--out", str(out),
                                                      "--cache-dir", str(cache_dir)])
    assert result.exit_code == 0, result.output
    (line,) = [json.loads(text) for text in out.read_text().splitlines()]
    assert line["machine"]["id"] and line["environment"]["cpu"]
    assert [m["model"] for m in line["models"]] == ["deconly-tiny", "mu-tiny"]
    assert line["bandwidth"]["spot_bytes_per_s"] > 0
    for model in line["models"]:
        assert len(model["steps"]) == len(model["wall_s"]) == len(model["plain_wall_s"]) == 8
        assert 0 < sum(w["bytes"] for w in model["fc_weights"].values()) <= model["weight_bytes"]
        mean = model["mean"]
        assert mean["nodes_s"] == pytest.approx(sum(mean["groups"].values()))
        assert mean["nodes_s"] == pytest.approx(sum(mean["by_type"].values()))
        assert 0 < mean["nodes_s"] - mean["nodes_bound_s"] and mean["nodes_s"] <= mean["wall_s"]
        assert mean["gap_s"] == pytest.approx(mean["wall_s"] - mean["nodes_s"])
        assert mean["groups"]["matmul"] >= mean["fc_s"] > 0 and mean["fc_bytes_per_s"] > 0
        assert set(mean["fc_nodes"]) == set(model["fc_weights"])
        for step in model["steps"]:
            assert step["steps"] == 1 and step["nodes_s"] == pytest.approx(sum(step["groups"].values()))
        assert sum(p["nodes"] for p in model["fc_by_shape"]) == len(model["fc_weights"])
        assert model["summary"]["profiling_overhead"] > 0
    assert "FullyConnected nodes by weight shape" in result.output
