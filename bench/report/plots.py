"""Figures: pure functions from the report DataFrames (slmbench.report.frames) to PNG and SVG files.

Each figure function draws one figure, saves `<name>.png` and `<name>.svg` in the given folder and
returns the PNG path, or None when the frames hold nothing it could draw; `fn.draw(frame)` returns
the Figure unsaved (tests inspect it). One series is one value of the frames' `series` column, the
label analysis builds from every dimension that varies; one panel is one `platform`. Each series
keeps one (colour, marker, line style) in every panel and figure: encoder-decoder in blue shades,
decoder-only in orange, marker by runtime, dash by precision. Ratio charts give each ratio series
its own colour. Times are shown in ms or s, whichever reads better for the figure's range.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from slmbench.report.frames import DO, ED, PAPER_THROUGHPUT_RATIO, PAPER_TTFT_REDUCTION_PCT

_MARKERS = {"onnxruntime": "o", "openvino": "s", "torch": "^"}
_DASHES = {"fp32": "-", "int8": "--", "fp16": "-.", "int4": ":"}
_FAMILY_MAPS = {ED: "Blues", DO: "Oranges"}
# Series of ratio charts: tab10 without the blue and orange that mean a family and the red of the paper's line.
_SERIES_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_PAPER = "the paper's claim: 47% lower TTFT, 4.7x throughput"
# Applied per figure with rc_context: a report must not change the caller's matplotlib settings.
_RC = {
    "figure.dpi": 110,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 9,
    "axes.titlesize": 10,
    "legend.fontsize": 8,
    "svg.fonttype": "none",
}


def _styles(frame: pd.DataFrame) -> dict[str, tuple]:
    """series -> (colour, marker, linestyle), unique per series. Each series of a family gets its own
    shade, spread over the colour map; the order interleaves series sharing a marker and a dash, so
    that those, told apart by shade alone, sit far apart in shade."""
    import matplotlib

    rows = frame.drop_duplicates("series").sort_values("series")
    styles = {}
    for family, fam in rows.groupby(rows["family"].fillna(""), sort=False):
        cmap = matplotlib.colormaps[_FAMILY_MAPS.get(family, "Greys")]
        keys, seen = {}, {}
        for r in fam.itertuples():
            mark = (_MARKERS.get(r.runtime, "D"), _DASHES.get(r.precision, (0, (3, 1, 1, 1, 1, 1))))
            seen[str(mark)] = seen.get(str(mark), -1) + 1
            keys[r.series] = (seen[str(mark)], str(r.runtime), str(r.precision), r.series), mark
        order = sorted(keys, key=lambda s: keys[s][0])
        shades = np.linspace(0.92, 0.4, len(order)) if len(order) > 1 else [0.7]
        for series, shade in zip(order, shades, strict=True):
            styles[series] = (cmap(shade), *keys[series][1])
    return styles


def _ratio_colors(ratios: pd.DataFrame) -> dict[str, tuple]:
    """Ratio series -> a colour of its own; past _SERIES_COLORS, tab20 and tab20b without blue, orange, red."""
    import matplotlib

    names = sorted(ratios["series"].unique())
    palette = list(_SERIES_COLORS)
    if len(names) > len(palette):
        tab20 = [c for i, c in enumerate(matplotlib.colormaps["tab20"].colors) if i not in (0, 1, 2, 3, 6, 7)]
        palette = tab20 + list(matplotlib.colormaps["tab20b"].colors)
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def _figure(name: str, styles_of=_styles):
    """Decorator: `draw(frame, styles) -> Figure | None` becomes `fn(frame, out, styles=None) -> PNG | None`,
    with `fn.draw(frame, styles=None) -> Figure | None`; both draw under _RC without touching rcParams.
    draw_all passes one styles dict to every figure so a series looks the same in all of them."""

    def wrap(draw):
        @functools.wraps(draw)
        def figure(frame: pd.DataFrame, styles: dict | None = None):
            if frame is None or frame.empty:
                return None
            import matplotlib

            with matplotlib.rc_context(_RC):
                return draw(frame, styles or styles_of(frame))

        @functools.wraps(draw)
        def save(frame: pd.DataFrame, out: Path, styles: dict | None = None) -> Path | None:
            import matplotlib

            with matplotlib.rc_context(_RC):
                fig = figure(frame, styles)
                if fig is None:
                    return None
                out = Path(out)
                out.mkdir(parents=True, exist_ok=True)
                png = out / f"{name}.png"
                fig.savefig(png, dpi=150, bbox_inches="tight")
                fig.savefig(out / f"{name}.svg", bbox_inches="tight")
                return png

        save.draw = figure
        return save

    return wrap


def _time_unit(values) -> tuple[float, str]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    return (1.0, "s") if v.size and np.nanmax(v) >= 1.0 else (1e3, "ms")


def _grid(n: int, width: float = 5.2, height: float = 3.8):
    """A Figure (no pyplot: no global figure state) with n panels, up to 3 a row; spare axes hidden."""
    from matplotlib.figure import Figure

    cols = min(n, 3)
    rows = -(-n // cols)
    width = max(width, 7.5) if n == 1 else width
    fig = Figure(figsize=(width * cols, height * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    return fig, axes


def _legend(fig, axes, inside: int = 5) -> None:
    """Lay the figure out, then one legend entry per label: inside a lone panel with at most `inside`
    entries, else one legend under the whole figure, placed after tight_layout below the lowest
    x-axis label (bbox_inches="tight" keeps it in the file), with as many columns as fit its width."""
    seen: dict[str, object] = {}
    visible = [ax for ax in axes.flat if ax.get_visible()]
    for ax in visible:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    fig.tight_layout()
    if not seen:
        return
    if len(visible) == 1 and len(seen) <= inside:
        visible[0].legend(list(seen.values()), list(seen), loc="best", frameon=False)
        return
    per_entry = 0.7 + 0.055 * max(map(len, seen))  # inches: handle plus label at legend.fontsize 8
    ncol = max(1, min(len(seen), int(fig.get_figwidth() // per_entry)))
    fig.legend(list(seen.values()), list(seen), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol, frameon=False)


def _plain_log(axis, set_scale) -> None:
    """A log axis labelled 1, 2, 5, 10, ... rather than powers of ten."""
    from matplotlib import ticker

    set_scale("log")
    axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _log2_x(ax, values) -> None:
    ticks = sorted({int(v) for v in values})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks], rotation=45 if len(ticks) > 6 else 0)
    ax.minorticks_off()


def _shape_note(df: pd.DataFrame) -> str:
    outs = sorted(df["output_len"].unique())
    batches = sorted(df["batch"].unique())
    return f"{'/'.join(map(str, outs))} new tokens, batch {'/'.join(map(str, batches))}"


def _versus_input(configs, styles, metric: str, title: str, ylabel: str, time_metric: bool):
    if f"{metric}_median" not in configs:
        return None
    df = configs.dropna(subset=[f"{metric}_median"])
    if df.empty:
        return None
    platforms = sorted(df["platform"].unique())
    fig, axes = _grid(len(platforms))
    scale, unit = _time_unit(df[f"{metric}_median"]) if time_metric else (1.0, "")
    for ax, platform in zip(axes.flat, platforms, strict=False):
        sub = df[df["platform"] == platform]
        for series, s in sub.groupby("series", sort=True):
            s = s.sort_values("input_len")
            y = s[f"{metric}_median"] * scale
            lo = (s[f"{metric}_median"] - s[f"{metric}_ci95_low"]).clip(lower=0) * scale
            hi = (s[f"{metric}_ci95_high"] - s[f"{metric}_median"]).clip(lower=0) * scale
            color, marker, dash = styles[series]
            ax.errorbar(
                s["input_len"],
                y,
                yerr=[lo.fillna(0), hi.fillna(0)],
                color=color,
                marker=marker,
                linestyle=dash,
                capsize=3,
                markersize=5,
                linewidth=1.6,
                label=series,
            )
        _log2_x(ax, sub["input_len"])
        values = sub[f"{metric}_median"].dropna() * scale
        log_y = bool(len(values) and values.min() > 0 and values.max() / values.min() > 20)
        if log_y:
            _plain_log(ax.yaxis, ax.set_yscale)
        ax.set_title(f"{platform} ({_shape_note(sub)})")
        ax.set_xlabel("input length (tokens, log2 scale)")
        ax.set_ylabel((f"{ylabel} ({unit})" if unit else ylabel) + (", log scale" if log_y else ""))
    fig.suptitle(f"{title}\nencoder-decoder (blue) vs decoder-only (orange); median and 95% CI of the median", y=1.04)
    _legend(fig, axes)
    return fig


@_figure("ttft_vs_input")
def ttft_vs_input(configs: pd.DataFrame, styles: dict):
    return _versus_input(configs, styles, "ttft_s", "Time to first token vs input length", "TTFT", True)


@_figure("throughput_vs_input")
def throughput_vs_input(configs: pd.DataFrame, styles: dict):
    return _versus_input(
        configs, styles, "decode_tps", "Decode throughput vs input length", "decode throughput (tokens/s)", False
    )


REDUCTION_FLOOR = -100.0  # a TTFT "reduction" below -100% (twice as slow) is drawn clipped, value printed


def _bars_with_ci(ax, x, values, low, high, color, label, width, fmt: str, suffix: str = "", rotate=False):
    """Bars with CI whiskers and their value printed on them (upright when the bars are narrow)."""
    err = np.array([np.clip(values - low, 0, None), np.clip(high - values, 0, None)])
    err = np.nan_to_num(err) if np.isfinite(np.asarray(low, dtype=float)).any() else None
    ax.bar(x, values, width, yerr=err, color=color, edgecolor="black", linewidth=0.5, capsize=3, label=label)
    for xi, v in zip(x, values, strict=True):
        if np.isfinite(v):  # printed at the bar's base, clear of the CI caps and of a clipped axis
            ax.annotate(
                format(v, fmt) + suffix,
                (xi, 0),
                xytext=(0, 3 if v >= 0 else -3),
                textcoords="offset points",
                ha="center",
                va="bottom" if v >= 0 else "top",
                rotation=90 if rotate else 0,
                fontsize=7,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
            )


def _clip_reduction_axis(ax, lows) -> None:
    """Keep a TTFT-reduction axis readable: at most -100% below zero, and say so when clipped."""
    lows = np.asarray([v for v in lows if np.isfinite(v)])
    bottom, top = ax.get_ylim()
    if lows.size and lows.min() < REDUCTION_FLOOR:
        ax.set_ylim(REDUCTION_FLOOR * 1.1, max(top, 60))
        ax.text(
            0.01,
            0.99,
            "axis clipped at -100%; values are printed on the bars",
            transform=ax.transAxes,
            fontsize=7,
            color="dimgray",
            va="top",
        )
    else:
        ax.set_ylim(min(bottom, 0), max(top, 60))


_RATIO_PANELS = (
    ("ttft_reduction", "ttft_reduction_pct", PAPER_TTFT_REDUCTION_PCT, "TTFT reduction (%)", ".0f", "%"),
    ("throughput_ratio", "throughput_ratio", PAPER_THROUGHPUT_RATIO, "decode throughput ratio (x)", ".2f", "x"),
)


def _ratio_bars(ax, df: pd.DataFrame, keys: list[str], colors: dict, panel) -> list[tuple]:
    """One ratio metric as bars: a group per distinct `keys`, in it a bar per ratio series (its colour,
    labelled with it) with the bootstrap CI, the paper's claim as a line. Returns the groups in x order."""
    metric, value, paper, ylabel, fmt, suffix = panel
    groups = df.groupby(keys, sort=True)
    most = int(groups.size().max())
    width = 0.8 / most
    for g, (_, sub) in enumerate(groups):
        sub = sub.sort_values("series")
        for k, r in enumerate(sub.to_dict("records")):
            x = g + width * (k - (len(sub) - 1) / 2)
            _bars_with_ci(
                ax,
                [x],
                np.array([r[value]], dtype=float),
                np.array([r[f"{metric}_low"]], dtype=float),
                np.array([r[f"{metric}_high"]], dtype=float),
                colors[r["series"]],
                r["series"],
                width,
                fmt,
                suffix,
                rotate=most > 3,
            )
    ax.axhline(paper, color="crimson", linestyle="--", linewidth=1.2, label=_PAPER)
    ax.axhline(0 if metric == "ttft_reduction" else 1, color="black", linewidth=0.8)
    if metric == "ttft_reduction":
        _clip_reduction_axis(ax, df["ttft_reduction_low"])
    else:
        ax.set_ylim(0, max(ax.get_ylim()[1], paper * 1.15))
    ax.set_xticks(range(groups.ngroups))
    ax.set_ylabel(ylabel)
    return [key if isinstance(key, tuple) else (key,) for key in groups.groups]


