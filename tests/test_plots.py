"""Figures tell every series apart: synthetic report frames in which precision, OpenVINO mode, threads
or the machine vary; each figure must give every series a legend entry of its own and a style no other
series has, write PNG and SVG, and leave matplotlib's global settings alone."""

import itertools
import types

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.container import BarContainer, ErrorbarContainer

from slmbench.report import plots

ED, DO = "encoder-decoder", "decoder-only"
PAIR = {"mu-330m": ED, "deconly-330m": DO}
INPUTS = (64, 256, 1024)
DIMS = ("runtime", "precision", "mode", "threads")


def _label(head: str, spec: dict, varying: list[str]) -> str:
    return " · ".join([head] + [str(spec[d]) if d != "threads" else f"{spec[d]} threads" for d in varying])


def _frames(platforms, **grid) -> types.SimpleNamespace:
    """configs, reps, tokens and ratios as analysis builds them: the pair measured at every
    combination of `grid` (runtime, precision, mode, threads) and input length, on every platform."""
    grid = {"runtime": ["onnxruntime"], "precision": ["fp32"], "mode": ["-"], "threads": [1]} | grid
    varying = [d for d in DIMS if len(grid[d]) > 1]
    rng = np.random.default_rng(0)
    configs, reps, tokens, ratios = [], [], [], []
    for p, platform in enumerate(platforms):
        for k, values in enumerate(itertools.product(*(grid[d] for d in DIMS))):
            spec = dict(zip(DIMS, values, strict=True))
            ttft = {}
            for model, family in PAIR.items():
                for n in INPUTS:
                    row = len(configs)
                    t = (0.01 if family == ED else 0.02) * n / 64 * (1 + 0.1 * k + 0.2 * p)
                    ttft[model, n] = t
                    ident = {
                        "row": row,
                        "model": model,
                        "family": family,
                        "platform": platform,
                        "series": _label(model, spec, varying),
                        "batch": 1,
                        "input_len": n,
                        "output_len": 16,
                        **spec,
                    }
                    configs.append(
                        ident
                        | {"ttft_s_median": t, "ttft_s_ci95_low": 0.9 * t, "ttft_s_ci95_high": 1.1 * t}
                        | {"decode_tps_median": 50 / t, "decode_tps_ci95_low": 45 / t, "decode_tps_ci95_high": 55 / t}
                    )
                    for rep in range(3):
                        enc = 0.4 * t if family == ED else 0.0
                        reps.append(ident | {"rep": rep, "encoder_s": enc, "first_step_s": t - enc, "rest_s": 5 * t})
                        reps[-1]["ttft_s"] = t
                        for pos in range(1, 17):
                            tokens.append(ident | {"rep": rep, "position": pos, "latency_s": t * rng.uniform(0.2, 0.4)})
            for n in INPUTS:
                ratio = ttft["mu-330m", n] / ttft["deconly-330m", n]
                ratios.append(
                    {
                        "encoder_decoder": "mu-330m",
                        "decoder_only": "deconly-330m",
                        "platform": platform,
                        "series": _label("mu-330m vs deconly-330m", spec, varying),
                        "batch": 1,
                        "input_len": n,
                        "output_len": 16,
                        **spec,
                        "ttft_reduction_pct": 100 * (1 - ratio),
                        "ttft_reduction_low": 100 * (1 - ratio) - 5,
                        "ttft_reduction_high": 100 * (1 - ratio) + 5,
                        "throughput_ratio": 1.5 + 0.1 * k,
                        "throughput_ratio_low": 1.4 + 0.1 * k,
                        "throughput_ratio_high": 1.6 + 0.1 * k,
                    }
                )
    return types.SimpleNamespace(
        configs=pd.DataFrame(configs), reps=pd.DataFrame(reps), tokens=pd.DataFrame(tokens), ratios=pd.DataFrame(ratios)
    )


CASES = {
    "precisions": lambda: _frames(["cpu"], precision=["fp32", "int8"]),
    "openvino_modes": lambda: _frames(["npu"], runtime=["openvino"], mode=["static", "stateful"]),
    "many_series": lambda: _frames(
        ["cpu"], runtime=["onnxruntime", "openvino"], precision=["fp32", "int8"], threads=[1, 4]
    ),
    "two_platforms": lambda: _frames(["cpu @ host-a", "cpu @ host-b"], precision=["fp32", "int8"]),
}


