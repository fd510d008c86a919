"""Harness overhead: the harness's generation loop against a bare loop of the runtime's own calls.

A latency harness must measure the model, not itself. On one loaded runner (same session, same
bindings and buffers) this alternates harness repetitions (slmbench.core.measure.generate over the
runner's primitives) with bare ones (the runner's `bare_generate`: the runtime's calls in a plain
loop), in a shuffled order each round so neither side always runs first. Both record the same
raw timestamps, so the same metrics apply; harness / bare per repetition is a same-run ratio
that holds across machines, which is what the regression gate compares (slmbench.gate.compare:
overhead_ttft, and overhead_step from each repetition's median inter-token latency).

Two rows come out, sharing a `group`: `loop` = "harness" and "bare", both with `overhead_of` =
the configuration's plain key.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np

from slmbench.config import RunConfig, RunSettings
from slmbench.core.benchmark import prepare_and_load, result_row
from slmbench.core.measure import Repetition, Subject, generate, make_inputs, measure
from slmbench.errors import InvalidOption
from slmbench.host.environment import environment
from slmbench.results import append_rows, check_writable


def _loop(subject: Subject, runner, ids: np.ndarray, settings: RunSettings):
    if subject.label == "bare":
        stamps, encoder_end, tokens = runner.bare_generate(ids, settings.output_len, subject.start_token)
        return Repetition(stamps, encoder_end), tokens
    return generate(runner, ids, settings.output_len, subject.encoder_decoder, subject.start_token)


def measure_overhead(spec, settings: RunSettings | None = None, device: str = "cpu",
                     threads: int | None = None, precision: str = "fp32", cache_dir=None,
                     results: Path | str | None = None, runner_cls=None, log=print) -> list[dict]:
    """Measure one model's harness and bare loops interleaved; return (and append) two rows.
    `runner_cls` defaults to ONNX Runtime's (the runtimes with a bare loop)."""
    from slmbench.runners import select_runner

    settings = settings or RunSettings(input_len=64, output_len=16, min_reps=15, min_time_s=1.0)
    settings.check_fits(spec.name, spec.config)
    runner_cls = runner_cls or select_runner(device, "onnxruntime")
    runtime = runner_cls.runtime
    if not hasattr(runner_cls, "bare_generate"):
        raise InvalidOption(f"runtime {runtime} has no bare loop to measure harness overhead "
                            "against; use --runtime onnxruntime")
    if results is not None:
        check_writable(results)
    plain = RunConfig.create(spec.name, device, runtime, precision, settings, threads)
    loaded = prepare_and_load(plain, spec, cache_dir, log, runner_cls(device, plain.threads, plain.option_dict))
    runner = loaded.runner
    ed, start = spec.config.is_encoder_decoder, spec.config.decoder_start_token
    sides = [Subject("harness", runner, ed, start), Subject("bare", runner, ed, start)]
    ids = make_inputs(settings, spec.config.vocab_size)
    log(f"measuring harness vs bare {runtime} loop on {spec.name}: input {settings.input_len}, "
        f"output {settings.output_len} (interleaved, shuffled; >= {settings.min_reps} reps and "
        f">= {settings.min_time_s:g}s each)")
    try:
        measure([sides], settings, lambda s: _loop(s, runner, ids, settings))
    finally:
        runner.close()
    harness, bare = sides
    if not np.array_equal(harness.tokens, bare.tokens):
        raise RuntimeError(f"the bare {runtime} loop generated other tokens than the harness on "
                           f"{spec.name}: it is not the same work, so the overhead figure would be "
                           "meaningless")
    group, env = uuid.uuid4().hex[:12], environment()
    rows = [result_row(replace(plain, loop=subject.label), subject, loaded, group, env, overhead_of=plain.key)
            for subject in sides]
    if results is not None:
        append_rows(results, rows)
    return rows


def overhead_ratios(rows: list[dict]) -> list[dict]:
    """Per model: median of the per-repetition harness / bare ratios of TTFT and of the decode step
    (median inter-token latency)."""
    from slmbench.gate.compare import collect

    samples = collect(rows)
    out = []
    for row in rows:
        if row.get("loop") != "harness":
            continue
        found = {m: samples.series.get((row["overhead_of"], m)) for m in ("overhead_ttft", "overhead_step")}
        bare = next((r for r in rows if r.get("loop") == "bare" and r.get("group") == row.get("group")), None)
        if bare is None:
            continue
        med = lambda r, m: ((r.get("metrics") or {}).get(m) or {}).get("median")
        out.append({"model": row["model"], "config": row["overhead_of"],
                    "harness_ttft_s": med(row, "ttft_s"), "bare_ttft_s": med(bare, "ttft_s"),
                    "harness_tpot_s": med(row, "tpot_s"), "bare_tpot_s": med(bare, "tpot_s"),
                    **{m: float(np.median(s.values)) if s else None for m, s in found.items()},
                    "reps": len(row.get("repetitions") or [])})
    return out


def overhead_table(rows: list[dict]):
    from rich.table import Table

    from slmbench.report.terminal import fmt_s

    table = Table(title="harness overhead: harness loop vs bare runtime loop (same session, interleaved; "
                        "ratio = median of per-repetition harness/bare; goal <= 1.03x)", title_justify="left")
    for col in ("model", "TTFT harness", "TTFT bare", "TTFT ratio", "TPOT harness", "TPOT bare", "step ratio",
                "reps"):
        table.add_column(col, justify="left" if col == "model" else "right")
    x = lambda v: f"{v:.3f}x" if v is not None else "-"
    for r in overhead_ratios(rows):
        table.add_row(r["model"], fmt_s(r["harness_ttft_s"]), fmt_s(r["bare_ttft_s"]), x(r["overhead_ttft"]),
                      fmt_s(r["harness_tpot_s"]), fmt_s(r["bare_tpot_s"]), x(r["overhead_step"]),
                      str(r["reps"]))
    return table
