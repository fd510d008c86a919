"""`make prefill-profile`: where ONNX Runtime's first token goes, against the compute ceiling (issue 18).

`make perf` reads the first token (an encoder pass, or a decoder-only prefill) as a fraction of
the compute ceiling: the first token's FLOPs (models/cost.py) over the best FLOP/s this machine's
runtime MatMul reaches (host/compute.py). This tool says why a fraction is what it is: each model
is loaded by the project's own ONNX Runtime runner, exactly as `slmbench run` loads it, except
that its sessions run ONNX Runtime's profiler, which normal runs never enable. Each repetition is
the harness's first token (start, encode, first decode step); the profiler's node events are
summed by op type and, for the matrix products, pooled by node across layers, each with its
FLOPs (from the shapes the profiler recorded: 2 x output elements x inner dimension) and the
FLOP/s it reached, beside the ceiling and the ceiling's own per-shape readings. The first
repetition is a warm-up and is left out. One JSON line goes to --out; a table is printed.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import click
import numpy as np

from slmbench.core.child import in_fresh_process
from slmbench.runners.onnxruntime import OnnxRuntimeRunner

PRODUCTS = ("MatMul", "FusedMatMul", "Gemm")


class ProfilingRunner(OnnxRuntimeRunner):
    """The ONNX Runtime runner with the profiler on in every session it creates (this tool only)."""

    def _options(self, path):
        opts = super()._options(path)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(self.profile_dir) / path.stem)
        return opts

    def _session(self, path):
        session = super()._session(path)
        self.profiled = [*getattr(self, "profiled", []), session]
        return session


def product_flops(event: dict) -> int:
    """A matrix product's FLOPs from the shapes the profiler recorded: 2 x output elements x the
    first input's last dimension (no transposed A in these graphs)."""
    (a,) = event["args"]["input_type_shape"][0].values()
    (out,) = event["args"]["output_type_shape"][0].values()
    return 2 * int(np.prod(out)) * int(a[-1])


