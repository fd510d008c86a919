"""Result rows -> the DataFrames reports and plots are drawn from.

Every figure is a pure function of these frames. Per-repetition values are recomputed from the
raw timestamps each row keeps (DESIGN.md §3), so a ratio's confidence interval comes from the
repetitions themselves, not from two summaries. Rows from several hosts merge: a host that is not
the only one to measure a device gets its own panel ("platform"), never an average with another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from slmbench.results import flatten

BOOTSTRAP = 2000
ED, DO = "encoder-decoder", "decoder-only"
PAPER_TTFT_REDUCTION_PCT = 47.0
PAPER_THROUGHPUT_RATIO = 4.7
PAPER_NOTE = "Paper: 47% lower TTFT, 4.7x throughput (330M Mu vs decoder-only, Qualcomm Hexagon NPU)"


def rep_metrics(row: dict) -> pd.DataFrame:
    """One line per warm repetition: ttft, encoder, first decoder step, rest of generation, tpot,
    decode tok/s, e2e (seconds), from the row's raw timestamps."""
    batch = row.get("batch") or 1
    out = []
    for i, rep in enumerate(row.get("repetitions") or []):
        t = np.asarray(rep["timestamps_ns"], dtype=np.float64) * 1e-9
        n = len(t) - 1
        if n < 1:
            continue
        ttft = t[1] - t[0]
        enc = rep.get("encoder_end_ns")
        enc = enc * 1e-9 if enc is not None else None
        tpot = (t[n] - t[1]) / (n - 1) if n > 1 else np.nan
        out.append(
            {
                "rep": i,
                "ttft_s": ttft,
                "encoder_s": enc if enc is not None else 0.0,
                "first_step_s": ttft - enc if enc is not None else ttft,
                "rest_s": t[n] - t[1],
                "e2e_s": t[n] - t[0],
                "tpot_s": tpot,
                "decode_tps": batch / tpot if n > 1 else np.nan,
            }
        )
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