def _shape_tick(i, o, b) -> str:
    return f"in {i}\nout {o}" + (f"\nb{b}" if b != 1 else "")


@_figure("speedup", _ratio_colors)
def speedup(ratios: pd.DataFrame, colors: dict):
    """TTFT reduction (%) and decode throughput ratio of encoder-decoder over decoder-only, per
    platform and shape, a bar per ratio series, with bootstrap 95% CIs from the repetitions."""
    from matplotlib.figure import Figure

    platforms = sorted(ratios["platform"].unique())
    bars = ratios.groupby("platform").size().max()
    fig = Figure(figsize=(max(7.5, 1.5 + 0.35 * bars) * len(platforms), 7.6))
    axes = fig.subplots(2, len(platforms), squeeze=False)
    for col, platform in enumerate(platforms):
        sub = ratios[ratios["platform"] == platform]
        for row, panel in enumerate(_RATIO_PANELS):
            ax = axes[row][col]
            shapes = _ratio_bars(ax, sub, ["input_len", "output_len", "batch"], colors, panel)
            ax.set_xticklabels([_shape_tick(*s) for s in shapes])
            ax.set_title(f"{platform}: {'lower TTFT' if row == 0 else 'higher decode throughput'} of encoder-decoder")
    fig.suptitle("Encoder-decoder over decoder-only, measured in the same run (median ratio, 95% bootstrap CI)", y=1.01)
    _legend(fig, axes)
    return fig


