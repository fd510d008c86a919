"""`make perf`: is the harness at the runtime's floor, and the runtime near the memory wall?

Prints, for a model pair on CPU and each runtime that has a bare loop:
- harness overhead: the harness's TTFT and decode step against a bare loop of the runtime's own
  calls on the same session and buffers (goal <= 1.03x);
- roofline: read bandwidth measured on the spot, weight and KV bytes read per decode token, the
  bandwidth ceiling in tokens/s and the measured decode tokens/s as a fraction of it (goal >= 0.8
  for fp32 decoder-only on the faster runtime);
- compute ceiling: the first token's FLOPs against the peak FLOP/s of the runtime's own MatMul at
  the run's threads and compute precision (host/compute.py), as a fraction (goal >= 0.7 at 512);
- export time of the pair from an empty cache (goal < 3 min) and a cache hit (goal < 1 s);
- peak RSS while generating, against the artifact's weight bytes (goal <= 1.5x), each model in
  its own process so nothing else is counted;
- how much of the process sat on huge pages after the load (slmbench.host.hugepages).
Figures are printed and appended as one JSON line to --out. Speed claims live here, not in tests.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click

from slmbench.core.child import in_fresh_process

GOALS = {"overhead": 1.03, "roofline": 0.8, "compute": 0.7, "export_s": 180.0, "cache_hit_s": 1.0,
         "rss_ratio": 1.5}


def _export_times(specs, runtimes, cache_dir: Path) -> dict:
    from slmbench.runners import RUNNERS

    out = {}
    for runtime in runtimes:
        runner = RUNNERS[runtime]("cpu")
        started = time.perf_counter()
        for spec in specs:
            runner.prepare(spec, "fp32", cache_dir)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        reused = [runner.prepare(spec, "fp32", cache_dir)[1] for spec in specs]
        out[runtime] = {"export_s": cold, "cache_hit_s": time.perf_counter() - started, "reused": all(reused)}
    return out


def _alone(model: str, runtime: str, input_len: int, output_len: int, threads: int, cache_dir: Path) -> dict:
    """One repetition of one model, with nothing else measured in this process: its row."""
    from slmbench.config import RunConfig, RunSettings
    from slmbench.core.benchmark import run_benchmark

    settings = RunSettings(input_len=input_len, output_len=output_len, warmup=0, min_reps=1, min_time_s=0.0)
    config = RunConfig.create(model, "cpu", runtime, settings=settings, threads=threads)
    return run_benchmark([config], cache_dir=cache_dir, log=lambda message: None)[0]


def _peak_rss(model: str, runtime: str, input_len: int, output_len: int, threads: int, cache_dir: Path) -> dict:
    """One model alone in a fresh process: its peak RSS while generating (the counter is reset
    after load) and its peak while importing, exporting and loading, both from the row."""
    row = in_fresh_process(_alone, model, runtime, input_len, output_len, threads, cache_dir)
    weights = row["artifact"]["weight_bytes"]
    return {"model": model, "runtime": runtime, "weight_bytes": weights, "run_peak_rss_bytes": row["peak_rss_bytes"],
            "run_ratio": row["peak_rss_bytes"] / weights, "process_peak_rss_bytes": row.get("load_peak_rss_bytes")}


def _or_bound(roof: dict, text: str) -> str:
    """A ceiling figure, or "cache-resident" for a model whose bytes per token fit in the cache
    (host/roofline.py gives it no DRAM ceiling)."""
    return text if roof.get("ceiling_tokens_per_s") is not None else "cache-resident"


def _huge(record: dict | None) -> str:
    """The process's anonymous memory on huge pages after the load, or why there is none."""
    if not record:
        return "-"
    if record.get("anon_huge_bytes") and record["status"] in ("collapsed", "nothing to do"):
        return f"{record['anon_huge_bytes'] / 2**30:.2f} GiB"
    return record["status"]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "-m", "models", multiple=True, default=("mu-330m", "deconly-330m"), show_default=True)
