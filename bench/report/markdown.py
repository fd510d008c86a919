"""The Markdown report: tables, the figures embedded, the claims checked, failures listed.

`build_report(results, out)` reads result files or folders (from any number of machines), writes
`out/report.md` and `out/figures/*.png|svg`, and returns what it wrote; `print_summary` shows the
same tables in the terminal. Failed rows are listed, never plotted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from slmbench.errors import BenchError
from slmbench.report.frames import (
    PAPER_NOTE,
    PAPER_THROUGHPUT_RATIO,
    PAPER_TTFT_REDUCTION_PCT,
    ReportData,
    build,
    in_out,
    text_groups,
    vision_frame,
)
from slmbench.report.terminal import fmt_s
from slmbench.results import read_rows

CAPTIONS = {
    "ttft_vs_input": "Time to first token against input length, one panel per device (and host).",
    "throughput_vs_input": "Decode throughput (batch / time per output token) against input length.",
    "speedup": "Encoder-decoder over decoder-only per shape: TTFT reduction and decode throughput ratio, "
    "with 95% bootstrap CIs from the repetitions of the same interleaved run.",
    "ttft_breakdown": "Where the time goes: the vision tower (vision models), encoder, first decoder step (the "
    "prefill, for decoder-only) and the remaining tokens.",
    "itl_cdf": "Inter-token latency distribution at the largest input length measured for both families.",
    "token_latency": "Latency of each generated token against its position (token 1, the TTFT, not shown).",
    "claims": "The paper's 47% and 4.7x beside the measured values, per device and runtime.",
    "crossover": "Encoder-decoder / decoder-only over input x output lengths (TTFT, decode throughput, "
    "end-to-end latency): blue favours the encoder-decoder, red the decoder-only; hatched cells' 95% CI "
    "includes 1.",
}


@dataclass
class BuiltReport:
    markdown: Path
    figures_dir: Path
    figures: dict[str, Path] = field(default_factory=dict)
    not_drawn: list[str] = field(default_factory=list)
    data: ReportData | None = None


def _ci(value, low, high, fmt: str, suffix: str = "") -> str:
    if value is None or not np.isfinite(value):
        return "-"
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return f"{value:{fmt}}{suffix}"
    return f"{value:{fmt}}{suffix} [{low:{fmt}}, {high:{fmt}}]"


def _md_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_none_\n"
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in frame.itertuples(index=False):
        lines.append(
            "| "
            + " | ".join(
                "-"
                if v is None or (isinstance(v, float) and not np.isfinite(v))
                else str(v).replace("|", "\\|").replace("\n", " ")
                for v in row
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def ratio_rows(data: ReportData) -> pd.DataFrame:
    """The comparison table, formatted."""
    r = data.ratios
    if r.empty:
        return pd.DataFrame()
    r = r.sort_values(["platform", "runtime", "precision", "series", "encoder_decoder", "input_len", "output_len"])
    return pd.DataFrame(
        {
            "pair": r["encoder_decoder"] + " vs " + r["decoder_only"],
            "device": r["platform"],
            "runtime": r["runtime"],
            "precision": r["precision"],
            "mode": r["mode"].fillna("-"),
            "threads": r["threads"],
            "in/out": [in_out(e, d, o) for e, d, o in zip(r["input_len_ed"], r["input_len"], r["output_len"],
                                                           strict=True)],
            "TTFT ed": r["ttft_ed_s"].map(fmt_s),
            "TTFT do": r["ttft_do_s"].map(fmt_s),
            "TTFT reduction [95% CI]": [
                _ci(v, lo, hi, ".1f", "%")
                for v, lo, hi in zip(
                    r["ttft_reduction_pct"], r["ttft_reduction_low"], r["ttft_reduction_high"], strict=True
                )
            ],
            "tok/s ed": r["tps_ed"].map(lambda v: f"{v:.1f}"),
            "tok/s do": r["tps_do"].map(lambda v: f"{v:.1f}"),
            "throughput ratio [95% CI]": [
                _ci(v, lo, hi, ".2f", "x")
                for v, lo, hi in zip(
                    r["throughput_ratio"], r["throughput_ratio_low"], r["throughput_ratio_high"], strict=True
                )
            ],
            "reps": r["reps_ed"].astype(str) + "/" + r["reps_do"].astype(str),
        }
    )


def config_rows(data: ReportData) -> pd.DataFrame:
    c = data.configs
    if c.empty:
        return pd.DataFrame()
    return pd.DataFrame(
        {
            "model": c["model"],
            "device": c["platform"],
            "runtime": c["runtime"],
            "precision": c["precision"],
            "mode": c["mode"].fillna("-"),
            "threads": c["threads"],
            "batch": c["batch"],
            "in/out": c["input_len"].astype(str) + "/" + c["output_len"].astype(str),
            "TTFT p50": c["ttft_s_median"].map(fmt_s),
            "TTFT p90": c["ttft_s_p90"].map(fmt_s),
            "encoder": c["encoder_s_median"].map(lambda v: fmt_s(v) if pd.notna(v) else "-"),
            "TPOT p50": c["tpot_s_median"].map(lambda v: fmt_s(v) if pd.notna(v) else "-"),
            "decode tok/s": c["decode_tps_median"].map(lambda v: f"{v:.1f}" if pd.notna(v) else "-"),
            "cold TTFT": c["cold_ttft_s"].map(lambda v: fmt_s(v) if pd.notna(v) else "-"),
            "reps": c["ttft_s_count"].map(lambda v: str(int(v)) if pd.notna(v) else "-"),
            "machine": c["machine"],
        }
    )


def prefill_rate_rows(data: ReportData) -> pd.DataFrame:
    """TTFT against input length, fitted per model, runtime, device, precision and batch:
    TTFT = fixed + input / rate (least squares over the measured lengths, at least 3 of them).
    The rate is the prompt tokens/s the model sustains; the fixed part is what remains at length 0
    (negative when attention's quadratic cost bends the curve upward over the measured range)."""
    c = data.configs
    if c.empty:
        return pd.DataFrame()
    out = []
    for (platform, series), g in c.groupby(["platform", "series"], sort=True):
        g = g.dropna(subset=["ttft_s_median"]).drop_duplicates("input_len")
        if len(g) < 3:
            continue
        x, y = g["input_len"].to_numpy(float), g["ttft_s_median"].to_numpy(float)
        slope, fixed = np.polyfit(x, y, 1)
        fit = slope * x + fixed
        r2 = 1 - ((y - fit) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-30)
        batch = int(g["batch"].iloc[0])
        out.append({"series": series, "device": platform, "runtime": g["runtime"].iloc[0],
                    "precision": g["precision"].iloc[0], "batch": batch,
                    "inputs": f"{int(x.min())}-{int(x.max())} ({len(x)})",
                    "prefill tok/s": f"{batch / slope:.0f}" if slope > 0 else "-", "fixed": f"{fixed * 1e3:+.0f} ms",
                    "R²": f"{r2:.3f}"})
    return pd.DataFrame(out)


def _ceiling_rows(data: ReportData, field: str, cells) -> pd.DataFrame:
    """One line per row whose `field` (a ceiling) has a fraction: the row's identity, then `cells(roof)`."""
    out = []
    for r, platform in zip(data.rows, data.configs.get("platform", ()), strict=False):
        roof = r.get(field) or {}
        if roof.get("fraction_of_ceiling") is not None:
            out.append({"model": r["model"], "device": platform, "runtime": r["runtime"], "precision": r["precision"],
                        "mode": r.get("mode") or "-", "in/out": f"{r['input_len']}/{r['output_len']}", **cells(roof)})
    return pd.DataFrame(out)


def roofline_rows(data: ReportData) -> pd.DataFrame:
    """How close each decode ran to the memory-bandwidth ceiling recorded in its row."""
    return _ceiling_rows(data, "roofline", lambda roof: {
        "bytes/token": f"{roof['bytes_per_token'] / 1e6:.0f} MB",
        "bandwidth": f"{roof['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s",
        "measured by": roof.get("bandwidth_method") or "numpy_sum",
        "ceiling tok/s": f"{roof['ceiling_tokens_per_s']:.1f}",
        "of ceiling": _fraction(roof["fraction_of_ceiling"], roof.get("remeasured", False))})


def compute_rows(data: ReportData) -> pd.DataFrame:
    """How close each first token ran to the compute ceiling recorded in its row."""
    return _ceiling_rows(data, "compute_roofline", lambda roof: {
        "compute": roof["compute_precision"], "first-token GFLOP": f"{roof['first_token_flops'] / 1e9:.1f}",
        "peak": f"{roof['peak_flops_per_s'] / 1e9:.0f} GFLOP/s", "measured by": roof.get("peak_method") or "-",
        "ceiling TTFT": f"{roof['ceiling_ttft_s'] * 1e3:.0f} ms",
        "of ceiling": _fraction(roof["fraction_of_ceiling"], roof.get("remeasured", False),
                                "the peak reading was below what the first token computed")})


def _fraction(value: float, remeasured: bool,
              why: str = "the bandwidth reading was below what the decode streamed") -> str:
    """A fraction of a ceiling; above 1 the ceiling was not a bound, and the table says so."""
    text = f"{100 * value:.0f}%"
    if value <= 1:
        return text
    again = " even after a re-measure" if remeasured else " as first measured"
    return f"{text} (above the ceiling{again}: {why}, so it is no bound)"


_PRECISION_ORDER = {"fp32": 0, "bf16": 1, "fp16": 2, "int8": 3, "int4": 4}


def accuracy_rows(data: ReportData) -> pd.DataFrame:
    """Each artifact's logit error against fp32 PyTorch (teacher-forced), once per model, runtime and
    precision: what a lower precision costs in accuracy, beside what it buys in speed. A user's own
    export without checkpoint weights (`onnx:DIR`, `ov:DIR`) could not be checked: its parity says
    "unchecked"."""
    seen, out = set(), []
    for r in data.rows:
        acc, recipe = r.get("accuracy") or {}, r.get("precision_recipe") or {}
        status = (r.get("artifact") or {}).get("parity") or ("ok" if acc else None)
        key = (r.get("model"), r.get("runtime"), r.get("precision"), (r.get("artifact") or {}).get("key"))
        if status is None or key in seen:
            continue
        seen.add(key)
        rel, agree = acc.get("relative_max_abs_diff"), acc.get("token_agreement")
        out.append({
            "model": r["model"], "runtime": r["runtime"], "precision": r["precision"], "parity": status,
            "max abs Δlogit": f"{acc['max_abs_diff']:.2e}" if acc.get("max_abs_diff") is not None else "-",
            "÷ logit std": f"{rel:.3f}" if rel is not None else "-",
            "token agreement": f"{agree:.1%}" if agree is not None else "-",
            "steps x batch": f"{acc.get('steps', '-')} x {acc.get('batch', '-')}",
            "recipe": " ".join(str(x) for x in (recipe.get("tool"), recipe.get("tool_version")) if x)
            + (f"; {recipe['weights']}" if recipe.get("weights") else ""),
        })
    if not out:
        return pd.DataFrame()
    frame = pd.DataFrame(out)
    order = frame["precision"].map(lambda p: _PRECISION_ORDER.get(p, 9))
    return frame.assign(_o=order).sort_values(["model", "runtime", "_o"]).drop(columns="_o")


def _at_shapes(s: pd.DataFrame, value: str, ci: str, fmt: str, unit: str) -> str:
    """"v [lo, hi] at in/out; ..." over the shapes of one series."""
    return "; ".join(f"{_ci(v, lo, hi, fmt, unit)} at {i}/{o}" for v, lo, hi, i, o in zip(
        s[value], s[f"{ci}_low"], s[f"{ci}_high"], s["input_len"], s["output_len"], strict=True))


def claims_text(data: ReportData) -> list[str]:
    """One sentence per device/runtime/pair: what was measured, against the paper, whatever the outcome."""
    r = data.ratios
    if r.empty:
        return [
            "No encoder-decoder / decoder-only pair was measured in one run, so the claims are not checked."
        ]
    lines = []
    for (platform, series), s in r.groupby(["platform", "series"]):
        s = s.sort_values(["input_len", "output_len"])
        red = _at_shapes(s, "ttft_reduction_pct", "ttft_reduction", ".0f", "%")
        thr = _at_shapes(s, "throughput_ratio", "throughput_ratio", ".2f", "x")
        lines.append(
            f"**{series} on {platform}**: TTFT reduction {red} (input/output "
            f"tokens); decode throughput ratio {thr}. Against the paper's {PAPER_TTFT_REDUCTION_PCT:g}% "
            f"TTFT reduction: {_verdict(s, 'ttft_reduction_pct', 'ttft_reduction', PAPER_TTFT_REDUCTION_PCT)}"
            "; "
            f"against its {PAPER_THROUGHPUT_RATIO:g}x throughput: "
            f"{_verdict(s, 'throughput_ratio', 'throughput_ratio', PAPER_THROUGHPUT_RATIO)}."
        )
    return lines + cost_claims(data)


PAPER_FLOPS_REDUCTION_PCT, PAPER_MEMORY_REDUCTION_PCT = 22, (11, 16)


def _span(values: list[float], unit: str = "x") -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.2f}{unit}" if round(lo, 2) == round(hi, 2) else f"{lo:.2f}-{hi:.2f}{unit}"