@_figure("ttft_breakdown")
def ttft_breakdown(reps: pd.DataFrame, styles: dict):
    """Where the time goes: the vision tower (vision models), encoder, first decoder step (the
    prefill for decoder-only), and the rest of the generation; medians over repetitions, a bar per
    series and shape."""
    from matplotlib.figure import Figure

    keys = ["platform", "series", "family", "runtime", "precision", "input_len", "output_len"]
    times = ["vision_s", "encoder_s", "first_step_s", "rest_s", "ttft_s"]
    if "vision_s" not in reps:  # frames of rows from before vision existed
        reps = reps.assign(vision_s=0.0)
    med = reps.groupby(keys, as_index=False, dropna=False)[times].median()
    platforms = sorted(med["platform"].unique())
    nbars = med.groupby("platform").size().max()
    fig = Figure(figsize=(12, 0.9 + 0.42 * nbars * len(platforms) + 0.6))
    axes = fig.subplots(len(platforms), 2, squeeze=False)
    parts = (
        *((("vision_s", "vision tower", "#c44e52"),) if med["vision_s"].any() else ()),
        ("encoder_s", "encoder", "#8172b3"),
        ("first_step_s", "first decoder step (prefill)", "#55a868"),
        ("rest_s", "rest of generation", "#bbbbbb"),
    )
    for row, platform in enumerate(platforms):
        sub = med[med["platform"] == platform].sort_values(
            ["input_len", "runtime", "precision", "family", "series"], ascending=[True, True, True, False, True]
        )
        # the series names the output length where it varies
        labels = [f"{r.series} · in {r.input_len}" + ("" if f"out {r.output_len}" in r.series
                                                      else f"/out {r.output_len}") for r in sub.itertuples()]
        y = np.arange(len(sub))
        for col, (keys, title) in enumerate(((parts[:-1], "time to first token"), (parts, "whole generation"))):
            ax = axes[row][col]
            scale, unit = _time_unit(sub[[k for k, _, _ in keys]].sum(axis=1))
            left = np.zeros(len(sub))
            for key, label, color in keys:
                v = sub[key].to_numpy() * scale
                ax.barh(y, v, left=left, color=color, edgecolor="black", linewidth=0.4, label=label)
                left += v
            ax.set_yticks(y)
            ax.set_yticklabels(labels if col == 0 else [""] * len(labels))
            ax.set_ylim(len(sub) - 0.5, -0.5)  # top to bottom, no empty rows
            ax.set_xlabel(f"time ({unit}, median over repetitions)")
            ax.set_title(f"{platform}: {title}")
    fig.suptitle("TTFT breakdown: (vision tower +) encoder + first decoder step = TTFT; the rest is the remaining "
                 "tokens", y=1.01)
    _legend(fig, axes)
    return fig


