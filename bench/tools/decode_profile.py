"""`make decode-profile`: where an OpenVINO CPU decode step's time goes (issue 18).

`make perf` reads OpenVINO's batch-1 decode at about half of the bandwidth ceiling. This tool
asks the CPU plugin itself: each model is loaded by the project's own OpenVINO runner, exactly as
`slmbench run` loads it (core.benchmark.prepare_and_load, huge pages included), except that its
graphs are compiled with PERF_COUNT, which normal runs never set. After the prompt, every decode
step is timed as the harness times it (runner.decode) and the plugin's per-node counters
(`get_profiling_info()` on the request the session holds) are read after it, outside the timed
call. The plugin reports each node's running mean since compile in whole microseconds, so a
node's time over a span of steps comes from two readings and the count of inferences between
(`totals`): exact to about a microsecond per node per step over the whole span, coarser for one
step. For the mean step (and for each step, coarser) it reports the wall time, the node times
summed by node type and by group, the gap wall - sum (dispatch, synchronisation, the Python
call), and the bandwidth the FullyConnected nodes reached: the bytes of their weights (from the
compiled runtime model) over their time, against a read-bandwidth reading taken on the spot with
host/roofline.py's kernels, before and after the models, and the machine's stored best. The same
steps without PERF_COUNT (another fresh process) say what the profiling itself costs. One JSON
line goes to --out; a table is printed.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import click
import numpy as np

from slmbench.core.child import in_fresh_process
from slmbench.runners.openvino.runner import OpenVinoRunner

# The CPU plugin's node types (its runtime model's layerType), in the groups the report shows;
# any other executed type counts as "other".
GROUPS = {
    "matmul": ("FullyConnected", "MatMul"),
    "attention": ("ScaledDotProductAttention", "ScaledDotProductAttentionWithKVCache", "Softmax"),
    "gather": ("Gather", "GatherND", "GatherElements"),
    "eltwise/norm": ("Eltwise", "Subgraph", "Add", "Subtract", "Multiply", "Divide", "Power", "Sqrt", "RMS",
                     "MVN", "Gelu", "Swish", "Sin", "Cos", "Select", "LessEqual", "Range", "PowerStatic"),
    "reorder/convert": ("Reorder", "Convert"),
    "state": ("ReadValue", "Assign"),
    "shape/layout": ("Reshape", "Transpose", "Concat", "VariadicSplit", "Split", "ShapeOf", "Broadcast",
                     "Squeeze", "Unsqueeze", "StridedSlice", "Slice"),
}
GROUP_OF = {kind: group for group, kinds in GROUPS.items() for kind in kinds}
FC = "FullyConnected"


class ProfilingRunner(OpenVinoRunner):
    """The OpenVINO runner with the plugin's per-node counters on (PERF_COUNT), for this tool only;
    it counts the decoder's inferences (priming included), which the counters need (cumulative)."""

    inferences = 0

    def _compile(self, core, path, target, config):
        return super()._compile(core, path, target, {**config, "PERF_COUNT": True})

    def decode(self, input_ids):
        self.inferences += 1
        return super().decode(input_ids)


def fc_weights(compiled) -> dict[str, dict]:
    """Each FullyConnected node of a compiled model: its weight input's shape and bytes as the
    plugin holds them (the runtime model), by the name its profiling entries carry."""
    found = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        if op.get_rt_info()["layerType"].astype(str) != FC:
            continue
        weight = op.input(1).get_source_output()
        shape = [d.get_length() for d in weight.get_partial_shape()]
        found[op.get_friendly_name()] = {"shape": shape,
                                         "bytes": int(np.prod(shape)) * weight.get_element_type().size}
    return found


def totals(info, inferences: int) -> dict[tuple, tuple]:
    """Each executed node's time summed over the request's `inferences` so far, in seconds, with
    the half-width of what that sum can be. The CPU plugin reports a node's running mean since
    compile, floored to whole microseconds (intel_cpu perf_count.h: total / count), never one
    inference's time; so the sum lies in [mean * n, mean * n + n - 1] us and the midpoint is kept."""
    found = {}
    for index, node in enumerate(info):
        mean_us = node.real_time // timedelta(microseconds=1)
        if mean_us > 0:
            found[(index, node.node_name)] = (node.node_type, node.exec_type,
                                              (mean_us * inferences + (inferences - 1) / 2) * 1e-6,
                                              (inferences - 1) / 2 * 1e-6)
    return found