def node_events(files: list[str], runs: int) -> list[dict]:
    """The node events of the last `runs` model runs of each profile file (earlier runs are warm-up)."""
    found = []
    for file in files:
        events = json.loads(Path(file).read_text())
        starts = [e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
        if not starts:
            continue
        # each first token runs every session once, so a session's last `runs` model runs are the timed ones
        since = sorted(starts)[-runs] if len(starts) >= runs else starts[0]
        found += [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
                  and e["ts"] >= since]
    return found


def summarize(events: list[dict], runs: int, wall_s: float) -> dict:
    """Node time by op type and the matrix products pooled by node name across layers, per first token."""
    by_type: dict[str, float] = {}
    pools: dict[str, dict] = {}
    for e in events:
        kind, seconds = e["args"]["op_name"], e["dur"] * 1e-6 / runs
        by_type[kind] = by_type.get(kind, 0.0) + seconds
        if kind in PRODUCTS:
            name = re.sub(r"\.\d+/", ".N/", e["name"].removesuffix("_kernel_time"))
            pool = pools.setdefault(name, {"node": name, "op": kind, "nodes": 0, "s": 0.0, "flops": 0})
            pool["nodes"] += 1 / runs
            pool["s"] += seconds
            pool["flops"] += product_flops(e) / runs
    products = sorted(pools.values(), key=lambda p: -p["s"])
    for p in products:
        p["nodes"] = round(p["nodes"])
        p["flops_per_s"] = p["flops"] / p["s"] if p["s"] > 0 else None
    nodes_s = sum(by_type.values())
    product_s, product_flops_ = sum(p["s"] for p in products), sum(p["flops"] for p in products)
    return {"wall_s": wall_s, "nodes_s": nodes_s, "gap_s": wall_s - nodes_s, "by_type": by_type,
            "products": products, "product_s": product_s, "product_flops": product_flops_,
            "product_flops_per_s": product_flops_ / product_s if product_s > 0 else None}


def profile_model(model: str, input_len: int, reps: int, threads: int, cache_dir, profile_dir: str) -> dict:
    """Load `model` with the project's ONNX Runtime runner, profiler on, and run its first token
    `reps` + 1 times as the harness does (start, encode, first decode step), timing each; the
    first is left out. Run it in a fresh process."""
    from slmbench.config import RunConfig, RunSettings
    from slmbench.core.benchmark import prepare_and_load
    from slmbench.core.inputs import model_inputs

    settings = RunSettings(input_len=input_len, output_len=1, warmup=0, min_reps=1, min_time_s=0.0)
    config = RunConfig.create(model, "cpu", "onnxruntime", settings=settings, threads=threads)
    runner = ProfilingRunner(config.device, config.threads, config.option_dict)
    runner.profile_dir = profile_dir
    loaded = prepare_and_load(config, None, cache_dir, log=lambda message: None, runner=runner)
    spec = loaded.spec
    ids = model_inputs(settings, spec).slots[0]
    first = (np.full((1, 1), spec.config.decoder_start_token, np.int64) if spec.config.is_encoder_decoder else ids)
    walls = []
    for _ in range(reps + 1):
        started = time.perf_counter_ns()
        runner.start(ids, 1)
        if spec.config.is_encoder_decoder:
            runner.encode(ids)
        runner.decode(first)
        walls.append((time.perf_counter_ns() - started) * 1e-9)
    files = [session.end_profiling() for session in runner.profiled]
    runner.close()
    found = summarize(node_events(files, reps), reps, float(np.mean(walls[1:])))
    return {"model": model, "family": spec.family.value, "walls_s": walls[1:], **found}


def _print(console, line: dict) -> None:
    from rich.table import Table

    ceiling = line["ceiling"]
    console.print(f"compute ceiling {ceiling['flops_per_s'] / 1e9:.0f} GFLOP/s ({ceiling['method']}); the same MatMul "
                  "by shape: " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in ceiling["kernels"].items()))
    for m in line["models"]:
        table = Table(title=f"{m['model']}: first token after a {line['input_len']}-token prompt, mean wall "
                            f"{m['wall_s'] * 1e3:.0f} ms ({line['threads']} threads, fp32)", title_justify="left")
        for col in ("part", "ms", "of wall", "GFLOP", "GFLOP/s", "of ceiling"):
            table.add_column(col, justify="left" if col == "part" else "right")
        wall, peak = m["wall_s"], ceiling["flops_per_s"]
        for p in m["products"][:8]:
            rate = p["flops_per_s"] or 0
            table.add_row(f"{p['node']} x{p['nodes']}", f"{p['s'] * 1e3:.1f}", f"{100 * p['s'] / wall:.0f}%",
                          f"{p['flops'] / 1e9:.1f}", f"{rate / 1e9:.0f}", f"{rate / peak:.2f}")
        rate = m["product_flops_per_s"] or 0
        table.add_row("all matrix products", f"{m['product_s'] * 1e3:.1f}", f"{100 * m['product_s'] / wall:.0f}%",
                      f"{m['product_flops'] / 1e9:.1f}", f"{rate / 1e9:.0f}", f"{rate / peak:.2f}")
        others = sorted(((k, v) for k, v in m["by_type"].items() if k not in PRODUCTS), key=lambda kv: -kv[1])
        for kind, seconds in others[:5]:
            table.add_row(kind, f"{seconds * 1e3:.1f}", f"{100 * seconds / wall:.0f}%", "", "", "")
        table.add_row("gap: wall - node sum", f"{m['gap_s'] * 1e3:.1f}", f"{100 * m['gap_s'] / wall:.0f}%", "", "", "")
        console.print(table)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "-m", "models", multiple=True, default=("deconly-330m", "mu-330m"), show_default=True)
@click.option("--input-len", "-i", type=int, default=512, show_default=True)
@click.option("--reps", "-n", type=int, default=3, show_default=True, help="First tokens profiled (after one more).")
@click.option("--threads", "-t", type=int, default=None, help="Default: physical cores.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("results/perf/prefill-profile.jsonl"),
              show_default=True)
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None, help="Artifact cache.")
def main(models, input_len, reps, threads, out, cache_dir):
    """Per-node profile of ONNX Runtime's CPU first token, against the compute ceiling.

    \b
    Example:
      python -m slmbench.tools.prefill_profile -m deconly-330m -m mu-330m
    """
    import tempfile

    from rich.console import Console

    from slmbench.exporters.artifact import default_cache_dir
    from slmbench.host.compute import host_peak_flops
    from slmbench.host.cpus import default_threads
    from slmbench.host.environment import environment, this_machine
    from slmbench.results import append_row

    console = Console(width=160)
    threads = threads or default_threads()
    ceiling = host_peak_flops("onnxruntime", "f32", threads, cache_dir or default_cache_dir())
    line = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": this_machine(),
            "environment": environment(), "threads": threads, "input_len": input_len, "reps": reps,
            "runtime": "onnxruntime", "precision": "fp32", "ceiling": ceiling, "models": []}
    with tempfile.TemporaryDirectory(prefix="slmbench-prefill-") as profile_dir:
        for model in models:
            console.log(f"{model}: {reps + 1} first tokens with ONNX Runtime's profiler")
            line["models"].append(in_fresh_process(profile_model, model, input_len, reps, threads, cache_dir,
                                                   profile_dir))
    _print(console, line)
    append_row(out, line)  # the results files' own append: whole lines, a torn last line kept apart
    console.print(f"profile appended to {out}")


if __name__ == "__main__":
    main()
