"""Reports: every figure from real rows of tiny models, a Markdown file that embeds them, ratio CIs
from the raw repetitions, failed rows listed but not plotted, and several hosts merged."""

import copy
import json

import numpy as np
import pytest
from click.testing import CliRunner

from slmbench.cli import cli
from slmbench.core.stats import ratio_ci
from slmbench.host.environment import machine_identity
from slmbench.report.frames import build, rep_metrics
from slmbench.report.markdown import build_report
from slmbench.report.plots import FIGURES
from slmbench.results import append_row, read_rows


@pytest.fixture(scope="module")
def measured(tmp_path_factory, cache_dir):
    """Real rows: the tiny pair measured interleaved at two input lengths, plus one failed row."""
    from slmbench.config import RunSettings, plan
    from slmbench.core.benchmark import run_benchmark
    from slmbench.models import resolve_model
    from slmbench.sweep.files import parse_sweep
    from slmbench.sweep.run import failed_rows

    folder = tmp_path_factory.mktemp("report")
    results = folder / "rows.jsonl"
    specs = [resolve_model("mu-tiny"), resolve_model("deconly-tiny")]
    for n in (16, 64):
        settings = RunSettings(input_len=n, output_len=8, warmup=0, min_reps=4, min_time_s=0.0)
        run_benchmark(
            plan([s.name for s in specs], "cpu", ["onnxruntime"], "fp32", settings, threads=1),
            results=results,
            cache_dir=cache_dir,
            log=lambda msg: None,
        )
    sweep = parse_sweep(
        {"name": "r", "grid": {"models": ["mu-tiny", "deconly-tiny"], "input_lens": [32], "output_lens": [8]}}
    )
    config = sweep.configurations()[0][0]
    for row in failed_rows(config, "crashed: the process was killed by SIGABRT", {"kind": "crash"}):
        append_row(results, row)
    return results


def test_report_writes_every_figure_and_a_markdown_file_that_embeds_them(measured, tmp_path):
    built = build_report([measured], tmp_path / "out")
    # one output length was measured: no input x output grid for the crossover figure
    assert set(built.figures) == set(FIGURES) - {"crossover"} and built.not_drawn == ["crossover"]
    text = built.markdown.read_text()
    for name, png in built.figures.items():
        assert png.stat().st_size > 10_000, name
        svg = png.with_suffix(".svg")
        assert svg.stat().st_size > 10_000 and svg.read_text().lstrip().startswith("<?xml"), name
        assert f"![{name}](figures/{png.name})" in text
        assert f"(figures/{png.stem}.svg)" in text
    assert "47%" in text and "4.7x" in text
    assert "## Failed configurations" in text and "killed by SIGABRT" in text
    assert "mu-tiny vs deconly-tiny" in text


def test_failed_rows_are_listed_not_plotted(measured):
    data = build(read_rows([measured]))
    assert len(data.failed) == 2 and set(data.failed["input_len"]) == {32}
    assert set(data.configs["input_len"]) == {16, 64} and set(data.reps["input_len"]) == {16, 64}
    assert set(data.ratios["input_len"]) == {16, 64}


def test_per_repetition_metrics_agree_with_the_row_summary(measured):
    for row in read_rows([measured]):
        if row["status"] != "ok":
            continue
        reps = rep_metrics(row)
        assert len(reps) == row["metrics"]["ttft_s"]["count"]
        assert np.median(reps["ttft_s"]) == pytest.approx(row["metrics"]["ttft_s"]["median"], rel=1e-9)
        assert np.median(reps["tpot_s"]) == pytest.approx(row["metrics"]["tpot_s"]["median"], rel=1e-9)
        breakdown = reps["encoder_s"] + reps["first_step_s"] + reps["rest_s"]
        assert np.allclose(breakdown, reps["e2e_s"])


def test_ratios_come_from_the_pair_of_the_same_run_with_a_ci_around_the_point(measured):
    rows = read_rows([measured])
    data = build(rows)
    for r in data.ratios.itertuples():
        assert r.ttft_reduction_low <= r.ttft_reduction_pct <= r.ttft_reduction_high
        assert r.throughput_ratio_low <= r.throughput_ratio <= r.throughput_ratio_high
        ed = next(x for x in rows if x.get("group") == r.group and x["model"] == "mu-tiny")
        do = next(x for x in rows if x.get("group") == r.group and x["model"] == "deconly-tiny")
        expected = 1 - ed["metrics"]["ttft_s"]["median"] / do["metrics"]["ttft_s"]["median"]
        assert r.ttft_reduction_pct == pytest.approx(100 * expected)