def block_profile(before: dict, after: dict, weights: dict[str, dict], wall_s: list[float]) -> dict:
    """The mean decode step between two snapshots of `totals` (len(wall_s) steps apart): its wall
    time, node times by type and by group, the gap wall - sum (dispatch, synchronisation, the Python
    call, and the plugin's flooring of each node to whole microseconds), the bound on the node sum,
    and the FullyConnected nodes' time, weight bytes and bytes per second; also each FC node's
    time and kernel."""
    steps = len(wall_s)
    by_type: dict[str, float] = {}
    fc_nodes, bound = {}, 0.0
    for key, (kind, kernel, total, half) in after.items():
        _, _, earlier, half_before = before.get(key, (kind, kernel, 0.0, 0.0))
        seconds = (total - earlier) / steps
        bound += (half + half_before) / steps
        by_type[kind] = by_type.get(kind, 0.0) + seconds
        if kind == FC and key[1] in weights:
            fc_nodes[key[1]] = (seconds, kernel)
    groups: dict[str, float] = {}
    for kind, seconds in by_type.items():
        groups[GROUP_OF.get(kind, "other")] = groups.get(GROUP_OF.get(kind, "other"), 0.0) + seconds
    wall, nodes_s = float(np.mean(wall_s)), sum(by_type.values())
    fc_s = sum(s for s, _ in fc_nodes.values())
    fc_bytes = sum(weights[name]["bytes"] for name in fc_nodes)
    return {"steps": steps, "wall_s": wall, "nodes_s": nodes_s, "nodes_bound_s": bound, "gap_s": wall - nodes_s,
            "executed_nodes": len(after), "groups": groups, "by_type": by_type, "fc_s": fc_s,
            "fc_weight_bytes": fc_bytes, "fc_bytes_per_s": fc_bytes / fc_s if fc_s > 0 else None,
            "fc_nodes": {name: list(v) for name, v in fc_nodes.items()}}


def _fc_shapes(block: dict, weights: dict[str, dict]) -> list[dict]:
    """FullyConnected nodes pooled by weight shape: count, bytes, time per step, bandwidth, kernels."""
    pools: dict[tuple, dict] = {}
    for name, w in weights.items():
        pool = pools.setdefault(tuple(w["shape"]), {"shape": w["shape"], "nodes": 0, "bytes": 0, "s": 0.0,
                                                    "kernels": set()})
        pool["nodes"] += 1
        pool["bytes"] += w["bytes"]
        if name in block["fc_nodes"]:
            seconds, kernel = block["fc_nodes"][name]
            pool["s"] += seconds
            pool["kernels"].add(kernel)
    return sorted(({**p, "kernels": sorted(p["kernels"]), "bytes_per_s": p["bytes"] / p["s"] if p["s"] > 0 else None}
                   for p in pools.values()), key=lambda p: -p["bytes"])


