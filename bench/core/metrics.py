"""The metrics layer: per-repetition metrics from raw timestamps, and what a same-run pair is.

Both are defined here once and used by the measurement (row statistics), the terminal tables, the
report, the regression gate and gpu_check.py, so a TTFT or a pair cannot mean two things.

Per repetition (README, "What is measured"): with t_0 = 0 and t_i when token i is on the host,
TTFT = t_1; vision = t_vis (a vision model's tower; t_vis = t_0 without one); encoder = t_enc -
t_vis (encoder-decoder); first decoder step (the prefill) = t_1 - t_enc (decoder-only: t_1 - t_vis);
TPOT = (t_N - t_1) / (N - 1); decode tok/s = batch / TPOT; e2e = t_N; e2e tok/s = batch·N / t_N;
step = the median inter-token latency (what the gate's decode ratios use: a time slice lost to
another job moves it far less than the mean).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from slmbench.config import peer_key
from slmbench.host.environment import machine_of

ED, DO = "encoder-decoder", "decoder-only"
ROW_METRICS = ("ttft_s", "vision_s", "encoder_s", "prefill_s", "tpot_s", "decode_tps", "e2e_s", "e2e_tps")


def repetition_metrics(timestamps_ns, encoder_end_ns: int | None, batch: int,
                       vision_end_ns: int | None = None) -> dict[str, float | None]:
    """Every per-repetition metric of one generation (seconds; None where undefined)."""
    t = np.asarray(timestamps_ns, dtype=np.float64) * 1e-9
    n = len(t) - 1
    ttft = t[1] - t[0]
    tpot = (t[n] - t[1]) / (n - 1) if n > 1 else None
    vision = vision_end_ns * 1e-9 if vision_end_ns is not None else None
    encoder_end = encoder_end_ns * 1e-9 if encoder_end_ns is not None else None
    encoder = encoder_end - (vision or 0.0) if encoder_end is not None else None
    itl = np.diff(t[1:])
    return {
        "ttft_s": ttft,
        "vision_s": vision,
        "encoder_s": encoder,
        "prefill_s": ttft - (encoder_end if encoder_end is not None else vision or 0.0),
        "tpot_s": tpot,
        "decode_tps": batch / tpot if tpot else None,
        "e2e_s": t[n] - t[0],
        "e2e_tps": batch * n / (t[n] - t[0]),
        "rest_s": t[n] - t[1],
        "step_s": float(np.median(itl)) if itl.size else None,
    }


def row_repetitions(row: dict) -> list[dict]:
    """The per-repetition metrics of every warm repetition a row keeps, in measurement order."""
    batch = row.get("batch") or 1
    return [repetition_metrics(r["timestamps_ns"], r.get("encoder_end_ns"), batch, r.get("vision_end_ns"))
            for r in row.get("repetitions") or [] if len(r.get("timestamps_ns") or ()) >= 2]


def row_stat(row: dict, metric: str, stat: str = "median") -> float | None:
    """A statistic of a row's metric summary (None when the row has none)."""
    return ((row.get("metrics") or {}).get(metric) or {}).get(stat)


def text_rates(row: dict) -> dict | None:
    """Per-character and per-word rates of a row fed tokenized text, beside its per-token ones:
    models with different tokenizers read one text in different numbers of tokens, so only these
    compare the same amount of text. Reading: the input's characters (words) per second of TTFT.
    Decoding: decode tok/s at the input's characters (words) per token under this tokenizer: an
    estimate, generated text has no characters of its own to count (random weights). None when the
    row was not fed text through a tokenizer."""
    text = row.get("text") or {}
    chars, words, tokens = text.get("input_characters"), text.get("input_words"), text.get("input_tokens")
    ttft, tps = row_stat(row, "ttft_s"), row_stat(row, "decode_tps")
    if not chars or not tokens or not ttft:
        return None
    per_token = sum(tokens) / len(tokens)
    batch = row.get("batch") or 1
    return {"input_tokens": per_token, "input_characters": chars, "input_words": words,
            "characters_per_token": chars / per_token,
            "read_chars_per_s": batch * chars / ttft, "read_words_per_s": batch * words / ttft if words else None,
            "decode_chars_per_s": tps * chars / per_token if tps else None,
            "decode_words_per_s": tps * words / per_token if tps and words else None}


@dataclass(frozen=True)
class Pair:
    """An encoder-decoder and a decoder-only row measured interleaved in one run, on one machine,
    in configurations that differ only in the model."""

    ed: dict
    do: dict

    @property
    def label(self) -> str:
        """The pair's configuration: 'mu-tiny/deconly-tiny|cpu|onnxruntime|fp32|b1|in32|out16|t1'."""
        return f"{self.ed['model']}/{self.do['model']}|{peer_key(self.ed['key'])}"

    @property
    def identity(self) -> tuple:
        """What makes two pairs the same comparison (a later run of it supersedes an earlier)."""
        return self.ed["model"], self.do["model"], machine_of(self.do)["id"], peer_key(self.do["key"])


def same_run_pairs(rows: Iterable[dict]) -> list[Pair]:
    """Every same-run pair among ok rows: same `group` (one interleaved run), same machine, same key
    but for the model (runtime, precision, OpenVINO mode, threads, shape...). A decoder-only row
    with several encoder-decoder candidates pairs with its preset partner (models.presets.PAIRS),
    else with none. Harness-overhead rows (`loop`) are never pairs."""
    from slmbench.models.presets import PAIRS

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("group") and r.get("key") and not r.get("loop"):
            groups.setdefault((r["group"], machine_of(r)["id"], peer_key(r["key"])), []).append(r)
    pairs = []
    for members in groups.values():
        eds = [r for r in members if r.get("family") == ED]
        for do in (r for r in members if r.get("family") == DO):
            named = [ed for ed in eds if PAIRS.get(do.get("model")) == ed.get("model")]
            if named or len(eds) == 1:
                pairs.append(Pair((named or eds)[0], do))
    return pairs


def latest_pairs(pairs: Iterable[Pair]) -> list[Pair]:
    """One pair per identity: the latest run's."""
    best: dict[tuple, Pair] = {}
    for p in sorted(pairs, key=lambda p: p.do.get("timestamp") or ""):
        best[p.identity] = p
    return list(best.values())