def _measured_memory(row: dict) -> int | None:
    """A model's measured memory: load plus the peak of a generation above it (`memory_phases`), on
    the device where it has memory of its own (CUDA); rows from before that was measured fall back
    to what loading added in the shared process."""
    phases = row.get("memory_phases") or {}
    device = phases.get("device") or {}
    peak = lambda p: max(p["first_token_bytes"] or 0, p["decode_bytes"])  # the generation's, above the load
    if device.get("loaded_bytes") is not None and device.get("decode_bytes") is not None:
        return device["loaded_bytes"] + peak(device)
    if phases.get("load_bytes") and phases.get("decode_bytes") is not None:
        return phases["load_bytes"] + peak(phases)
    return row.get("load_rss_delta_bytes")


def cost_claims(data: ReportData) -> list[str]:
    """The paper's other two claims per measured pair: generation FLOPs and memory computed from the
    configs at the measured shapes (models/cost.py), and the measured memory of each model
    (_measured_memory), encoder-decoder / decoder-only."""
    from slmbench.models import resolve_model
    from slmbench.models.cost import BYTES_PER_PARAM, generation_cost, pair_ratios

    r = data.ratios
    if r.empty:
        return []
    loaded = {(row.get("group"), row["model"]): _measured_memory(row) for row in data.rows}
    lines = []
    for (ed, do, precision), s in r.groupby(["encoder_decoder", "decoder_only", "precision"]):
        try:
            a, b = resolve_model(ed).config, resolve_model(do).config
        except Exception:  # noqa: BLE001 - a checkpoint no longer on this machine: nothing to compute from
            continue
        width = precision if precision in BYTES_PER_PARAM else "fp32"
        shapes = sorted({(int(i), int(o)) for i, o in zip(s["input_len"], s["output_len"], strict=True)})
        ratios = [pair_ratios(generation_cost(a, i, o, width), generation_cost(b, i, o, width)) for i, o in shapes]
        flops = [x["generation_flops"] for x in ratios]
        memory = [x["peak_memory_bytes"] for x in ratios]
        measured = []  # per machine and runtime: one machine's or runtime's memory never stands for another's
        for (platform, runtime), p in s.groupby(["platform", "runtime"]):
            found = [loaded[(g, ed)] / loaded[(g, do)] for g in p["group"]
                     if loaded.get((g, ed)) and loaded.get((g, do))]
            if found:
                measured.append(f"{_span(found)} with {runtime} on {platform} ({len(found)} run(s))")
        fewer, (least, most) = PAPER_FLOPS_REDUCTION_PCT, PAPER_MEMORY_REDUCTION_PCT
        ins, outs = [i for i, _ in shapes], [o for _, o in shapes]
        text = (f"**{ed} vs {do}, {precision}** (computed at {len(shapes)} measured shape(s), input "
                f"{min(ins)}-{max(ins)}, output {min(outs)}-{max(outs)}): generation FLOPs "
                f"{_span(flops)} of the decoder-only's (paper: {fewer}% fewer, i.e. {1 - fewer / 100:.2f}x); "
                f"peak memory (weights, KV cache, largest activation) {_span(memory)} (paper: {least}-{most}% "
                f"less, {1 - most / 100:.2f}-{1 - least / 100:.2f}x)")
        text += ("; measured memory (what loading added, on CUDA the process's device memory once loaded, plus "
                 "the generation's peak above it, each model alone in a fresh process) " + "; ".join(measured) + "."
                 if measured else "; no measured memory in these rows.")
        lines.append(text)
    return lines