def profile_model(model: str, input_len: int, steps: int, threads: int, precision: str, profiled: bool,
                  cache_dir) -> dict:
    """Load `model` with the project's OpenVINO runner (profiling on or off), run the prompt, then
    time `steps` decode steps as the harness does (runner.decode); with profiling, the node
    counters are read after the prompt and after every step, outside the timed call. The mean
    step comes from the first and last reading; each step's own from consecutive ones (their
    bound is wider: the counters are running means). Run it in a fresh process."""
    from slmbench.config import RunConfig, RunSettings
    from slmbench.core.benchmark import prepare_and_load
    from slmbench.core.inputs import model_inputs

    settings = RunSettings(input_len=input_len, output_len=steps + 1, warmup=0, min_reps=1, min_time_s=0.0)
    config = RunConfig.create(model, "cpu", "openvino", precision=precision, settings=settings, threads=threads)
    cls = ProfilingRunner if profiled else OpenVinoRunner
    loaded = prepare_and_load(config, None, cache_dir, log=lambda message: None,
                              runner=cls(config.device, config.threads, config.option_dict))
    runner, spec = loaded.runner, loaded.spec
    request = runner.session.request  # the decoder's request (runners/openvino/stateful.py)
    weights = fc_weights(request.get_compiled_model()) if profiled else {}
    read = (lambda: totals(request.get_profiling_info(), runner.inferences)) if profiled else dict
    ids = model_inputs(settings, spec).slots[0]
    encoder_decoder = spec.config.is_encoder_decoder
    runner.start(ids, steps + 1)
    if encoder_decoder:
        runner.encode(ids)
    token = runner.decode(np.full((1, 1), spec.config.decoder_start_token, np.int64) if encoder_decoder else ids)
    clock, walls, snapshots = time.perf_counter_ns, [], [read()]
    for _ in range(steps):
        step = np.ascontiguousarray(token, dtype=np.int64).reshape(1, 1)
        started = clock()
        token = runner.decode(step)
        walls.append((clock() - started) * 1e-9)
        snapshots.append(read())
    runner.close()
    found = {"model": model, "family": spec.family.value, "profiled": profiled, "wall_s": walls,
             "weight_bytes": loaded.artifact.weight_bytes, "huge_pages": loaded.huge_pages,
             "runtime_options": loaded.load.options}
    if profiled:
        found.update(fc_weights=weights, mean=block_profile(snapshots[0], snapshots[-1], weights, walls),
                     steps=[block_profile(a, b, weights, [w]) for a, b, w in zip(snapshots[:-1], snapshots[1:],
                                                                                   walls, strict=True)])
        found["fc_by_shape"] = _fc_shapes(found["mean"], weights)
        for step in found["steps"]:  # the per-node detail is in the mean only
            del step["fc_nodes"], step["by_type"]
    return found


def summarize(profiled: dict, plain: dict, spot: float, ceiling: float, bytes_per_token: float) -> dict:
    """The mean step against the bandwidth: the FC nodes' bytes per second as fractions of the spot
    reading and of the stored ceiling; the unprofiled steps' tokens/s against the ceiling (what
    `make perf` reports) and what profiling added to the wall time."""
    mean, fc_bw = profiled["mean"], profiled["mean"]["fc_bytes_per_s"]
    plain_wall = float(np.mean(plain["wall_s"]))
    return {"profiling_overhead": mean["wall_s"] / plain_wall, "plain_wall_s": plain_wall,
            "fc_weight_bytes": sum(w["bytes"] for w in profiled["fc_weights"].values()),
            "fc_of_spot_bandwidth": fc_bw / spot if fc_bw else None,
            "fc_of_ceiling": fc_bw / ceiling if fc_bw else None,
            "bytes_per_token": bytes_per_token, "plain_tokens_per_s": 1 / plain_wall,
            "plain_of_ceiling": bytes_per_token / plain_wall / ceiling,
            "plain_of_spot_bandwidth": bytes_per_token / plain_wall / spot}


def _print(console, line: dict) -> None:
    from rich.table import Table

    bw = line["bandwidth"]
    spot = bw["spot_bytes_per_s"]
    console.print(f"read bandwidth on the spot {spot / 1e9:.1f} GB/s before the models, "
                  f"{bw['spot_after']['read_bytes_per_s'] / 1e9:.1f} after ({bw['spot']['method']}); the stored best "
                  f"{bw['ceiling_bytes_per_s'] / 1e9:.1f} GB/s")
    for m in line["models"]:
        mean, s = m["mean"], m["summary"]
        table = Table(title=f"{m['model']}: the mean of {mean['steps']} decode steps after a {line['input_len']}-token "
                            f"prompt ({line['threads']} threads, {line['precision']})", title_justify="left")
        for col in ("part", "ms", "of wall"):
            table.add_column(col, justify="left" if col == "part" else "right")
        rows = [("wall (profiled)", mean["wall_s"]), ("wall (no profiling)", s["plain_wall_s"])]
        rows += sorted(mean["groups"].items(), key=lambda kv: -kv[1])
        rows += [(f"sum of {mean['executed_nodes']} nodes (+- {mean['nodes_bound_s'] * 1e3:.2f})", mean["nodes_s"]),
                 ("gap: wall - sum", mean["gap_s"])]
        for part, seconds in rows:
            table.add_row(part, f"{seconds * 1e3:.2f}", f"{100 * seconds / mean['wall_s']:.0f}%")
        console.print(table)
        table = Table(title=f"{m['model']}: FullyConnected nodes by weight shape", title_justify="left")
        for col in ("shape", "nodes", "MB", "ms", "GB/s", "of spot", "kernel"):
            table.add_column(col, justify="left" if col in ("shape", "kernel") else "right")
        for p in m["fc_by_shape"]:
            rate = p["bytes_per_s"] or 0
            table.add_row("x".join(map(str, p["shape"])), str(p["nodes"]), f"{p['bytes'] / 1e6:.1f}",
                          f"{p['s'] * 1e3:.2f}", f"{rate / 1e9:.1f}", f"{rate / spot:.2f}", ", ".join(p["kernels"]))
        console.print(table)
        console.print(f"FC weights {s['fc_weight_bytes'] / 1e6:.0f} MB of the {s['bytes_per_token'] / 1e6:.0f} MB a "
                      f"step reads; the FC nodes read {(mean['fc_bytes_per_s'] or 0) / 1e9:.1f} GB/s = "
                      f"{s['fc_of_spot_bandwidth'] or 0:.2f} of the spot reading, {s['fc_of_ceiling'] or 0:.2f} of the "
                      f"stored best; unprofiled decode {s['plain_tokens_per_s']:.1f} tok/s = "
                      f"{s['plain_of_ceiling']:.2f} of the stored best's ceiling, {s['plain_of_spot_bandwidth']:.2f} "
                      "of the spot reading's")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "-m", "models", multiple=True, default=("deconly-330m", "mu-330m"), show_default=True)
