"""Result rows -> the DataFrames reports and plots are drawn from.

Every figure is a pure function of these frames. Per-repetition values come from the raw
timestamps each row keeps, through slmbench.core.metrics (one definition), so a ratio's confidence
interval comes from the repetitions themselves, not from two summaries. Rows from several machines
merge but never mix: a machine (slmbench.host.environment.machine_identity, not the hostname: two VMs
can both be `vm`) that is not the only one to measure a device gets its own panel ("platform"),
and every series is labelled with each dimension that varies in the data (`series`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from slmbench.core.metrics import DO, ED, Pair, latest_pairs, row_repetitions, row_stat, same_run_pairs, text_rates
from slmbench.core.stats import ratio_ci
from slmbench.host.environment import machine_of
from slmbench.results import flatten

PAPER_TTFT_REDUCTION_PCT = 47.0
PAPER_THROUGHPUT_RATIO = 4.7
PAPER_NOTE = "Paper: 47% lower TTFT, 4.7x throughput (330M Mu vs decoder-only, Qualcomm Hexagon NPU)"
__all__ = ["DO", "ED", "ReportData", "build", "rep_metrics", "token_latencies"]

# Dimensions that tell series apart (beside the model, or the pair); machines are panels.
SERIES_DIMS = ("runtime", "precision", "mode", "threads", "batch", "output_len")
PAIR_DIMS = ("runtime", "precision", "mode", "threads")
_DIM_FORMAT = {"threads": "{} threads", "batch": "batch {}", "output_len": "out {}"}


def series_labels(frame: pd.DataFrame, base: pd.Series, dims) -> pd.Series:
    """`base` plus every dimension of `dims` that takes more than one value in the frame, so no two
    series share a label."""
    varying = [d for d in dims if d in frame and frame[d].astype(str).nunique() > 1]
    label = base.astype(str)
    for d in varying:
        label = label + frame[d].map(lambda v, d=d: "" if v is None or v != v else " · " + _DIM_FORMAT.get(
            d, "{}").format(v))
    return label


def rep_metrics(row: dict) -> pd.DataFrame:
    """One line per warm repetition: ttft, vision tower, encoder, first decoder step, rest of
    generation, tpot, decode tok/s, e2e (seconds), from the row's raw timestamps."""
    out = []
    for i, m in enumerate(row_repetitions(row)):
        out.append({"rep": i, "ttft_s": m["ttft_s"], "vision_s": m["vision_s"] or 0.0,
                    "encoder_s": m["encoder_s"] or 0.0,
                    "first_step_s": m["prefill_s"], "rest_s": m["rest_s"], "e2e_s": m["e2e_s"],
                    "tpot_s": np.nan if m["tpot_s"] is None else m["tpot_s"],
                    "decode_tps": np.nan if m["decode_tps"] is None else m["decode_tps"]})
    return pd.DataFrame(out)


def token_latencies(row: dict) -> pd.DataFrame:
    """One line per repetition and generated token: position i >= 1 and t_i - t_{i-1} (seconds);
    position 1 is the TTFT."""
    parts = []
    for i, rep in enumerate(row.get("repetitions") or []):
        t = np.asarray(rep["timestamps_ns"], dtype=np.float64) * 1e-9
        if len(t) < 2:
            continue
        parts.append(pd.DataFrame({"rep": i, "position": np.arange(1, len(t)), "latency_s": np.diff(t)}))
    return (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=["rep", "position", "latency_s"])
    )


def in_out(input_ed: int, input_do: int, output: int) -> str:
    """A pair's lengths, "512/128"; a text as is gives each tokenizer its own input count, both
    shown (the encoder-decoder's first): "41 · 73/128"."""
    return f"{input_ed}/{output}" if input_ed == input_do else f"{input_ed} · {input_do}/{output}"


def vision_frame(rows: list[dict]) -> pd.DataFrame:
    """Vision models' ok rows, one line each: the image, the text's length, the first token split
    into the tower, the encoder and the prefill or first step (medians, seconds), decode tok/s, and
    the KV MB a decode step reads with the image's tokens and with the text's alone. What the
    terminal and the report show of them; ordered by machine, runtime, image, text, family."""
    seen = [r for r in rows if r.get("status") == "ok" and r.get("vision")]
    order = lambda r: (_machine(r), r["runtime"], r["vision"]["image_size"], r["input_len"], r["family"])
    return pd.DataFrame([{
        "machine": _machine(r), "model": r["model"], "runtime": r["runtime"],
        "image_size": r["vision"]["image_size"], "image_tokens": r["vision"]["image_tokens"], "text": r["input_len"],
        **{m: row_stat(r, m) for m in ("vision_s", "encoder_s", "prefill_s", "ttft_s", "decode_tps")},
        "kv_mb": r["vision"]["kv_bytes_per_token"] / 1e6,
        "kv_mb_text_only": r["vision"]["kv_bytes_per_token_text_only"] / 1e6,
    } for r in sorted(seen, key=order)])