def _legend_labels(fig) -> list[str]:
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def _series_styles(fig) -> dict[str, set]:
    """label -> every (colour, marker, linestyle) its lines or bars are drawn with, over all panels."""
    out: dict[str, set] = {}
    for ax in fig.axes:
        for c in ax.containers:
            if isinstance(c, ErrorbarContainer) and c.lines[0] is not None:  # not a bar's whiskers
                line = c.lines[0]
                out.setdefault(c.get_label(), set()).add(
                    (to_rgba(line.get_color()), line.get_marker(), line.get_linestyle())
                )
            elif isinstance(c, BarContainer) and not c.get_label().startswith("_"):
                out.setdefault(c.get_label(), set()).add((to_rgba(c.patches[0].get_facecolor()), None, None))
        for line in ax.get_lines():
            if not line.get_label().startswith("_"):
                out.setdefault(line.get_label().split(" (p50")[0], set()).add(
                    (to_rgba(line.get_color()), line.get_marker(), line.get_linestyle())
                )
    out.pop(plots._PAPER, None)
    return out


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", [n for n in plots.FIGURES if n != "crossover"])  # a grid, tested on its own
def test_every_series_has_its_own_legend_entry_and_style(case, name, tmp_path):
    data = CASES[case]()
    frame_name, fn = plots.FIGURES[name]
    frame = getattr(data, frame_name)
    png = fn(frame, tmp_path)
    assert png == tmp_path / f"{name}.png" and png.stat().st_size > 10_000
    assert (tmp_path / f"{name}.svg").read_text().lstrip().startswith("<?xml")

    fig = fn.draw(frame)
    labels = _legend_labels(fig)
    assert len(labels) == len(set(labels)), labels
    series = set(frame["series"])
    if name == "ttft_breakdown":  # bars are coloured by part; each bar is named by its series and shape
        ticks = [[t.get_text() for t in ax.get_yticklabels() if t.get_text()] for ax in fig.axes]
        assert all(len(t) == len(set(t)) for t in ticks), ticks
        shapes = {f"{r.series} · in {r.input_len}/out {r.output_len}" for r in frame.itertuples()}
        assert set().union(*ticks) == shapes
        assert set(labels) == {"encoder", "first decoder step (prefill)", "rest of generation"}
        return
    assert {label.split(" (p50")[0] for label in labels} >= series
    styles = _series_styles(fig)
    assert set(styles) == series
    assert all(len(s) == 1 for s in styles.values()), styles  # one series, one look, in every panel
    looks = [next(iter(s)) for s in styles.values()]
    assert len(set(looks)) == len(looks), styles  # no two series look alike


def test_the_same_series_looks_the_same_in_every_figure(tmp_path):
    data = CASES["many_series"]()
    shared = plots._styles(pd.concat([data.configs, data.tokens]))
    figs = [plots.ttft_vs_input.draw(data.configs, shared), plots.token_latency.draw(data.tokens, shared)]
    a, b = (_series_styles(f) for f in figs)
    assert a == b and len(a) == 16


def test_families_keep_their_colours():
    styles = plots._styles(CASES["many_series"]().configs)
    for series, (color, _, _) in styles.items():
        r, _, b, _ = color
        assert (b > r) if series.startswith("mu-") else (r > b), series


def test_ratio_series_never_share_a_colour_past_the_palette():
    ratios = pd.DataFrame({"series": [f"pair {i}" for i in range(20)]})
    colors = plots._ratio_colors(ratios)
    assert len(set(colors.values())) == 20


def test_drawing_leaves_rcparams_alone(tmp_path):
    before = {k: v for k, v in matplotlib.rcParams.items() if k != "backend"}
    written = plots.draw_all(CASES["two_platforms"](), tmp_path)
    assert written.pop("crossover") is None  # one output length: no grid to draw
    assert all(png is not None and png.exists() for png in written.values()), written
    assert {k: v for k, v in matplotlib.rcParams.items() if k != "backend"} == before


def test_empty_frames_draw_nothing(tmp_path):
    empty = types.SimpleNamespace(
        configs=pd.DataFrame(), reps=pd.DataFrame(), tokens=pd.DataFrame(), ratios=pd.DataFrame()
    )
    assert plots.draw_all(empty, tmp_path) == dict.fromkeys(plots.FIGURES)


def _grid(crossing: set) -> pd.DataFrame:
    """A 2 x 2 crossover grid of one pair; cells in `crossing` have a throughput CI that includes 1."""
    rows = []
    for i, o in itertools.product((64, 256), (16, 64)):
        x = 1.0 if (i, o) in crossing else 2.0 + i / 256
        rows.append({"platform": "cpu", "series": "mu-330m vs deconly-330m", "input_len": i, "output_len": o,
                     "batch": 1, "ttft_ratio": 0.6, "ttft_reduction_low": 30.0, "ttft_reduction_high": 50.0,
                     "throughput_ratio": x, "throughput_ratio_low": x - 0.2, "throughput_ratio_high": x + 0.2,
                     "e2e_ratio": 0.5, "e2e_ratio_low": 0.45, "e2e_ratio_high": 0.55})
    return pd.DataFrame(rows)


def test_the_crossover_grid_marks_every_cell_whose_ci_includes_1(tmp_path):
    from matplotlib.patches import Rectangle

    fig = plots.crossover.draw(_grid({(64, 64)}))
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 3 and all(ax.images[0].get_array().shape == (2, 2) for ax in panels)
    hatched = [[p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()] for ax in panels]
    assert [len(h) for h in hatched] == [0, 1, 0]  # only the throughput cell at 64 in / 64 out
    assert sum("(CI has 1)" in t.get_text() for t in panels[1].texts) == 1
    assert plots.crossover(_grid(set()), tmp_path).exists()
    one_output = _grid(set()).query("output_len == 16")
    assert plots.crossover(one_output, tmp_path) is None