def _verdict(s: pd.DataFrame, value: str, ci: str, paper: float) -> str:
    """How many shapes' 95% CIs lie below, around or above the paper's figure."""
    below = around = above = unknown = 0
    for _, lo, hi in zip(s[value], s[f"{ci}_low"], s[f"{ci}_high"], strict=True):
        if not (np.isfinite(lo) and np.isfinite(hi)):
            unknown += 1
        elif hi < paper:
            below += 1
        elif lo > paper:
            above += 1
        else:
            around += 1
    parts = [
        f"{n} {what}"
        for n, what in (
            (below, "below (whole CI under it)"),
            (around, "consistent (CI contains it)"),
            (above, "above (whole CI over it)"),
            (unknown, "without a CI (too few repetitions)"),
        )
        if n
    ]
    return f"of {len(s)} shapes, " + ", ".join(parts)


def _failed_table(data: ReportData) -> pd.DataFrame:
    f = data.failed
    if f.empty:
        return f
    return pd.DataFrame(
        {
            "model": f["model"],
            "runtime/device": f["runtime"] + "/" + f["device"],
            "precision": f["precision"],
            "mode": f["mode"].fillna("-"),
            "batch": f["batch"],
            "in/out": f["input_len"].astype(str) + "/" + f["output_len"].astype(str),
            "kind": f["kind"],
            "error": f["error"].astype(str).str.slice(0, 300),
            "machine": f["machine"],
        }
    )


