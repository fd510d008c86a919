"""Terminal tables (rich) for result rows: the summary and the encoder-decoder vs decoder-only
comparison. Pure functions of rows; printing is the caller's."""

from __future__ import annotations

from rich.table import Table

from slmbench.core.metrics import row_stat, same_run_pairs


def fmt_s(value: float | None) -> str:
    """Seconds shown in the unit that reads best (times are seconds internally)."""
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"



def _where(row: dict) -> str:
    """runtime/device, with the OpenVINO mode where there is one."""
    return f"{row.get('runtime')}/{row.get('device')}" + (f" {row['mode']}" if row.get("mode") else "")


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
            str(r.get("precision") or "-"), f"{r['input_len']}/{r['output_len']}", fmt_s(row_stat(r, "ttft_s")),
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
            "threads": ed.get("threads"), "input_len": ed["input_len"], "output_len": ed["output_len"],
            "ttft_reduction_pct": 100 * (1 - ttft_ed / ttft_do) if ttft_ed and ttft_do else None,
            "throughput_ratio": tps_ed / tps_do if tps_ed and tps_do else None,
        })
    return out


def ratio_table(ratios: list[dict]) -> Table:
    table = Table(title="encoder-decoder vs decoder-only (same run, interleaved; paper: 47% lower TTFT, "
                        "4.7x throughput)", title_justify="left")
    for col in ("encoder-decoder", "decoder-only", "runtime/device", "precision", "mode", "threads", "in/out",
                "TTFT reduction", "throughput x"):
        table.add_column(col, justify="right" if col in ("TTFT reduction", "throughput x") else "left")
    for r in ratios:
        red, x = r["ttft_reduction_pct"], r["throughput_ratio"]
        table.add_row(r["encoder_decoder"], r["decoder_only"], f"{r['runtime']}/{r['device']}",
                      str(r.get("precision") or "-"), str(r.get("mode") or "-"), str(r.get("threads") or "-"),
                      f"{r['input_len']}/{r['output_len']}", f"{red:.0f}%" if red is not None else "-",
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