def text_groups(rows: list[dict]) -> list[tuple[str, pd.DataFrame]]:
    """Rows fed text, one group per text and machine: a title saying what the text was (and that
    token counts differ, when the tokenizers disagree), and per row its tokens beside the
    per-character and per-word rates that compare one text across tokenizers
    (slmbench.core.metrics.text_rates; the decode ones are estimates at the input's characters per
    token)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("text"):
            groups.setdefault((r["text"].get("id"), machine_of(r)["id"]), []).append(r)
    out = []
    for members in groups.values():
        text, lines = members[0]["text"], []
        for r in members:
            rates = text_rates(r) or {}
            lines.append({"model": r["model"], "runtime": r["runtime"], "precision": r.get("precision"),
                          "input": r["text"].get("input"),
                          "tokens": rates.get("input_tokens"), "chars/token": rates.get("characters_per_token"),
                          "ttft_s": row_stat(r, "ttft_s"), "read chars/s": rates.get("read_chars_per_s"),
                          "read words/s": rates.get("read_words_per_s"), "decode tok/s": row_stat(r, "decode_tps"),
                          "decode chars/s": rates.get("decode_chars_per_s"),
                          "decode words/s": rates.get("decode_words_per_s")})
        frame = pd.DataFrame(lines)
        counts = {round(t) for t in frame["tokens"].dropna()}
        title = (f"text {text.get('id')} on {_machine(members[0])}: {text.get('prompts')} prompt(s), "
                 f"{text.get('characters')} characters, {text.get('words')} words, {text.get('fit')}"
                 + ("; token counts differ between tokenizers: compare per character" if len(counts) > 1 else ""))
        out.append((title, frame))
    return out


def _machine(row: dict) -> str:
    return machine_of(row)["name"]


@dataclass
class ReportData:
    configs: pd.DataFrame  # latest ok row per (key, machine), flattened, plus platform and series columns
    reps: pd.DataFrame  # per repetition of those rows
    tokens: pd.DataFrame  # per repetition and token position of those rows
    ratios: pd.DataFrame  # per encoder-decoder / decoder-only pair measured in one run (latest per pair)
    failed: pd.DataFrame  # the latest failed row per (key, machine) without a later ok row
    machines: pd.DataFrame  # which machine measured what
    rows: list[dict]  # the ok rows used (latest per key and machine), in the order of `configs`
    sources: list[str]


def _platforms(rows: list[dict]) -> dict[tuple[str, str], str]:
    """(device, machine) -> panel label: the device alone when one machine measured it, else with
    the machine's name."""
    machines_per_device: dict[str, set] = {}
    for r in rows:
        machines_per_device.setdefault(r.get("device"), set()).add(_machine(r))
    return {(d, m): (d if len(ms) == 1 else f"{d} @ {m}") for d, ms in machines_per_device.items() for m in ms}


def _latest(rows: list[dict]) -> list[dict]:
    """The most recent row per (key, machine); rows without a timestamp keep file order."""
    best: dict[tuple, dict] = {}
    for r in sorted(rows, key=lambda r: r.get("timestamp") or ""):
        best[(r.get("key"), machine_of(r)["id"])] = r
    return list(best.values())


def _ratio_frame(pairs: list[Pair], platforms: dict) -> pd.DataFrame:
    out = []
    for pair in pairs:
        ed, do = pair.ed, pair.do
        a, b = rep_metrics(ed), rep_metrics(do)
        if a.empty or b.empty:
            continue
        t, t_lo, t_hi = ratio_ci(a["ttft_s"], b["ttft_s"])
        x, x_lo, x_hi = ratio_ci(a["decode_tps"], b["decode_tps"])
        e, e_lo, e_hi = ratio_ci(a["e2e_s"], b["e2e_s"])
        out.append({
            "encoder_decoder": ed["model"], "decoder_only": do["model"], "pair": pair.label,
            "device": do["device"], "machine": _machine(do), "platform": platforms[(do["device"], _machine(do))],
            "runtime": do["runtime"], "precision": do["precision"], "mode": do.get("mode"),
            "threads": do.get("threads"), "batch": do["batch"], "input_len": do["input_len"],
            "input_len_ed": ed["input_len"], "output_len": do["output_len"], "group": do.get("group"),
            "timestamp": do.get("timestamp"),
            "ttft_ed_s": float(np.median(a["ttft_s"])), "ttft_do_s": float(np.median(b["ttft_s"])),
            "tps_ed": float(np.nanmedian(a["decode_tps"])), "tps_do": float(np.nanmedian(b["decode_tps"])),
            "ttft_ratio": t, "ttft_reduction_pct": 100 * (1 - t),
            "ttft_reduction_low": 100 * (1 - t_hi), "ttft_reduction_high": 100 * (1 - t_lo),
            "throughput_ratio": x, "throughput_ratio_low": x_lo, "throughput_ratio_high": x_hi,
            "e2e_ratio": e, "e2e_ratio_low": e_lo, "e2e_ratio_high": e_hi,
            "reps_ed": len(a), "reps_do": len(b),
        })
    frame = pd.DataFrame(out)
    if not frame.empty:
        frame["series"] = series_labels(frame, frame["encoder_decoder"] + " vs " + frame["decoder_only"], PAIR_DIMS)
    return frame