@click.option("--runtime", "-r", "runtimes", multiple=True, default=("onnxruntime", "openvino"), show_default=True)
@click.option("--input-len", "-i", type=int, default=256, show_default=True)
@click.option("--output-len", "-o", type=int, default=64, show_default=True)
@click.option("--threads", "-t", type=int, default=None, help="Default: physical cores.")
@click.option("--min-reps", type=int, default=5, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("results/perf/perf.jsonl"), show_default=True)
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Artifact cache for the runs (the export timing always uses a fresh temporary cache).")
def main(models, runtimes, input_len, output_len, threads, min_reps, out, cache_dir):
    """Harness overhead, roofline, export time and memory of a model pair on CPU.

    \b
    Example:
      python -m slmbench.tools.perf -m mu-330m -m deconly-330m -r onnxruntime -r openvino
    """
    from rich.console import Console
    from rich.table import Table

    from slmbench.config import RunSettings
    from slmbench.exporters.artifact import default_cache_dir
    from slmbench.host.cpus import default_threads
    from slmbench.host.environment import environment, this_machine
    from slmbench.host.roofline import host_bandwidth, row_roofline
    from slmbench.models import resolve_model
    from slmbench.models.cost import mean_decode_bytes
    from slmbench.runners import RUNNERS
    from slmbench.tools.overhead import measure_overhead, overhead_ratios

    console = Console(width=160)
    threads = threads or default_threads()
    specs = [resolve_model(m) for m in models]
    runtimes = [r for r in runtimes if r in RUNNERS and RUNNERS[r].availability("cpu").ok]
    summary = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "models": list(models), "threads": threads,
               "input_len": input_len, "output_len": output_len, "environment": environment(),
               "machine": this_machine(), "goals": GOALS}

    store = cache_dir or default_cache_dir()  # the bandwidth readings sit beside it
    bandwidth = host_bandwidth(threads, store, refresh=True)
    summary["bandwidth"] = bandwidth
    latest = bandwidth.get("latest") or bandwidth
    console.print(f"memory bandwidth ({threads} threads, {bandwidth['buffer_bytes'] >> 20} MiB): read "
                  f"{latest['read_bytes_per_s'] / 1e9:.1f} GB/s now ({latest['method']}); the ceiling is the best "
                  f"of {bandwidth.get('readings', 1)} quiet readings here, {bandwidth['read_bytes_per_s'] / 1e9:.1f} "
                  f"GB/s ({bandwidth['method']})")

    with tempfile.TemporaryDirectory(prefix="slmbench-perf-") as fresh:
        console.print("exporting the pair into an empty cache ...")
        summary["export"] = in_fresh_process(_export_times, specs, runtimes, Path(fresh))
        run_cache = cache_dir or Path(fresh)
        if cache_dir:
            in_fresh_process(_export_times, specs, runtimes, cache_dir)  # warm the run cache too
        table = Table(title="export (empty cache) and re-export (cache hit)", title_justify="left")
        for col in ("runtime", "pair export", "goal", "cache hit", "goal"):
            table.add_column(col, justify="right" if col != "runtime" else "left")
        for runtime, e in summary["export"].items():
            table.add_row(runtime, f"{e['export_s']:.1f} s", f"< {GOALS['export_s']:.0f} s",
                          f"{e['cache_hit_s']:.2f} s", f"< {GOALS['cache_hit_s']:.0f} s")
        console.print(table)

        settings = RunSettings(input_len=input_len, output_len=output_len, warmup=1, min_reps=min_reps,
                               min_time_s=0.0)
        speed = []
        for runtime in runtimes:
            cls = RUNNERS[runtime]
            for spec in specs:
                if not hasattr(cls, "bare_generate"):
                    console.print(f"[yellow]{runtime} has no bare loop: overhead not measured[/yellow]")
                    break
                rows = measure_overhead(spec, settings, "cpu", threads, "fp32", run_cache, None, cls,
                                        log=lambda m: console.log(m))
                ratio = overhead_ratios(rows)[0]
                harness = next(r for r in rows if r["loop"] == "harness")
                tps = harness["metrics"]["decode_tps"]["median"]
                roof = row_roofline(mean_decode_bytes(spec.config, "fp32", input_len, output_len), threads, store, tps)
                speed.append({"runtime": runtime, "model": spec.name, "family": spec.family.value,
                              "overhead_ttft": ratio["overhead_ttft"], "overhead_step": ratio["overhead_step"],
                              "ttft_s": harness["metrics"]["ttft_s"]["median"], "decode_tps": tps,
                              "huge_pages": harness.get("huge_pages"),
                              "compute": harness.get("compute_roofline"), **roof})
        summary["speed"] = speed
        table = Table(title=f"harness overhead and roofline (input {input_len}, output {output_len}, fp32, "
                            f"batch 1, {threads} threads)", title_justify="left")
        for col in ("runtime", "model", "TTFT", "TTFT ratio", "step ratio", "TTFT of compute", "bytes/token",
                    "ceiling tok/s", "decode tok/s", "of ceiling", "huge pages"):
            table.add_column(col, justify="left" if col in ("runtime", "model") else "right")
        for s in speed:
            ok = lambda v, goal, below=True: f"[{'green' if (v <= goal if below else v >= goal) else 'red'}]"
            table.add_row(s["runtime"], s["model"], f"{s['ttft_s'] * 1e3:.0f} ms",
                          ok(s["overhead_ttft"], GOALS["overhead"]) + f"{s['overhead_ttft']:.3f}x",
                          ok(s["overhead_step"], GOALS["overhead"]) + f"{s['overhead_step']:.3f}x",
                          _compute(s["compute"]),
                          f"{s['bytes_per_token'] / 1e6:.0f} MB", _or_bound(s, f"{s['ceiling_tokens_per_s'] or 0:.1f}"),
                          f"{s['decode_tps']:.1f}", _or_bound(s, f"{100 * (s['fraction_of_ceiling'] or 0):.0f}%"),
                          _huge(s["huge_pages"]))
        console.print(table)

        memory = [_peak_rss(spec.name, runtime, input_len, output_len, threads, run_cache)
                  for runtime in runtimes for spec in specs]
        summary["memory"] = memory
        table = Table(title="peak RSS while generating vs artifact weight bytes (each model alone)",
                      title_justify="left")
        for col in ("runtime", "model", "weights", "peak RSS (run)", "ratio", "peak RSS (load)"):
            table.add_column(col, justify="left" if col in ("runtime", "model") else "right")
        for m in memory:
            colour = "green" if m["run_ratio"] <= GOALS["rss_ratio"] else "red"
            table.add_row(m["runtime"], m["model"], f"{m['weight_bytes'] / 1e9:.2f} GB",
                          f"{m['run_peak_rss_bytes'] / 1e9:.2f} GB", f"[{colour}]{m['run_ratio']:.2f}x",
                          f"{m['process_peak_rss_bytes'] / 1e9:.2f} GB" if m["process_peak_rss_bytes"] else "-")
        console.print(table)

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(summary, sort_keys=True) + "\n")
    console.print(f"perf summary appended to {out}")


def _compute(roof: dict | None) -> str:
    """The first token's fraction of the compute ceiling, or why it has none."""
    if not roof or roof.get("fraction_of_ceiling") is None:
        return (roof or {}).get("bound", "-").split(":")[0]
    colour = "green" if roof["fraction_of_ceiling"] >= GOALS["compute"] else "red"
    return (f"[{colour}]{100 * roof['fraction_of_ceiling']:.0f}%[/{colour}] of "
            f"{roof['peak_flops_per_s'] / 1e9:.0f} GFLOP/s {roof['compute_precision']}")


if __name__ == "__main__":
    main()