@click.option("--input-len", "-i", type=int, default=512, show_default=True)
@click.option("--steps", "-n", type=int, default=32, show_default=True, help="Decode steps profiled.")
@click.option("--threads", "-t", type=int, default=None, help="Default: physical cores.")
@click.option("--precision", "-p", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--bandwidth-mb", type=int, default=512, show_default=True,
              help="Buffer of the on-the-spot bandwidth reading (host/roofline.py).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("results/perf/decode-profile.jsonl"),
              show_default=True)
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None, help="Artifact cache.")
def main(models, input_len, steps, threads, precision, bandwidth_mb, out, cache_dir):
    """Per-node profile of OpenVINO CPU decode steps, against the memory bandwidth.

    \b
    Example:
      python -m slmbench.tools.decode_profile -m deconly-330m -m mu-330m
    """
    from rich.console import Console

    from slmbench.exporters.artifact import default_cache_dir
    from slmbench.host.cpus import default_threads
    from slmbench.host.environment import environment, this_machine
    from slmbench.host.roofline import host_bandwidth, measure_bandwidth
    from slmbench.models import resolve_model
    from slmbench.models.cost import mean_decode_bytes
    from slmbench.results import append_row

    console = Console(width=160)
    threads = threads or default_threads()
    store = cache_dir or default_cache_dir()
    spot = measure_bandwidth(threads, megabytes=bandwidth_mb, trials=3)
    ceiling = host_bandwidth(threads, store)
    line = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": this_machine(),
            "environment": environment(), "threads": threads, "input_len": input_len, "steps": steps,
            "precision": precision, "models": []}
    for model in models:
        console.log(f"{model}: without profiling, then with")
        plain = in_fresh_process(profile_model, model, input_len, steps, threads, precision, False, cache_dir)
        profiled = in_fresh_process(profile_model, model, input_len, steps, threads, precision, True, cache_dir)
        cost = mean_decode_bytes(resolve_model(model).config, precision, input_len, steps + 1)
        profiled["summary"] = summarize(profiled, plain, spot["read_bytes_per_s"], ceiling["read_bytes_per_s"],
                                        cost["bytes_per_token"])
        profiled["plain_wall_s"] = plain["wall_s"]
        line["models"].append(profiled)
    after = measure_bandwidth(threads, megabytes=bandwidth_mb, trials=3)
    line["bandwidth"] = {"spot": spot, "spot_after": after, "spot_bytes_per_s": spot["read_bytes_per_s"],
                         "ceiling": ceiling, "ceiling_bytes_per_s": ceiling["read_bytes_per_s"]}
    _print(console, line)
    append_row(out, line)  # the results files' own append: whole lines, a torn last line kept apart
    console.print(f"profile appended to {out}")


if __name__ == "__main__":
    main()