def text_sections(data: ReportData) -> list[str]:
    """The matched-text tables: one per text and machine, per-token beside per-character rates."""
    parts = []
    for title, frame in text_groups(data.rows):
        shown = frame.assign(
            tokens=frame["tokens"].map(lambda v: f"{v:,.0f}"),
            **{"chars/token": frame["chars/token"].map(lambda v: f"{v:.2f}"),
               "TTFT p50": frame["ttft_s"].map(fmt_s),
               **{c: frame[c].map(lambda v: "-" if v is None or v != v else f"{v:,.0f}")
                  for c in ("read chars/s", "read words/s", "decode chars/s", "decode words/s")},
               "decode tok/s": frame["decode tok/s"].map(lambda v: "-" if v is None or v != v else f"{v:.1f}")})
        shown = shown[["model", "runtime", "precision", "input", "tokens", "chars/token", "TTFT p50", "read chars/s",
                       "read words/s", "decode tok/s", "decode chars/s", "decode words/s"]]
        parts += [f"### {title[0].upper()}{title[1:]}\n", _md_table(shown)]
    return parts


def vision_rows(data: ReportData) -> pd.DataFrame:
    """Vision models (frames.vision_frame), formatted for the report."""
    v = vision_frame(data.rows)
    if v.empty:
        return v
    shown = {"vision tower": "vision_s", "encoder": "encoder_s", "prefill / first step": "prefill_s",
             "TTFT p50": "ttft_s"}
    return pd.DataFrame({
        "machine": v["machine"], "model": v["model"], "runtime": v["runtime"],
        "image": [f"{s} px ({t} tokens)" for s, t in zip(v["image_size"], v["image_tokens"], strict=True)],
        "text": v["text"], **{name: v[col].map(fmt_s) for name, col in shown.items()},
        "decode tok/s": v["decode_tps"].map(lambda x: f"{x:.1f}"), "KV MB/token": v["kv_mb"].map(lambda x: f"{x:,.1f}"),
        "KV MB/token, text alone": v["kv_mb_text_only"].map(lambda x: f"{x:,.1f}")})


