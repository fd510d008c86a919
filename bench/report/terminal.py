"""Terminal tables (rich) for result rows: the summary and the encoder-decoder vs decoder-only
comparison. Pure functions of rows; printing is the caller's."""

from __future__ import annotations

from rich.table import Table

from slmbench.core.metrics import row_stat, same_run_pairs


def fmt_s(value: float | None) -> str:
    """Seconds shown in the unit that reads best (times are seconds internally); "-" for none
    (None, or NaN where a frame's column holds a missing value)."""
    if value is None or value != value:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"



def _where(row: dict) -> str:
    """runtime/device, with the OpenVINO mode where there is one."""
    return f"{row.get('runtime')}/{row.get('device')}" + (f" {row['mode']}" if row.get("mode") else "")


def _in_out(row: dict) -> str:
    """Input/output tokens; a vision model's image tokens beside its text's."""
    image = f"+{row['vision']['image_tokens']}img" if row.get("vision") else ""
    return f"{row['input_len']}{image}/{row['output_len']}"


def summary_table(rows: list[dict], title: str = "slmbench results") -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("model", "family", "params", "runtime/device", "precision", "in/out", "TTFT p50", "TTFT p90",
                "encoder", "TPOT p50", "decode tok/s", "e2e", "cold TTFT", "load", "reps"):
        table.add_column(col, justify="left" if col in ("model", "family", "runtime/device", "precision")
                         else "right")
    for r in rows:
        if r.get("status") != "ok":
            table.add_row(r.get("model", "?"), r.get("family", ""), "", _where(r),
                          str(r.get("precision") or "-"), f"{r.get('input_len')}/{r.get('output_len')}",
                          f"[red]failed: {r.get('error')}[/red]")
            continue
        tps = row_stat(r, "decode_tps")
        table.add_row(
            r["model"], r["family"], f"{r['parameters'] / 1e6:.0f}M", _where(r),
            str(r.get("precision") or "-"), _in_out(r), fmt_s(row_stat(r, "ttft_s")),
            fmt_s(row_stat(r, "ttft_s", "p90")),
            fmt_s(row_stat(r, "encoder_s")), fmt_s(row_stat(r, "tpot_s")), f"{tps:.1f}" if tps else "-",
            fmt_s(row_stat(r, "e2e_s")), fmt_s(r.get("cold_ttft_s")), fmt_s(r.get("load_s")),
            str(row_stat(r, "ttft_s", "count") or "-"))
    return table


def pair_ratios(rows: list[dict]) -> list[dict]:
    """Encoder-decoder vs decoder-only, per same-run pair (slmbench.core.metrics.same_run_pairs)."""
    out = []
    for pair in same_run_pairs(rows):
        ed, do = pair.ed, pair.do
        ttft_ed, ttft_do = row_stat(ed, "ttft_s"), row_stat(do, "ttft_s")
        tps_ed, tps_do = row_stat(ed, "decode_tps"), row_stat(do, "decode_tps")
        out.append({
            "encoder_decoder": ed["model"], "decoder_only": do["model"], "runtime": ed["runtime"],
            "device": ed["device"], "precision": ed.get("precision"), "mode": ed.get("mode"),
            "threads": ed.get("threads"), "input_len": ed["input_len"], "input_len_do": do["input_len"],
            "output_len": ed["output_len"],
            "ttft_reduction_pct": 100 * (1 - ttft_ed / ttft_do) if ttft_ed and ttft_do else None,
            "throughput_ratio": tps_ed / tps_do if tps_ed and tps_do else None,
        })
    return out


def ratio_table(ratios: list[dict]) -> Table:
    from slmbench.report.frames import in_out

    table = Table(title="encoder-decoder vs decoder-only (same run, interleaved; paper: 47% lower TTFT, "
                        "4.7x throughput)", title_justify="left")
    for col in ("encoder-decoder", "decoder-only", "runtime/device", "precision", "mode", "threads", "in/out",
                "TTFT reduction", "throughput x"):
        table.add_column(col, justify="right" if col in ("TTFT reduction", "throughput x") else "left")
    for r in ratios:
        red, x = r["ttft_reduction_pct"], r["throughput_ratio"]
        table.add_row(r["encoder_decoder"], r["decoder_only"], f"{r['runtime']}/{r['device']}",
                      str(r.get("precision") or "-"), str(r.get("mode") or "-"), str(r.get("threads") or "-"),
                      in_out(r["input_len"], r["input_len_do"], r["output_len"]),
                      f"{red:.0f}%" if red is not None else "-",
                      f"{x:.2f}x" if x is not None else "-")
    return table


def runtime_table(rows: list[dict]) -> Table:
    """Each model's runtimes against the first one measured, from one interleaved run."""
    table = Table(title="runtimes side by side (same run, interleaved; ratio to the first runtime)",
                  title_justify="left")
    for col in ("model", "runtime", "TTFT p50", "TTFT ratio", "decode tok/s", "tok/s ratio"):
        table.add_column(col, justify="left" if col in ("model", "runtime") else "right")
    ok = [r for r in rows if r.get("status") == "ok"]
    for model in dict.fromkeys(r["model"] for r in ok):
        mine = [r for r in ok if r["model"] == model]
        base = mine[0]
        for r in mine:
            ttft, tps = row_stat(r, "ttft_s"), row_stat(r, "decode_tps")
            table.add_row(model, r["runtime"], fmt_s(ttft),
                          f"{ttft / row_stat(base, 'ttft_s'):.2f}x" if ttft and row_stat(base, "ttft_s") else "-",
                          f"{tps:.1f}" if tps else "-",
                          f"{tps / row_stat(base, 'decode_tps'):.2f}x" if tps and row_stat(base, "decode_tps") else "-")
    return table