def ratio_ci(a, b, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """median(a) / median(b) and a bootstrap CI, resampling each side's repetitions independently
    (conservative: interleaving makes the two sides positively correlated)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not a.size or not b.size:
        return np.nan, np.nan, np.nan
    point = float(np.median(a) / np.median(b))
    if a.size < 2 or b.size < 2:
        return point, np.nan, np.nan
    rng = np.random.default_rng(seed)
    ma = np.median(a[rng.integers(0, a.size, (BOOTSTRAP, a.size))], axis=1)
    mb = np.median(b[rng.integers(0, b.size, (BOOTSTRAP, b.size))], axis=1)
    r = ma / mb
    alpha = (1 - level) / 2
    return point, float(np.quantile(r, alpha)), float(np.quantile(r, 1 - alpha))


def _host(row: dict) -> str:
    return (row.get("environment") or {}).get("host") or "unknown host"


@dataclass
class ReportData:
    configs: pd.DataFrame  # latest ok row per (key, host), flattened, plus host/platform columns
    reps: pd.DataFrame  # per repetition of those rows
    tokens: pd.DataFrame  # per repetition and token position of those rows
    ratios: pd.DataFrame  # per encoder-decoder / decoder-only pair measured in one run
    failed: pd.DataFrame  # the latest failed row per (key, host) without a later ok row
    hosts: pd.DataFrame  # which host measured what
    rows: list[dict]  # the ok rows used (latest per key and host)
    sources: list[str]


def _platforms(rows: list[dict]) -> dict[tuple[str, str], str]:
    """(device, host) -> panel label: the device alone when one host measured it, else with the host."""
    hosts_per_device: dict[str, set] = {}
    for r in rows:
        hosts_per_device.setdefault(r.get("device"), set()).add(_host(r))
    return {(d, h): (d if len(hs) == 1 else f"{d} @ {h}") for d, hs in hosts_per_device.items() for h in hs}


def _latest(rows: list[dict]) -> list[dict]:
    """The most recent row per (key, host); rows without a timestamp keep file order."""
    best: dict[tuple, dict] = {}
    for r in sorted(rows, key=lambda r: r.get("timestamp") or ""):
        best[(r.get("key"), _host(r))] = r
    return list(best.values())


def _pairs(ok: list[dict]) -> list[tuple[dict, dict]]:
    """(encoder-decoder, decoder-only) rows measured in the same run (same group) and shape; the
    latest run wins per pair, shape, runtime and host."""
    from slmbench.models.presets import PAIRS

    by_group: dict[tuple, list[dict]] = {}
    for r in ok:
        if r.get("group"):
            by_group.setdefault((r["group"], _host(r)), []).append(r)
    best: dict[tuple, tuple[dict, dict]] = {}
    shape = ("device", "runtime", "precision", "batch", "input_len", "output_len")
    for group in sorted(by_group.values(), key=lambda g: max(r.get("timestamp") or "" for r in g)):
        eds = [r for r in group if r.get("family") == ED]
        dos = [r for r in group if r.get("family") == DO]
        for do in dos:
            matches = [ed for ed in eds if all(ed.get(k) == do.get(k) for k in shape)]
            named = [ed for ed in matches if PAIRS.get(do.get("model")) == ed.get("model")]
            if named or len(matches) == 1:
                ed = (named or matches)[0]
                best[(ed["model"], do["model"], _host(do), *(do.get(k) for k in shape))] = (ed, do)
    return list(best.values())


def _ratio_frame(pairs: list[tuple[dict, dict]], platforms: dict) -> pd.DataFrame:
    out = []
    for ed, do in pairs:
        a, b = rep_metrics(ed), rep_metrics(do)
        if a.empty or b.empty:
            continue
        t, t_lo, t_hi = ratio_ci(a["ttft_s"], b["ttft_s"])
        x, x_lo, x_hi = ratio_ci(a["decode_tps"], b["decode_tps"])
        e, e_lo, e_hi = ratio_ci(a["e2e_s"], b["e2e_s"])
        out.append(
            {
                "encoder_decoder": ed["model"],
                "decoder_only": do["model"],
                "device": do["device"],
                "host": _host(do),
                "platform": platforms[(do["device"], _host(do))],
                "runtime": do["runtime"],
                "precision": do["precision"],
                "batch": do["batch"],
                "input_len": do["input_len"],
                "output_len": do["output_len"],
                "group": do.get("group"),
                "timestamp": do.get("timestamp"),
                "ttft_ed_s": float(np.median(a["ttft_s"])),
                "ttft_do_s": float(np.median(b["ttft_s"])),
                "tps_ed": float(np.nanmedian(a["decode_tps"])),
                "tps_do": float(np.nanmedian(b["decode_tps"])),
                "ttft_ratio": t,
                "ttft_reduction_pct": 100 * (1 - t),
                "ttft_reduction_low": 100 * (1 - t_hi),
                "ttft_reduction_high": 100 * (1 - t_lo),
                "throughput_ratio": x,
                "throughput_ratio_low": x_lo,
                "throughput_ratio_high": x_hi,
                "e2e_ratio": e,
                "e2e_ratio_low": e_lo,
                "e2e_ratio_high": e_hi,
                "reps_ed": len(a),
                "reps_do": len(b),
            }
        )
    return pd.DataFrame(out)


def _hosts_frame(rows: list[dict]) -> pd.DataFrame:
    by_host: dict[str, list[dict]] = {}
    for r in rows:
        by_host.setdefault(_host(r), []).append(r)
    out = []
    for host, rs in sorted(by_host.items()):
        env = next((r.get("environment") for r in rs if r.get("environment")), {}) or {}
        stamps = sorted(r.get("timestamp") or "" for r in rs if r.get("timestamp"))
        out.append(
            {
                "host": host,
                "cpu": env.get("cpu"),
                "cores": env.get("physical_cores"),
                "measured": ", ".join(sorted({f"{r.get('runtime')}/{r.get('device')}" for r in rs})),
                "models": ", ".join(sorted({str(r.get("model")) for r in rs})),
                "ok_rows": sum(r.get("status") == "ok" for r in rs),
                "failed_rows": sum(r.get("status") != "ok" for r in rs),
                "first": stamps[0] if stamps else None,
                "last": stamps[-1] if stamps else None,
                "slmbench_commit": env.get("slmbench_commit"),
                "packages": ", ".join(
                    f"{k} {v}"
                    for k, v in sorted((env.get("packages") or {}).items())
                    if k in ("onnxruntime", "onnxruntime-gpu", "openvino", "torch")
                ),
            }
        )
    return pd.DataFrame(out)


def build(rows: list[dict]) -> ReportData:
    """All report frames from rows read with slmbench.results.read_rows (any number of files/hosts)."""
    sources = sorted({r.get("_source") for r in rows if r.get("_source")})
    latest = _latest(rows)
    ok = [r for r in latest if r.get("status") == "ok"]
    failed = [r for r in latest if r.get("status") != "ok"]
    ok_all = [r for r in rows if r.get("status") == "ok"]
    platforms = _platforms(rows)
    configs, reps, tokens = [], [], []
    for i, r in enumerate(
        sorted(
            ok,
            key=lambda r: (
                r.get("device") or "",
                r.get("runtime") or "",
                r.get("input_len") or 0,
                r.get("family") or "",
                r.get("model") or "",
            ),
        )
    ):
        flat = flatten(r)
        flat.update({"row": i, "platform": platforms[(r.get("device"), _host(r))], "host": _host(r)})
        configs.append(flat)
        ident = {
            k: flat[k]
            for k in (
                "row",
                "model",
                "family",
                "platform",
                "runtime",
                "precision",
                "batch",
                "input_len",
                "output_len",
            )
        }
        rm = rep_metrics(r)
        if not rm.empty:
            reps.append(rm.assign(**ident))
        tl = token_latencies(r)
        if not tl.empty:
            tokens.append(tl.assign(**ident))
    fail_frame = pd.DataFrame(
        [
            {
                **{
                    k: r.get(k)
                    for k in (
                        "model",
                        "device",
                        "runtime",
                        "precision",
                        "batch",
                        "input_len",
                        "output_len",
                        "key",
                        "error",
                        "timestamp",
                    )
                },
                "kind": (r.get("failure") or {}).get("kind"),
                "host": _host(r),
            }
            for r in failed
        ]
    )
    return ReportData(
        configs=pd.DataFrame(configs),
        reps=pd.concat(reps, ignore_index=True) if reps else pd.DataFrame(),
        tokens=pd.concat(tokens, ignore_index=True) if tokens else pd.DataFrame(),
        ratios=_ratio_frame(_pairs(ok_all), platforms),
        failed=fail_frame,
        hosts=_hosts_frame(rows),
        rows=ok,
        sources=sources,
    )