def _machines_table(data: ReportData) -> pd.DataFrame:
    m = data.machines
    if m.empty:
        return m
    return m.rename(columns={"ok_rows": "ok rows", "failed_rows": "failed rows", "slmbench_commit": "commit"})


def render_markdown(
    data: ReportData, figures: dict[str, Path], not_drawn: list[str], title: str, figures_rel: str
) -> str:
    parts = [
        f"# {title}\n",
        f"Generated {time.strftime('%Y-%m-%d %H:%M %Z')} by `slmbench report` from "
        f"{len(data.rows)} measured configurations ({len(data.failed)} failed) in: "
        + ", ".join(f"`{s}`" for s in data.sources)
        + ".\n",
        "## Machines: which machine measured what\n",
        "A machine is its identity's fingerprint (host, CPU and flags, cores, allowed CPUs, memory, kernel, huge "
        "pages, Python, packages), not its hostname; rows of different machines are never merged: a device "
        "measured by several machines gets one panel and one table line per machine.\n",
        _md_table(_machines_table(data)),
        "\n## Encoder-decoder vs decoder-only, measured in the same run\n",
        "Each pair's repetitions were interleaved in one process, so machine drift hits both alike; "
        "ratios are of medians, with 95% bootstrap CIs from the raw per-repetition timestamps "
        "(each side resampled independently). TTFT reduction = 1 - TTFT(ed) / TTFT(do); throughput "
        "ratio = decode tok/s (ed) / decode tok/s (do); in/out are tokens (under a text as is, each "
        "tokenizer's own count: the encoder-decoder's · the decoder-only's).\n",
        _md_table(ratio_rows(data)),
        "\n## Against the paper's claims\n",
        f"{PAPER_NOTE}. Absolute times here are context only; the ratios are what compare across machines.\n",
    ]
    parts += [f"- {line}" for line in claims_text(data)]
    if texts := text_sections(data):
        parts += ["\n## Matched text: the same prompts through each model's own tokenizer\n",
                  "Models with different tokenizers read one text in different numbers of tokens, so per-token "
                  "rates compare different amounts of text; per-character and per-word rates compare the same. "
                  "Reading: the input's characters (words) per second of TTFT. Decoding: decode tok/s at the "
                  "input's characters (words) per token, an estimate (random-weight models generate no text of "
                  "their own to count).\n", *texts]
    if not (vision := vision_rows(data)).empty:
        parts += ["\n## Vision input: image tokens into the encoder, or before the prompt\n",
                  "The image's pixels enter at t_0; the tower (a CLIP-shaped ViT and projector) runs once; its "
                  "tokens then go into the encoder with the text (encoder-decoder) or before the prompt "
                  "(decoder-only), where every later step attends to them. Medians; KV MB/token is what one "
                  "decode step reads of the cache (fp32, cross-attention K/V or the self-attention cache, at "
                  "the middle of the generation), with the image's tokens and, for scale, without them. The "
                  "pairs are in the same-run table above.\n", _md_table(vision)]
    parts.append("\n## Figures\n")
    for name, png in figures.items():
        rel = f"{figures_rel}/{png.name}"
        parts.append(
            f"### {name.replace('_', ' ')}\n\n{CAPTIONS.get(name, '')} "
            f"([SVG]({figures_rel}/{png.stem}.svg))\n\n![{name}]({rel})\n"
        )
    if not_drawn:
        parts.append("Not drawn (nothing to show): " + ", ".join(not_drawn) + ".\n")
    parts += [
        "\n## Precision: logit error against fp32 PyTorch\n",
        "Per artifact, over a teacher-forced sequence: the largest |logit difference|, the same divided by "
        "the spread (std) of the reference logits, and how often the greedy token agrees. fp32 must match "
        "within 1e-4 or the export fails; lower precisions are measured and recorded, not asserted "
        "(random-weight models have flat logits, so token agreement is a pessimistic figure).\n",
        _md_table(accuracy_rows(data)),
        "\n## Prefill rate, fitted from TTFT against input length\n",
        "TTFT = fixed + input / rate, least squares over the measured input lengths (shown where a "
        "configuration was measured at 3 or more); a negative fixed part means TTFT grows faster than "
        "linearly (attention) over the range.\n",
        _md_table(prefill_rate_rows(data)),
        "\n## First token against the compute ceiling\n",
        "An encoder pass or a prefill is matrix-matrix work: TTFT >= its FLOPs (from the architecture) / the "
        "peak FLOP/s of the runtime's own MatMul at the run's threads and compute precision, measured on the "
        "host. A low fraction is time the first token spends outside large matrix products (attention, "
        "small layers, the runtime's overhead).\n",
        _md_table(compute_rows(data)),
        "\n## Decode against the memory-bandwidth ceiling\n",
        "Batch-1 decoding reads every weight it uses once per token: tokens/s <= bandwidth / bytes per "
        "token (read bandwidth measured on the host; bytes from the architecture, precision and KV length).\n",
        _md_table(roofline_rows(data)),
        "\n## All measured configurations (latest per configuration and machine)\n",
        _md_table(config_rows(data)),
        "\n## Failed configurations (listed, not plotted)\n",
        _md_table(_failed_table(data)),
    ]
    warnings = [(r["model"], r["key"], w) for r in data.rows for w in r.get("warnings") or []]
    if warnings:
        parts.append("\n## Warnings recorded with the measurements\n")
        parts += [f"- `{key}`: {w}" for _, key, w in warnings]
    return "\n".join(parts) + "\n"