def _machines_frame(rows: list[dict]) -> pd.DataFrame:
    """One line per machine: what it is (the identity's fields) and what it measured."""
    by_machine: dict[str, list[dict]] = {}
    for r in rows:
        by_machine.setdefault(machine_of(r)["id"], []).append(r)
    out = []
    for rs in sorted(by_machine.values(), key=lambda rs: _machine(rs[0])):
        env = next((r.get("environment") for r in rs if r.get("environment")), {}) or {}
        stamps = sorted(r.get("timestamp") or "" for r in rs if r.get("timestamp"))
        allowed = env.get("cpus_allowed")
        out.append({
            "machine": _machine(rs[0]), "host": env.get("host"), "cpu": env.get("cpu"),
            "cores": env.get("physical_cores"),
            "cpus allowed": len(allowed) if isinstance(allowed, list) else allowed,
            "memory": f"{env['memory_bytes'] / 2**30:.1f} GiB" if env.get("memory_bytes") else None,
            "kernel": env.get("kernel"), "huge pages": env.get("transparent_hugepages"),
            "python": env.get("python"),
            "measured": ", ".join(sorted({f"{r.get('runtime')}/{r.get('device')}" for r in rs})),
            "models": ", ".join(sorted({str(r.get("model")) for r in rs})),
            "ok_rows": sum(r.get("status") == "ok" for r in rs),
            "failed_rows": sum(r.get("status") != "ok" for r in rs),
            "first": stamps[0] if stamps else None, "last": stamps[-1] if stamps else None,
            "slmbench_commit": env.get("slmbench_commit"),
            "packages": ", ".join(f"{k} {v}" for k, v in sorted((env.get("packages") or {}).items())
                                  if k in ("onnxruntime", "onnxruntime-gpu", "openvino", "torch")),
        })
    return pd.DataFrame(out)


def build(rows: list[dict]) -> ReportData:
    """All report frames from rows read with slmbench.results.read_rows (any number of files/machines)."""
    sources = sorted({r.get("_source") for r in rows if r.get("_source")})
    latest = _latest(rows)
    ok = [r for r in latest if r.get("status") == "ok"]
    failed = [r for r in latest if r.get("status") != "ok"]
    platforms = _platforms(rows)
    order = lambda r: (r.get("device") or "", r.get("runtime") or "", r.get("input_len") or 0,
                       r.get("family") or "", r.get("model") or "", r.get("key") or "")
    ok.sort(key=order)
    configs = pd.DataFrame([dict(flatten(r), row=i, platform=platforms[(r.get("device"), _machine(r))])
                            for i, r in enumerate(ok)])
    if not configs.empty:
        configs["series"] = series_labels(configs, configs["model"], SERIES_DIMS)
    ident = ("row", "model", "family", "platform", "series", "runtime", "precision", "mode", "threads", "batch",
             "input_len", "output_len", "machine")
    reps, tokens = [], []
    for r, flat in zip(ok, configs.to_dict("records"), strict=True):
        values = {k: flat[k] for k in ident}
        if not (rm := rep_metrics(r)).empty:
            reps.append(rm.assign(**values))
        if not (tl := token_latencies(r)).empty:
            tokens.append(tl.assign(**values))
    fail_frame = pd.DataFrame([
        {**{k: r.get(k) for k in ("model", "device", "runtime", "precision", "mode", "threads", "batch", "input_len",
                                  "output_len", "key", "error", "timestamp")},
         "kind": (r.get("failure") or {}).get("kind"), "machine": _machine(r)}
        for r in failed])
    return ReportData(
        configs=configs,
        reps=pd.concat(reps, ignore_index=True) if reps else pd.DataFrame(),
        tokens=pd.concat(tokens, ignore_index=True) if tokens else pd.DataFrame(),
        ratios=_ratio_frame(latest_pairs(same_run_pairs(rows)), platforms),
        failed=fail_frame,
        machines=_machines_frame(rows),
        rows=ok,
        sources=sources,
    )