def _focus_shape(tokens: pd.DataFrame) -> pd.DataFrame:
    """Per platform, the largest input length measured for both families (else the largest)."""
    parts = []
    for _, sub in tokens.groupby("platform"):
        both = sub.groupby("input_len")["family"].nunique()
        lengths = both[both > 1].index if (both > 1).any() else both.index
        parts.append(sub[sub["input_len"] == max(lengths)])
    return pd.concat(parts, ignore_index=True)


def _panel_title(sub: pd.DataFrame) -> str:
    outs = "/".join(map(str, sorted(sub["output_len"].unique())))
    return f"{sub['platform'].iloc[0]}: input {sub['input_len'].iloc[0]}, {outs} new tokens"


@_figure("itl_cdf")
def itl_distribution(tokens: pd.DataFrame, styles: dict):
    """Empirical CDF of inter-token latency (tokens 2..N, every repetition) per series; a lone panel's
    legend also gives each median, several panels share one legend so the label is the series alone."""
    df = _focus_shape(tokens[tokens["position"] >= 2])
    if df.empty:
        return None
    platforms = sorted(df["platform"].unique())
    fig, axes = _grid(len(platforms))
    scale, unit = _time_unit(df["latency_s"])
    for ax, platform in zip(axes.flat, platforms, strict=False):
        sub = df[df["platform"] == platform]
        for series, s in sub.groupby("series", sort=True):
            x = np.sort(s["latency_s"].to_numpy() * scale)
            color, marker, dash = styles[series]
            ax.step(
                x,
                np.arange(1, len(x) + 1) / len(x),
                where="post",
                color=color,
                marker=marker,
                markevery=max(1, len(x) // 6),
                markersize=4,
                linestyle=dash,
                linewidth=1.6,
                label=series if len(platforms) > 1 else f"{series} (p50 {np.median(x):.3g} {unit})",
            )
        spread = sub["latency_s"]
        if spread.min() > 0 and spread.max() / spread.min() > 10:  # a long tail: log axis
            _plain_log(ax.xaxis, ax.set_xscale)
            unit_note = ", log scale"
        else:
            unit_note = ""
        ax.axhline(0.5, color="gray", linewidth=0.6, linestyle=":")
        ax.set_xlabel(f"inter-token latency ({unit}{unit_note})")
        ax.set_ylabel("fraction of tokens (0.5 = median)")
        ax.set_ylim(0, 1.02)
        ax.set_title(_panel_title(sub))
    fig.suptitle("Inter-token latency distribution\n(CDF over every decoded token and repetition)", y=1.04)
    _legend(fig, axes)
    return fig


@_figure("token_latency")
def token_latency(tokens: pd.DataFrame, styles: dict):
    """Latency of each generated token against its position (median over repetitions, with the
    10-90% band); token 1 is the TTFT and is left out so the decode steps stay readable."""
    df = _focus_shape(tokens[tokens["position"] >= 2])
    if df.empty:
        return None
    platforms = sorted(df["platform"].unique())
    fig, axes = _grid(len(platforms))
    scale, unit = _time_unit(df.groupby(["row", "position"])["latency_s"].median())
    for ax, platform in zip(axes.flat, platforms, strict=False):
        sub = df[df["platform"] == platform]
        for series, s in sub.groupby("series", sort=True):
            g = s.groupby("position")["latency_s"]
            pos = np.asarray(g.median().index)
            color, marker, dash = styles[series]
            ax.fill_between(pos, g.quantile(0.1) * scale, g.quantile(0.9) * scale, color=color, alpha=0.2, linewidth=0)
            ax.plot(
                pos,
                g.median() * scale,
                color=color,
                marker=marker,
                markevery=max(1, len(pos) // 6),
                markersize=4,
                linestyle=dash,
                linewidth=1.4,
                label=series,
            )
        ax.set_xlabel("generated token position")
        ax.set_ylabel(f"latency of the token ({unit})")
        ax.set_title(_panel_title(sub))
        ax.set_ylim(bottom=0)
    fig.suptitle(
        "Per-token latency vs position\n(median over repetitions, 10-90% band; token 1 = TTFT not shown)", y=1.04
    )
    _legend(fig, axes)
    return fig


@_figure("claims", _ratio_colors)
def claims(ratios: pd.DataFrame, colors: dict):
    """Measured TTFT reduction and throughput ratio beside the paper's 47% and 4.7x: every platform
    and shape on one axis, a bar per ratio series in the colours of the speedup figure."""
    from matplotlib.figure import Figure

    keys = ["platform", "input_len", "output_len", "batch"]
    bars = len(ratios.drop_duplicates(keys)) * ratios.groupby(keys).size().max()
    fig = Figure(figsize=(max(9.0, 1.5 + 0.45 * bars), 8.6))
    axes = fig.subplots(2, 1, squeeze=False)
    for ax, panel in zip(axes[:, 0], _RATIO_PANELS, strict=True):
        groups = _ratio_bars(ax, ratios, keys, colors, panel)
        # "cpu @ machine" on two lines: a machine name is wider than the group under it
        ax.set_xticklabels([f"{p.replace(' @ ', chr(10) + '@ ')}\n{_shape_tick(i, o, b)}" for p, i, o, b in groups])
        ax.set_title(
            "TTFT reduction of encoder-decoder"
            if panel[0] == "ttft_reduction"
            else "Decode throughput, encoder-decoder / decoder-only"
        )
    fig.suptitle("The paper's claims (Qualcomm Hexagon NPU) beside what was measured here (95% bootstrap CIs)", y=1.02)
    _legend(fig, axes)
    return fig


_CROSSOVER_PANELS = (  # column, CI columns, title, whether a value above 1 favours the encoder-decoder
    ("ttft_ratio", None, "TTFT", False),
    ("throughput_ratio", ("throughput_ratio_low", "throughput_ratio_high"), "decode throughput", True),
    ("e2e_ratio", ("e2e_ratio_low", "e2e_ratio_high"), "end-to-end latency", False),
)


def _crossover_grids(ratios: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) of every platform and series measured over at least 2 input and 2 output lengths."""
    out = []
    for (platform, series), rows in ratios.groupby(["platform", "series"]):
        if rows["input_len"].nunique() >= 2 and rows["output_len"].nunique() >= 2:
            out.append((f"{platform}: {series}", rows))
    return out


@_figure("crossover", lambda frame: {})
def crossover(ratios: pd.DataFrame, styles: dict):
    """Where the encoder-decoder's advantage grows, shrinks or reverses: encoder-decoder /
    decoder-only over input x output lengths, for TTFT, decode throughput and end-to-end latency.
    Blue favours the encoder-decoder, red the decoder-only; a hatched cell's 95% CI includes 1."""
    import matplotlib
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    grids = _crossover_grids(ratios)
    if not grids:
        return None
    fig = Figure(figsize=(15, 4.4 * len(grids)))
    axes = fig.subplots(len(grids), 3, squeeze=False)
    for row_axes, (title, rows) in zip(axes, grids, strict=True):
        ins, outs = sorted(rows["input_len"].unique()), sorted(rows["output_len"].unique())
        for ax, (col, ci, name, higher_favours) in zip(row_axes, _CROSSOVER_PANELS, strict=True):
            low_col, high_col = ci or ("ttft_ratio_low", "ttft_ratio_high")
            if ci is None:  # TTFT's CI is kept as a reduction: ratio = 1 - reduction / 100
                rows = rows.assign(ttft_ratio_low=1 - rows["ttft_reduction_high"] / 100,
                                   ttft_ratio_high=1 - rows["ttft_reduction_low"] / 100)
            cell = {(r.output_len, r.input_len): r for r in rows.itertuples()}
            grid = np.full((len(outs), len(ins)), np.nan)
            for (o, i), r in cell.items():
                grid[outs.index(o), ins.index(i)] = np.log2(getattr(r, col))
            span = max(0.1, float(np.nanmax(np.abs(grid))))
            cmap = matplotlib.colormaps["RdBu" if higher_favours else "RdBu_r"]
            image = ax.imshow(grid, cmap=cmap, norm=TwoSlopeNorm(0.0, -span, span), origin="lower", aspect="auto")
            for (o, i), r in cell.items():
                y, x = outs.index(o), ins.index(i)
                crosses = getattr(r, low_col) <= 1 <= getattr(r, high_col)
                dark = abs(grid[y, x]) > 0.6 * span  # white on the deep ends of the colour scale
                ax.text(x, y, f"{getattr(r, col):.2f}" + ("\n(CI has 1)" if crosses else ""), ha="center",
                        va="center", fontsize=8, color="white" if dark else "black")
                if crosses:
                    ax.add_patch(matplotlib.patches.Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, hatch="//",
                                                              edgecolor="0.35", linewidth=0))
            ax.grid(False)
            ax.set_xticks(range(len(ins)), [str(i) for i in ins])
            ax.set_yticks(range(len(outs)), [str(o) for o in outs])
            ax.set_xlabel("input tokens")
            ax.set_ylabel("output tokens")
            ax.set_title(f"{title}\n{name}, encoder-decoder / decoder-only")
            bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
            bar.set_label("log2 of the ratio")
    fig.suptitle("Crossover grid: blue favours the encoder-decoder, red the decoder-only; hatched cells' 95% "
                 "CI includes 1", y=1.0)
    fig.tight_layout()
    return fig


FIGURES = {
    "ttft_vs_input": ("configs", ttft_vs_input),
    "throughput_vs_input": ("configs", throughput_vs_input),
    "speedup": ("ratios", speedup),
    "ttft_breakdown": ("reps", ttft_breakdown),
    "itl_cdf": ("tokens", itl_distribution),
    "token_latency": ("tokens", token_latency),
    "claims": ("ratios", claims),
    "crossover": ("ratios", crossover),
}


def draw_all(data, out: Path) -> dict[str, Path | None]:
    """Every figure from a slmbench.report.frames.ReportData; None for one with nothing to draw. The
    configuration figures share one style per series, drawn from all three frames that carry them."""
    cols = ["series", "family", "runtime", "precision"]
    frames = [f[cols] for f in (data.configs, data.reps, data.tokens) if not f.empty]
    shared = _styles(pd.concat(frames, ignore_index=True)) if frames else {}
    return {
        name: fn(getattr(data, frame), Path(out), None if frame == "ratios" else shared)
        for name, (frame, fn) in FIGURES.items()
    }