def test_ratio_ci_covers_a_known_ratio():
    rng = np.random.default_rng(1)
    a = rng.normal(2.0, 0.05, 40)
    b = rng.normal(1.0, 0.025, 40)
    point, lo, hi = ratio_ci(a, b)
    assert lo < 2.0 < hi and lo <= point <= hi and hi - lo < 0.2
    assert np.isnan(ratio_ci([1.0], [1.0])[1])


def test_several_hosts_merge_into_one_report_with_a_panel_each(measured, tmp_path):
    other = tmp_path / "laptop.jsonl"
    for row in read_rows([measured]):
        row = copy.deepcopy(row)
        row.pop("_source")
        row["environment"]["host"] = "laptop"
        row["machine"] = machine_identity(row["environment"])
        row["group"] = (row.get("group") or "") + "-laptop"
        other.write_text((other.read_text() if other.exists() else "") + json.dumps(row) + "\n")
    built = build_report([measured, other], tmp_path / "out")
    data = built.data
    assert set(data.machines["host"]) >= {"laptop"} and len(data.machines) == 2
    assert set(data.configs["platform"]) == {f"cpu @ {m}" for m in data.machines["machine"]}
    assert len(data.ratios) == 4  # each machine's pairs stay its own
    text = built.markdown.read_text()
    assert "## Machines: which machine measured what" in text and "| laptop |" in text


def test_cli_report_prints_tables_and_writes_the_report(measured, tmp_path):
    result = CliRunner().invoke(
        cli, ["report", str(measured), "--out", str(tmp_path / "o")], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "encoder-decoder vs decoder-only" in result.output and "failed configurations" in result.output
    assert (tmp_path / "o" / "report.md").exists() and (tmp_path / "o" / "figures" / "claims.png").exists()


def test_cli_report_without_rows_is_one_line_exit_2(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "no result rows" in result.output
    missing = CliRunner().invoke(cli, ["report", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and "no results at" in missing.output


def test_prefill_rate_is_fitted_from_ttft_against_input_length():
    import pandas as pd

    from slmbench.report.frames import ReportData
    from slmbench.report.markdown import prefill_rate_rows

    # TTFT = 0.2 s + input / 400 tok/s, measured at three lengths
    configs = pd.DataFrame({"model": "m", "series": "m", "runtime": "onnxruntime", "platform": "cpu",
                            "precision": "fp32",
                            "batch": 1, "input_len": [256, 512, 1024],
                            "ttft_s_median": [0.2 + n / 400 for n in (256, 512, 1024)]})
    empty = pd.DataFrame()
    data = ReportData(configs, empty, empty, empty, empty, empty, [], [])
    row = prefill_rate_rows(data).iloc[0]
    assert row["prefill tok/s"] == "400" and row["fixed"] == "+200 ms" and row["R²"] == "1.000"
    assert prefill_rate_rows(ReportData(configs.iloc[:2], empty, empty, empty, empty, empty, [], [])).empty


def test_a_fraction_above_the_ceiling_is_never_printed_without_saying_why():
    import pandas as pd

    from slmbench.report.frames import ReportData
    from slmbench.report.markdown import roofline_rows

    roof = {"bytes_per_token": 1.35e9, "read_bandwidth_bytes_per_s": 26.5e9, "ceiling_tokens_per_s": 19.7}
    rows = [{"model": "m", "runtime": "onnxruntime", "precision": "fp32", "input_len": 512, "output_len": 128,
             "roofline": {**roof, "fraction_of_ceiling": f}} for f in (0.81, 1.96)]
    empty = pd.DataFrame()
    data = ReportData(pd.DataFrame({"platform": ["cpu", "cpu"]}), empty, empty, empty, empty, empty, rows, [])
    shown = list(roofline_rows(data)["of ceiling"])
    assert shown[0] == "81%" and shown[1].startswith("196% (above the ceiling") and "no bound" in shown[1]


def test_the_claims_add_computed_flops_and_memory_and_the_measured_load_memory(measured):
    from slmbench.models import get_preset
    from slmbench.models.cost import generation_cost, pair_ratios
    from slmbench.report.markdown import cost_claims

    data = build(read_rows([measured]))
    (line,) = cost_claims(data)
    a, b = get_preset("mu-tiny"), get_preset("deconly-tiny")
    flops = sorted(pair_ratios(generation_cost(a, n, 8), generation_cost(b, n, 8))["generation_flops"]
                   for n in (16, 64))
    assert line.startswith("**mu-tiny vs deconly-tiny, fp32** (computed at 2 measured shape(s), input 16-64")
    assert f"generation FLOPs {flops[0]:.2f}-{flops[1]:.2f}x of the decoder-only's (paper: 22% fewer" in line
    assert "paper: 11-16% less" in line and "measured memory (what loading added" in line
    assert "with onnxruntime on cpu (2 run(s))" in line  # per machine and runtime