def vision_table(rows: list[dict]) -> Table | None:
    """Where a vision model's first token goes (slmbench.report.frames.vision_frame): the tower, the
    encoder, the prefill or first decoder step, and the KV MB each decode step reads with the
    image's tokens in the cache against the text alone's. None when no row had an image."""
    from slmbench.report.frames import vision_frame

    v = vision_frame(rows)
    if v.empty:
        return None
    table = Table(title="vision input: the first token, split (medians), and the KV cache read per decode step",
                  title_justify="left")
    for col in ("model", "runtime", "image", "vision tower", "encoder", "prefill / first step", "TTFT",
                "decode tok/s", "KV MB/token (text alone)"):
        table.add_column(col, justify="left" if col in ("model", "runtime") else "right")
    for r in v.itertuples():
        table.add_row(r.model, r.runtime, f"{r.image_size} px, {r.image_tokens} tokens", fmt_s(r.vision_s),
                      fmt_s(r.encoder_s), fmt_s(r.prefill_s), fmt_s(r.ttft_s),
                      f"{r.decode_tps:.1f}" if r.decode_tps else "-", f"{r.kv_mb:,.1f} ({r.kv_mb_text_only:,.1f})")
    return table


def text_tables(rows: list[dict]) -> list[Table]:
    """A run fed text: each model's tokens of it beside per-character and per-word rates, the only
    ones that compare the same text across tokenizers (slmbench.report.frames.text_groups)."""
    from slmbench.report.frames import text_groups

    num = lambda v, f="{:,.0f}": "-" if v is None or v != v else f.format(v)
    tables = []
    for title, frame in text_groups(rows):
        table = Table(title=f"matched {title}", title_justify="left")
        for col in ("model", "runtime", "input", "tokens", "chars/token", "TTFT p50", "read chars/s", "read words/s",
                    "decode tok/s", "decode chars/s*", "decode words/s*"):
            table.add_column(col, justify="left" if col in ("model", "runtime", "input") else "right")
        for r in frame.to_dict("records"):
            table.add_row(r["model"], r["runtime"], r["input"] or "-", num(r["tokens"]),
                          num(r["chars/token"], "{:.2f}"), fmt_s(r["ttft_s"]), num(r["read chars/s"]),
                          num(r["read words/s"]), num(r["decode tok/s"], "{:.1f}"), num(r["decode chars/s"]),
                          num(r["decode words/s"]))
        table.caption = "* decode tok/s at the input's characters (words) per token under each model's tokenizer"
        tables.append(table)
    return tables


def _gflops(value: float) -> str:
    return f"{value / 1e9:,.1f}"


def _mb(value: float) -> str:
    return f"{value / 1e6:,.1f}"


def _less(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    change = abs(1 - ratio) * 100
    return f"{ratio:.2f}x ({change:.0f}% {'less' if ratio < 1 else 'more'})" if round(change) else f"{ratio:.2f}x"


def cost_tables(rows: list[dict], pairs: list[dict], input_len: int, output_len: int, precision: str) -> list[Table]:
    """`slmbench models --cost`: each model's analytic cost, then each pair's ratios beside the paper's."""
    models = Table(title=f"analytic cost of one generation (batch 1, input {input_len}, output {output_len}, "
                         f"{precision} weights, fp32 KV; matmul FLOPs)", title_justify="left")
    for col in ("model", "family", "parameters", "GFLOPs to token 1", "GFLOPs decoding", "GFLOPs in all",
                "weights MB", "KV MB (cross)", "peak MB"):
        models.add_column(col, justify="left" if col in ("model", "family") else "right")
    for r in rows:
        models.add_row(r["model"], r["family"], f"{r['parameters'] / 1e6:,.0f}M", _gflops(r["first_token_flops"]),
                       _gflops(r["decode_flops"]), _gflops(r["generation_flops"]), _mb(r["weight_bytes"]),
                       f"{_mb(r['kv_bytes'])} ({_mb(r['cross_kv_bytes'])})", _mb(r["peak_memory_bytes"]))
    tables = [models]
    if pairs:
        ratio = Table(title="encoder-decoder / decoder-only (paper: 22% fewer generation FLOPs, 11-16% less memory)",
                      title_justify="left")
        for col in ("encoder-decoder", "decoder-only", "FLOPs to token 1", "decoding FLOPs", "generation FLOPs",
                    "weights", "KV cache", "peak memory"):
            ratio.add_column(col, justify="left" if col in ("encoder-decoder", "decoder-only") else "right")
        for p in pairs:
            cells = [p[k] for k in ("first_token_flops", "decode_flops", "generation_flops", "weight_bytes",
                                    "kv_bytes", "peak_memory_bytes")]
            ratio.add_row(p["encoder_decoder"], p["decoder_only"],
                          *(_less(v) for v in cells))
        tables.append(ratio)
    return tables
