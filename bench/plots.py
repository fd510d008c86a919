"""Figures: pure functions from the report DataFrames (slmbench.analysis) to PNG and SVG files.

Each function draws one figure, saves `<name>.png` and `<name>.svg` in the given folder and
returns the PNG path, or None when the frames hold nothing it could draw. Encoder-decoder series
are blue, decoder-only orange; the runtime sets the marker and line style. Times are shown in
ms or s, whichever reads better for the figure's range.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from slmbench.analysis import DO, ED, PAPER_THROUGHPUT_RATIO, PAPER_TTFT_REDUCTION_PCT

_MARKERS = {"onnxruntime": "o", "openvino": "s", "torch": "^"}
_LINES = {"onnxruntime": "-", "openvino": "--", "torch": ":"}
_FAMILY_MAPS = {ED: "Blues", DO: "Oranges"}
# Series of ratio charts (runtime / pair): tab10 without the blue and orange that mean a family.
_SERIES_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
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
    )
    return plt


def _save(fig, out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{name}.png"
    fig.savefig(png, dpi=150, bbox_inches="tight")
    fig.savefig(out / f"{name}.svg", bbox_inches="tight")
    _plt().close(fig)
    return png


def _time_unit(values) -> tuple[float, str]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    return (1.0, "s") if v.size and np.nanmax(v) >= 1.0 else (1e3, "ms")


def _colors(models: list[str], families: dict[str, str]) -> dict[str, tuple]:
    import matplotlib

    out = {}
    for family, cmap in _FAMILY_MAPS.items():
        names = sorted(m for m in models if families.get(m) == family)
        shades = np.linspace(0.85, 0.5, len(names)) if len(names) > 1 else [0.7]
        for name, shade in zip(names, shades, strict=True):
            out[name] = matplotlib.colormaps[cmap](shade)
    for m in models:
        out.setdefault(m, (0.4, 0.4, 0.4, 1.0))
    return out


def _grid(plt, n: int, width: float = 5.2, height: float = 3.8, rows_per: int = 1, sharey=False):
    cols = min(n, 3)
    rows = -(-n // cols)
    width = max(width, 7.5) if n == 1 else width
    fig, axes = plt.subplots(
        rows * rows_per, cols, figsize=(width * cols, height * rows * rows_per), squeeze=False, sharey=sharey
    )
    return fig, axes


def _plain_log(axis, set_scale) -> None:
    """A log axis labelled 1, 2, 5, 10, ... rather than powers of ten."""
    from matplotlib import ticker

    set_scale("log")
    axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _series_label(model: str, runtime: str, precision: str, many_precisions: bool) -> str:
    return f"{model} · {runtime}" + (f" · {precision}" if many_precisions else "")


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


def _versus_input(
    configs: pd.DataFrame, out: Path, name: str, metric: str, title: str, ylabel: str, time_metric: bool
) -> Path | None:
    if configs.empty or f"{metric}_median" not in configs:
        return None
    df = configs.dropna(subset=[f"{metric}_median"])
    if df.empty:
        return None
    plt = _plt()
    platforms = sorted(df["platform"].unique())
    fig, axes = _grid(plt, len(platforms))
    scale, unit = _time_unit(df[f"{metric}_median"]) if time_metric else (1.0, "")
    colors = _colors(sorted(df["model"].unique()), dict(zip(df["model"], df["family"], strict=True)))
    many_prec = df["precision"].nunique() > 1
    for ax, platform in zip(axes.flat, platforms, strict=False):
        sub = df[df["platform"] == platform]
        for (model, runtime, precision, output_len, _batch), s in sub.groupby(
            ["model", "runtime", "precision", "output_len", "batch"], sort=True
        ):
            s = s.sort_values("input_len")
            y = s[f"{metric}_median"] * scale
            lo = (s[f"{metric}_median"] - s[f"{metric}_ci95_low"]).clip(lower=0) * scale
            hi = (s[f"{metric}_ci95_high"] - s[f"{metric}_median"]).clip(lower=0) * scale
            label = _series_label(model, runtime, precision, many_prec)
            if s["output_len"].nunique() and sub["output_len"].nunique() > 1:
                label += f" · out {output_len}"
            ax.errorbar(
                s["input_len"],
                y,
                yerr=[lo.fillna(0), hi.fillna(0)],
                color=colors[model],
                marker=_MARKERS.get(runtime, "D"),
                linestyle=_LINES.get(runtime, "-."),
                capsize=3,
                markersize=5,
                linewidth=1.6,
                label=label,
            )
        _log2_x(ax, sub["input_len"])
        values = sub[f"{metric}_median"].dropna() * scale
        log_y = bool(len(values) and values.min() > 0 and values.max() / values.min() > 20)
        if log_y:
            _plain_log(ax.yaxis, ax.set_yscale)
        ax.set_title(f"{platform} ({_shape_note(sub)})")
        ax.set_xlabel("input length (tokens, log2 scale)")
        ax.set_ylabel((f"{ylabel} ({unit})" if unit else ylabel) + (", log scale" if log_y else ""))
        ax.legend(loc="best", frameon=False)
    for ax in list(axes.flat)[len(platforms) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"{title}\nencoder-decoder (blue) vs decoder-only (orange); median and 95% CI of the median", y=1.04
    )
    fig.tight_layout()
    return _save(fig, out, name)


def ttft_vs_input(configs: pd.DataFrame, out: Path) -> Path | None:
    return _versus_input(
        configs, out, "ttft_vs_input", "ttft_s", "Time to first token vs input length", "TTFT", True
    )


def throughput_vs_input(configs: pd.DataFrame, out: Path) -> Path | None:
    return _versus_input(
        configs,
        out,
        "throughput_vs_input",
        "decode_tps",
        "Decode throughput vs input length",
        "decode throughput (tokens/s)",
        False,
    )


REDUCTION_FLOOR = -100.0  # a TTFT "reduction" below -100% (twice as slow) is drawn clipped, value printed


def _bars_with_ci(ax, x, values, low, high, color, label, width, fmt: str, hatch=None, suffix: str = ""):
    """Bars with CI whiskers and their value printed on them."""
    err = np.array([np.clip(values - low, 0, None), np.clip(high - values, 0, None)])
    err = np.nan_to_num(err) if np.isfinite(np.asarray(low, dtype=float)).any() else None
    ax.bar(
        x,
        values,
        width,
        yerr=err,
        color=color,
        edgecolor="black",
        linewidth=0.5,
        capsize=3,
        label=label,
        hatch=hatch,
    )
    for xi, v in zip(x, values, strict=True):
        if np.isfinite(v):  # printed at the bar's base, clear of the CI caps and of a clipped axis
            ax.annotate(
                format(v, fmt) + suffix,
                (xi, 0),
                xytext=(0, 3 if v >= 0 else -3),
                textcoords="offset points",
                ha="center",
                va="bottom" if v >= 0 else "top",
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


def speedup(ratios: pd.DataFrame, out: Path) -> Path | None:
    """TTFT reduction (%) and decode throughput ratio of encoder-decoder over decoder-only, per
    platform and shape, with bootstrap 95% CIs from the repetitions."""
    if ratios.empty:
        return None
    plt = _plt()
    platforms = sorted(ratios["platform"].unique())
    per_panel = max(7.5, 1.5 + 1.1 * ratios.groupby("platform").size().max())
    fig, axes = plt.subplots(2, len(platforms), figsize=(per_panel * len(platforms), 7.6), squeeze=False)
    everywhere = sorted(
        {(r.runtime, r.precision, r.encoder_decoder, r.decoder_only) for r in ratios.itertuples()}
    )
    color = {series: _SERIES_COLORS[i % len(_SERIES_COLORS)] for i, series in enumerate(everywhere)}
    for col, platform in enumerate(platforms):
        sub = ratios[ratios["platform"] == platform].sort_values(["input_len", "output_len", "runtime"])
        series = sorted(
            {(r.runtime, r.precision, r.encoder_decoder, r.decoder_only) for r in sub.itertuples()}
        )
        shapes = sorted({(r.input_len, r.output_len, r.batch) for r in sub.itertuples()})
        width = 0.8 / max(len(series), 1)
        for row, (metric, paper, ylabel) in enumerate(
            (
                ("ttft_reduction", PAPER_TTFT_REDUCTION_PCT, "TTFT reduction (%)"),
                ("throughput_ratio", PAPER_THROUGHPUT_RATIO, "decode throughput ratio (x)"),
            )
        ):
            ax = axes[row][col]
            for k, (runtime, precision, ed, do) in enumerate(series):
                s = sub[
                    (sub["runtime"] == runtime)
                    & (sub["precision"] == precision)
                    & (sub["encoder_decoder"] == ed)
                    & (sub["decoder_only"] == do)
                ]
                pos = [shapes.index((r.input_len, r.output_len, r.batch)) for r in s.itertuples()]
                x = np.array(pos) - 0.4 + width * (k + 0.5)
                value = s["ttft_reduction_pct"] if metric == "ttft_reduction" else s["throughput_ratio"]
                low = s[f"{metric}_low"]
                high = s[f"{metric}_high"]
                _bars_with_ci(
                    ax,
                    x,
                    value.to_numpy(),
                    low.to_numpy(),
                    high.to_numpy(),
                    color[runtime, precision, ed, do],
                    f"{ed} vs {do} · {runtime}" + (f" · {precision}" if precision != "fp32" else ""),
                    width,
                    ".0f" if row == 0 else ".2f",
                    suffix="%" if row == 0 else "x",
                )
            ax.axhline(
                paper,
                color="crimson",
                linestyle="--",
                linewidth=1.2,
                label="the paper's claim: 47% lower TTFT, 4.7x throughput",
            )
            ax.axhline(0 if row == 0 else 1, color="black", linewidth=0.8)
            if row == 0:
                _clip_reduction_axis(ax, sub["ttft_reduction_low"])
            else:
                ax.set_ylim(0, max(ax.get_ylim()[1], PAPER_THROUGHPUT_RATIO * 1.15))
            ax.set_xticks(range(len(shapes)))
            ax.set_xticklabels([f"in {i}\nout {o}" + (f"\nb{b}" if b != 1 else "") for i, o, b in shapes])
            ax.set_ylabel(ylabel)
            ax.set_title(
                f"{platform}: {'lower TTFT' if row == 0 else 'higher decode throughput'} of encoder-decoder"
            )
    fig.suptitle(
        "Encoder-decoder over decoder-only, measured in the same run (median ratio, 95% bootstrap CI)", y=1.01
    )
    fig.tight_layout()
    _legend_below(fig, axes)
    return _save(fig, out, "speedup")


def _legend_below(fig, axes) -> None:
    """One legend under the figure with every distinct entry, so none covers the data."""
    seen = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    fig.legend(
        list(seen.values()),
        list(seen),
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=min(len(seen), 3),
        frameon=False,
    )


def ttft_breakdown(reps: pd.DataFrame, out: Path) -> Path | None:
    """Where the time goes: encoder, first decoder step (the prefill for decoder-only), and the rest
    of the generation; medians over repetitions."""
    if reps.empty:
        return None
    plt = _plt()
    med = reps.groupby(
        ["platform", "model", "family", "runtime", "precision", "batch", "input_len", "output_len"],
        as_index=False,
    )[["encoder_s", "first_step_s", "rest_s", "ttft_s"]].median()
    platforms = sorted(med["platform"].unique())
    nbars = med.groupby("platform").size().max()
    fig, axes = plt.subplots(
        len(platforms), 2, figsize=(12, 0.9 + 0.42 * nbars * len(platforms) + 0.6), squeeze=False
    )
    parts = (
        ("encoder_s", "encoder", "#8172b3"),
        ("first_step_s", "first decoder step (prefill)", "#55a868"),
        ("rest_s", "rest of generation", "#bbbbbb"),
    )
    for row, platform in enumerate(platforms):
        sub = med[med["platform"] == platform].sort_values(
            ["runtime", "input_len", "family"], ascending=[True, True, False]
        )
        labels = [f"{r.model} · {r.runtime} · in {r.input_len}/out {r.output_len}" for r in sub.itertuples()]
        y = np.arange(len(sub))
        for col, (keys, title) in enumerate(
            ((parts[:2], "time to first token"), (parts, "whole generation"))
        ):
            ax = axes[row][col]
            scale, unit = _time_unit(sub[[k for k, _, _ in keys]].sum(axis=1))
            left = np.zeros(len(sub))
            for key, label, color in keys:
                v = sub[key].to_numpy() * scale
                ax.barh(y, v, left=left, color=color, edgecolor="black", linewidth=0.4, label=label)
                left += v
            ax.set_yticks(y)
            ax.set_yticklabels(labels if col == 0 else [""] * len(labels))
            ax.invert_yaxis()
            ax.set_xlabel(f"time ({unit}, median over repetitions)")
            ax.set_title(f"{platform}: {title}")
    handles, labels = axes[0][1].get_legend_handles_labels()
    fig.suptitle(
        "TTFT breakdown: encoder + first decoder step = TTFT; the rest is the remaining tokens", y=1.01
    )
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, frameon=False)
    return _save(fig, out, "ttft_breakdown")


def _focus_shape(tokens: pd.DataFrame) -> pd.DataFrame:
    """Per platform, the largest input length measured for both families (else the largest)."""
    parts = []
    for _, sub in tokens.groupby("platform"):
        both = sub.groupby("input_len")["family"].nunique()
        lengths = both[both > 1].index if (both > 1).any() else both.index
        parts.append(sub[sub["input_len"] == max(lengths)])
    return pd.concat(parts, ignore_index=True)


def itl_distribution(tokens: pd.DataFrame, out: Path) -> Path | None:
    """Empirical CDF of inter-token latency (tokens 2..N, every repetition) per model and runtime."""
    if tokens.empty:
        return None
    df = _focus_shape(tokens[tokens["position"] >= 2])
    if df.empty:
        return None
    plt = _plt()
    platforms = sorted(df["platform"].unique())
    fig, axes = _grid(plt, len(platforms))
    scale, unit = _time_unit(df["latency_s"])
    colors = _colors(sorted(df["model"].unique()), dict(zip(df["model"], df["family"], strict=True)))
    for ax, platform in zip(axes.flat, platforms, strict=False):
        sub = df[df["platform"] == platform]
        for (model, runtime, _precision), s in sub.groupby(["model", "runtime", "precision"]):
            x = np.sort(s["latency_s"].to_numpy() * scale)
            ax.step(
                x,
                np.arange(1, len(x) + 1) / len(x),
                where="post",
                color=colors[model],
                linestyle=_LINES.get(runtime, "-."),
                linewidth=1.6,
                label=f"{model} · {runtime} (p50 {np.median(x):.3g} {unit})",
            )
        spread = sub["latency_s"]
        if spread.min() > 0 and spread.max() / spread.min() > 10:  # a long tail: log axis
            _plain_log(ax.xaxis, ax.set_xscale)
            unit_note = ", log scale"
        else:
            unit_note = ""
        ax.set_xlabel(f"inter-token latency ({unit}{unit_note})")
        ax.set_ylabel("fraction of tokens")
        ax.set_ylim(0, 1.02)
        shape = sub.iloc[0]
        ax.set_title(f"{platform}: input {shape['input_len']}, {shape['output_len']} new tokens")
        ax.legend(loc="lower right", frameon=False)
    for ax in list(axes.flat)[len(platforms) :]:
        ax.set_visible(False)
    fig.suptitle("Inter-token latency distribution\n(CDF over every decoded token and repetition)", y=1.04)
    fig.tight_layout()
    return _save(fig, out, "itl_cdf")


def token_latency(tokens: pd.DataFrame, out: Path) -> Path | None:
    """Latency of each generated token against its position (median over repetitions, with the
    10-90% band); token 1 is the TTFT and is left out so the decode steps stay readable."""
    if tokens.empty:
        return None
    df = _focus_shape(tokens[tokens["position"] >= 2])
    if df.empty:
        return None
    plt = _plt()
    platforms = sorted(df["platform"].unique())
    fig, axes = _grid(plt, len(platforms))
    scale, unit = _time_unit(df.groupby(["row", "position"])["latency_s"].median())
    colors = _colors(sorted(df["model"].unique()), dict(zip(df["model"], df["family"], strict=True)))
    for ax, platform in zip(axes.flat, platforms, strict=False):
        sub = df[df["platform"] == platform]
        for (model, runtime, _precision), s in sub.groupby(["model", "runtime", "precision"]):
            g = s.groupby("position")["latency_s"]
            pos = np.asarray(g.median().index)
            ax.fill_between(
                pos,
                g.quantile(0.1) * scale,
                g.quantile(0.9) * scale,
                color=colors[model],
                alpha=0.2,
                linewidth=0,
            )
            ax.plot(
                pos,
                g.median() * scale,
                color=colors[model],
                linestyle=_LINES.get(runtime, "-."),
                linewidth=1.4,
                label=f"{model} · {runtime}",
            )
        ax.set_xlabel("generated token position")
        ax.set_ylabel(f"latency of the token ({unit})")
        shape = sub.iloc[0]
        ax.set_title(f"{platform}: input {shape['input_len']}, {shape['output_len']} new tokens")
        ax.set_ylim(bottom=0)
        ax.legend(loc="best", frameon=False)
    for ax in list(axes.flat)[len(platforms) :]:
        ax.set_visible(False)
    fig.suptitle(
        "Per-token latency vs position\n(median over repetitions, 10-90% band; token 1 = TTFT not shown)",
        y=1.04,
    )
    fig.tight_layout()
    return _save(fig, out, "token_latency")


def claims(ratios: pd.DataFrame, out: Path) -> Path | None:
    """Measured TTFT reduction and throughput ratio per platform and runtime, beside the paper's
    47% and 4.7x."""
    if ratios.empty:
        return None
    plt = _plt()
    df = ratios.copy()
    df["where"] = (
        df["platform"] + "\n" + df["runtime"] + np.where(df["precision"] != "fp32", " " + df["precision"], "")
    )
    if df["encoder_decoder"].nunique() > 1:
        df["where"] = df["where"] + "\n" + df["encoder_decoder"] + " pair"
    groups = sorted(df["where"].unique())
    shapes = sorted({(r.input_len, r.output_len) for r in df.itertuples()})
    width = 0.8 / (len(shapes) + 1)
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 2, figsize=(max(9, 2.2 * len(groups) * 2), 4.6), squeeze=False)
    panels = (
        ("ttft_reduction", PAPER_TTFT_REDUCTION_PCT, "TTFT reduction (%)"),
        ("throughput_ratio", PAPER_THROUGHPUT_RATIO, "decode throughput ratio (x)"),
    )
    for ax, (metric, paper, ylabel) in zip(axes[0], panels, strict=True):
        value_col = "ttft_reduction_pct" if metric == "ttft_reduction" else "throughput_ratio"
        for k, shape in enumerate(shapes):
            s = df[(df["input_len"] == shape[0]) & (df["output_len"] == shape[1])]
            s = s.groupby("where", as_index=False)[[value_col, f"{metric}_low", f"{metric}_high"]].median()
            x = np.array([groups.index(w) for w in s["where"]]) - 0.4 + width * (k + 0.5)
            color = cmap(0.15 + 0.7 * k / max(len(shapes) - 1, 1))
            _bars_with_ci(
                ax,
                x,
                s[value_col].to_numpy(),
                s[f"{metric}_low"].to_numpy(),
                s[f"{metric}_high"].to_numpy(),
                color,
                f"measured, in {shape[0]} / out {shape[1]}",
                width,
                ".0f" if metric == "ttft_reduction" else ".2f",
                suffix="%" if metric == "ttft_reduction" else "x",
            )
        x = np.arange(len(groups)) - 0.4 + width * (len(shapes) + 0.5)
        unit = "%" if metric == "ttft_reduction" else "x"
        _bars_with_ci(
            ax,
            x,
            np.full(len(groups), paper),
            np.full(len(groups), np.nan),
            np.full(len(groups), np.nan),
            "white",
            "the paper's claim (Qualcomm Hexagon NPU)",
            width,
            "g",
            hatch="//",
            suffix=unit,
        )
        ax.axhline(0 if metric == "ttft_reduction" else 1, color="black", linewidth=0.8)
        if metric == "ttft_reduction":
            _clip_reduction_axis(ax, df["ttft_reduction_low"])
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups)
        ax.set_ylabel(ylabel)
        ax.set_title(
            "TTFT reduction of encoder-decoder"
            if metric == "ttft_reduction"
            else "Decode throughput, encoder-decoder / decoder-only"
        )
    handles, labels = axes[0][1].get_legend_handles_labels()
    fig.suptitle("The paper's claims beside what was measured here (95% bootstrap CIs)", y=1.02)
    fig.tight_layout()
    fig.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=min(len(labels), 4),
        frameon=False,
    )
    return _save(fig, out, "claims")


FIGURES = {
    "ttft_vs_input": ("configs", ttft_vs_input),
    "throughput_vs_input": ("configs", throughput_vs_input),
    "speedup": ("ratios", speedup),
    "ttft_breakdown": ("reps", ttft_breakdown),
    "itl_cdf": ("tokens", itl_distribution),
    "token_latency": ("tokens", token_latency),
    "claims": ("ratios", claims),
}


def draw_all(data, out: Path) -> dict[str, Path | None]:
    """Every figure from a slmbench.analysis.ReportData; None for one with nothing to draw."""
    return {name: fn(getattr(data, frame), Path(out)) for name, (frame, fn) in FIGURES.items()}