def build_report(results, out: Path | str, title: str = "slmbench report") -> BuiltReport:
    rows = read_rows(results)
    if not rows:
        raise BenchError(
            f"no result rows in {', '.join(map(str, results))}; run `slmbench run` or `slmbench sweep` first"
        )
    data = build(rows)
    out = Path(out)
    figures_dir = out / "figures"
    try:  # before drawing anything: a report of only failed rows draws no figure but is still written
        figures_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot write the report to {out}: {exc.strerror} ({exc.filename}); choose another "
                         "--out folder") from None
    from slmbench.report.plots import draw_all

    drawn = draw_all(data, figures_dir)
    figures = {k: v for k, v in drawn.items() if v is not None}
    not_drawn = [k for k, v in drawn.items() if v is None]
    markdown = out / "report.md"
    markdown.write_text(render_markdown(data, figures, not_drawn, title, "figures"), encoding="utf-8")
    return BuiltReport(markdown, figures_dir, figures, not_drawn, data)


def print_summary(console, built: BuiltReport) -> None:
    """The report's tables in the terminal (rich)."""
    from rich.table import Table

    from slmbench.report.terminal import summary_table

    data = built.data

    def table(frame: pd.DataFrame, title: str) -> Table:
        t = Table(title=title, title_justify="left")
        for col in frame.columns:
            t.add_column(str(col))
        for row in frame.itertuples(index=False):
            t.add_row(*("-" if v is None else str(v) for v in row))
        return t

    console.print(
        table(
            _machines_table(data)[["machine", "host", "cpu", "cpus allowed", "measured", "ok rows", "failed rows",
                                   "first", "last"]],
            "machines",
        )
    )
    console.print(summary_table(data.rows, title="measured configurations (latest per key and machine)"))
    if not data.ratios.empty:
        console.print(table(ratio_rows(data), f"encoder-decoder vs decoder-only (same run); {PAPER_NOTE}"))
    for line in claims_text(data):
        console.print(line.replace("**", ""))
    accuracy = accuracy_rows(data)
    if not accuracy.empty and (set(accuracy["precision"]) != {"fp32"} or set(accuracy["parity"]) != {"ok"}):
        console.print(table(accuracy, "logit error against fp32 PyTorch (teacher-forced)"))
    if not data.failed.empty:
        console.print(table(_failed_table(data), "failed configurations (not plotted)"))
