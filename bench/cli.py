"""The command line: thin click commands over the library (the library never sees click).

Errors a user can act on print one line and exit with code 2; Ctrl-C exits with 130 after
everything already measured has been written.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import click

from slmbench.errors import BenchError

DEFAULT_PAIR = ("mu-330m", "deconly-330m")


def _console():
    from rich.console import Console

    # Piped output (CI logs, files) gets a wide table instead of rich's 80-column default.
    return Console() if sys.stdout.isatty() else Console(width=200)


def _user_errors() -> tuple[type[BaseException], ...]:
    from slmbench.exporters.artifact import ArtifactError
    from slmbench.exporters.parity import ParityError
    from slmbench.models.config import ConfigError

    return (BenchError, ConfigError, ArtifactError, ParityError)


class Group(click.Group):
    """Turns user errors into one line and exit 2, never a traceback."""

    def invoke(self, ctx):
        import warnings

        # Library warnings (a re-export, a noisy metric) reach the user as one plain line, for this
        # command only: the caller's warning display is back when it returns.
        previous = warnings.showwarning
        warnings.showwarning = lambda message, *args, **kwargs: click.echo(f"warning: {message}", err=True)
        try:
            return super().invoke(ctx)
        except _user_errors() as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: every completed result row is kept", err=True)
            ctx.exit(130)
        finally:
            warnings.showwarning = previous


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="slmbench")
def cli():
    """slmbench: first-token latency and throughput of small encoder-decoder vs decoder-only
    language models, on CPU, CUDA GPU and Intel NPU.

    \b
    Quick start:
      slmbench models                      # the presets
      slmbench run                         # the paper's 330M pair on this CPU
      slmbench run --device npu --model mu-330m
    """


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--cost", is_flag=True, help="The analytic cost of one generation instead: FLOPs, weight and KV bytes, "
                                           "and each pair's ratios beside the paper's.")
@click.option("--model", "-m", "model_names", multiple=True, help="With --cost: presets or hf:PATH (default: "
                                                                  "every preset pair).")
@click.option("--input-len", "-i", type=int, default=512, show_default=True, help="With --cost: input tokens.")
@click.option("--output-len", "-o", type=int, default=128, show_default=True, help="With --cost: generated tokens.")
@click.option("--precision", "-p", default="fp32", show_default=True, help="With --cost: weight precision.")
def models(as_json, cost, model_names, input_len, output_len, precision):
    """List model presets with family, layers, width, heads and exact parameter count.

    With --cost: FLOPs to the first token, of decoding and of the whole generation, weight bytes,
    KV-cache bytes and the largest activation, computed from each config (models/cost.py); and
    for each encoder-decoder / decoder-only pair, the ratios the paper claims (22% fewer
    generation FLOPs, 11-16% less memory).

    \b
    Examples:
      slmbench models
      slmbench models --cost -i 512 -o 128
      slmbench models --cost -m mu-100m -m deconly-100m -i 2048 -o 64 --json
    """
    from rich.table import Table

    from slmbench.models import PRESETS, resolve_model

    if cost:
        from slmbench.errors import InvalidOption
        from slmbench.models.cost import BYTES_PER_PARAM, generation_cost, pair_ratios
        from slmbench.models.presets import PAIRS
        from slmbench.report.terminal import cost_tables

        if input_len <= 0 or output_len <= 0:
            raise InvalidOption("--input-len and --output-len must be positive")
        if precision not in BYTES_PER_PARAM:
            raise InvalidOption(f"unknown precision {precision!r}; choose from {', '.join(BYTES_PER_PARAM)}")
        names = list(model_names) or [n for pair in PAIRS.items() for n in reversed(pair)]
        specs = [resolve_model(n) for n in names]
        rows = [{"model": s.name, "family": s.family.value,
                 **generation_cost(s.config, input_len, output_len, precision)} for s in specs]
        by_name = {r["model"]: r for r in rows}
        pairs = [{"encoder_decoder": ed, "decoder_only": do, **pair_ratios(by_name[ed], by_name[do])}
                 for do, ed in PAIRS.items() if ed in by_name and do in by_name]
        if as_json:
            import json

            click.echo(json.dumps({"input_len": input_len, "output_len": output_len, "precision": precision,
                                   "models": rows, "pairs": pairs}, indent=2))
            return
        for table in cost_tables(rows, pairs, input_len, output_len, precision):
            _console().print(table)
        return
    rows = [resolve_model(name).describe() for name in PRESETS]
    if as_json:
        import json

        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="model presets (random weights from a fixed seed; hf:PATH for checkpoints)",
                  title_justify="left")
    for col in ("model", "family", "enc", "dec", "hidden", "q/kv heads x dim", "ffn", "vocab", "parameters"):
        table.add_column(col, justify="left" if col in ("model", "family") else "right")
    for r in rows:
        table.add_row(r["model"], r["family"], str(r["encoder_layers"]), str(r["decoder_layers"]), str(r["hidden"]),
                      f"{r['heads']}/{r['kv_heads']} x {r['head_dim']}", str(r["ffn"]), str(r["vocab"]),
                      f"{r['parameters']:,}")
    _console().print(table)


def _cache_option(f):
    return click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
                        help="Artifact cache (default $SLMBENCH_CACHE_DIR or ~/.cache/slmbench/artifacts).")(f)


def _trust_option(f):
    """--trust-remote-code: SLMBENCH_TRUST_REMOTE_CODE (models/hf.py) for the command's duration,
    so the processes it starts (sweep workers, exports) inherit it; restored when it returns."""
    def remember(ctx, param, value):
        if value:
            import os

            from slmbench.models.hf import TRUST_ENV

            previous = os.environ.get(TRUST_ENV)
            os.environ[TRUST_ENV] = "1"
            ctx.call_on_close(lambda: os.environ.pop(TRUST_ENV) if previous is None
                              else os.environ.__setitem__(TRUST_ENV, previous))

    return click.option("--trust-remote-code", is_flag=True, expose_value=False, callback=remember,
                        help="Let hf: checkpoints run their own Python code (off by default; only code you "
                             "trust).")(f)


@cli.command()
@click.option("--model", "-m", "model_names", multiple=True, default=DEFAULT_PAIR, show_default=True,
              help="Preset name or hf:PATH; repeat for several.")
@click.option("--runtime", "-r", default="onnxruntime", show_default=True,
              help="Which exporter's artifact: onnxruntime (ONNX) or openvino (IR).")
@click.option("--precision", "-p", default="fp32", show_default=True)
@click.option("--force", is_flag=True, help="Re-export even when a valid cached artifact exists.")
@_cache_option
@_trust_option
def export(model_names, runtime, precision, force, cache_dir):
    """Export models to runnable artifacts, check them against PyTorch, and cache them.

    \b
    Example:
      slmbench export --model mu-tiny --model deconly-tiny
    """
    from slmbench.errors import InvalidOption
    from slmbench.models import resolve_model
    from slmbench.runners import RUNNERS

    if runtime not in RUNNERS:
        raise InvalidOption(f"unknown runtime {runtime!r}; choose from {', '.join(RUNNERS)}")
    if RUNNERS[runtime].artifact_format == "torch":
        raise InvalidOption("the torch runner runs the PyTorch modules directly: there is nothing to export")
    for name in model_names:
        spec = resolve_model(name)
        artifact, reused = RUNNERS[runtime]("cpu").prepare(spec, precision, cache_dir, force)
        parity = artifact.manifest["parity"]
        state = "cached" if reused else f"exported in {artifact.manifest['export_seconds']:.1f}s"
        click.echo(f"{name}: {state} -> {artifact.path} (parity max |dlogit| {parity['max_abs_diff']:.2e}, "
                   f"tolerance {parity['tolerance']:g})")


@cli.group()
def cache():
    """The artifact cache: exported graphs, keyed by model, format, variant and exporter code.

    \b
    Example:
      slmbench cache prune --dry-run
    """


@cache.command("prune")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@_cache_option
def cache_prune(dry_run, cache_dir):
    """Keep the newest artifact of each model, format and variant; remove the rest.

    Older exports of the same model were made by earlier exporter or model code and are never
    used again; folders that are not readable artifacts and leftovers of killed exports go too.

    \b
    Examples:
      slmbench cache prune --dry-run
      slmbench cache prune --cache-dir /data/slmbench-cache
    """
    from slmbench.exporters.artifact import prune_cache

    done = prune_cache(cache_dir, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for entry in done["removed"]:
        click.echo(f"{verb} {entry['path']} ({entry['bytes'] / 2**20:.0f} MiB): {entry['why']}")
    kept = sum(k["bytes"] for k in done["kept"])
    click.echo(f"{verb} {len(done['removed'])} folders, {done['freed_bytes'] / 2**30:.2f} GiB; kept "
               f"{len(done['kept'])} artifacts, {kept / 2**30:.2f} GiB")


def _openvino_run_options(f):
    """OpenVINO's few run options; they travel in run_benchmark's `options` (the modes and their
    options: bench/runners/openvino/modes.py)."""
    from slmbench.runners.openvino import MODES

    f = click.option("--ov-cache-dir", type=click.Path(path_type=Path), default=None,
                     help="OpenVINO CACHE_DIR: compiled blobs are cached there (cold vs warm compile).")(f)
    f = click.option("--kv-cache-precision", default=None,
                     help="OpenVINO KV cache precision (f32, f16, u8, ...; default f32).")(f)
    return click.option("--ov-mode", type=click.Choice(list(MODES)), default=None,
                        help="OpenVINO graphs: stateful KV (default on cpu/gpu), static shapes (default on "
                             "npu), npuw (the NPU plugin's LLM pipeline, decoder-only).")(f)


def _openvino_options(device, runtimes, mode, kv_precision, cache_dir) -> dict | None:
    """The user's OpenVINO options (the runner adds its defaults), or None without OpenVINO."""
    from slmbench.errors import InvalidOption

    given = [flag for flag, value in (("--ov-mode", mode), ("--kv-cache-precision", kv_precision),
                                      ("--ov-cache-dir", cache_dir)) if value]
    if not ("openvino" in runtimes or (not runtimes and device in ("gpu", "npu"))):
        if given:
            raise InvalidOption(f"{', '.join(given)} apply to OpenVINO only; add --runtime openvino")
        return None
    options = {"mode": mode} if mode else {}
    if kv_precision:
        options["kv_cache_precision"] = kv_precision
    if cache_dir:
        options["ov_cache_dir"] = str(cache_dir)
    return options


@cli.command()
@click.option("--model", "-m", "model_names", multiple=True, default=DEFAULT_PAIR, show_default=True,
              help="Preset name or hf:PATH; repeat to compare (repetitions are interleaved).")
@click.option("--device", "-d", default="cpu", show_default=True, help="cpu, cuda, gpu (Intel) or npu.")
@click.option("--runtime", "-r", "runtimes", multiple=True,
              help="onnxruntime, openvino or torch (default: best for the device); repeat to compare runtimes "
                   "in one interleaved run.")
@click.option("--precision", "-p", default="fp32", show_default=True)
@click.option("--input-len", "-i", type=int, default=None,
              help="Prompt tokens: random ids (default 512), or with --prompt/--prompts each prompt cut or repeated "
                   "to this many of each model's tokens (default: the text as is).")
@click.option("--output-len", "-o", type=int, default=128, show_default=True, help="Generated tokens (EOS ignored).")
@click.option("--prompt", default=None,
              help="Text to feed instead of random ids, through each model's own tokenizer (hf: folders; presets "
                   "keep random ids).")
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), default=None,
              help="A file of prompts, one a line (plain text, or .jsonl: a string or {\"prompt\": ...} a line); "
                   "repetitions cycle through them, every model alike.")
@click.option("--image-size", type=int, default=None,
              help="Vision models (mu-vl-330m, deconly-vl-330m): the image's pixels a side, a whole number of the "
                   "tower's patches (default: its native size, 336: 576 image tokens).")
@click.option("--batch", "-b", type=int, default=1, show_default=True)
@click.option("--threads", "-t", type=int, default=None,
              help="Runtime threads (default: physical cores within the CPU affinity mask).")
@click.option("--warmup", type=int, default=1, show_default=True, help="Warm-up generations per model.")
@click.option("--min-reps", type=int, default=5, show_default=True, help="Minimum measured repetitions.")
@click.option("--min-time", type=float, default=10.0, show_default=True, help="Minimum measured seconds per model.")
@click.option("--max-reps", type=int, default=200, show_default=True)
@click.option("--target-ci", type=float, default=None,
              help="Repeat until the 95%% CI of median TTFT and TPOT is within this fraction (0.05 = +-5%), "
                   "up to --max-reps; never before 6 repetitions.")
@click.option("--results", type=click.Path(path_type=Path), default=Path("results/results.jsonl"),
              show_default=True, help="JSON Lines file the rows are appended to.")
@click.option("--require-quiet", is_flag=True,
              help="Wait (up to 60 s) for other processes to leave the CPUs before measuring, and record nothing "
                   "if the run competed for them all the same.")
@_cache_option
@_trust_option
@_openvino_run_options
def run(model_names, device, runtimes, precision, input_len, output_len, prompt, prompts_file, image_size, batch,
        threads, warmup, min_reps, min_time, max_reps, target_ci, require_quiet, results, cache_dir, ov_mode,
        kv_cache_precision, ov_cache_dir):
    """Measure TTFT and throughput; compare encoder-decoder with decoder-only in one interleaved run.

    \b
    Examples:
      slmbench run                                   # mu-330m vs deconly-330m on CPU
      slmbench run --device cpu --model mu-330m --model deconly-330m --input-len 512 --output-len 128
      slmbench run --device npu                      # OpenVINO on an Intel NPU
      slmbench run -m mu-tiny -m deconly-tiny -i 64 -o 16 --min-time 1
      slmbench run --runtime openvino -m deconly-330m -i 256 -o 64   # OpenVINO CPU, stateful KV
      slmbench run -r onnxruntime -r openvino -m deconly-330m -i 256 -o 64   # runtimes side by side
      slmbench run -m hf:./t5 -m hf:./qwen --prompt "Summarize: ..."   # one text, each model's tokenizer
      slmbench run -m hf:./t5 -m hf:./qwen --prompts prompts.jsonl -i 512  # every prompt fitted to 512 tokens
      slmbench run -m mu-vl-330m -m deconly-vl-330m -i 128 -o 64   # an image (576 tokens) and 128 text tokens
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from slmbench.config import RunSettings, plan
    from slmbench.core.benchmark import run_benchmark
    from slmbench.prompts import text_of
    from slmbench.report.terminal import (
        pair_ratios,
        ratio_table,
        runtime_table,
        summary_table,
        text_tables,
        vision_table,
    )
    from slmbench.results import append_rows, check_writable

    text = text_of(prompt, prompts_file, fit=input_len is not None)
    settings = RunSettings(batch=batch, input_len=512 if input_len is None else input_len, output_len=output_len,
                           warmup=warmup, min_reps=min_reps, min_time_s=min_time, max_reps=max_reps,
                           target_ci=target_ci, text=text, image_size=image_size)
    options = _openvino_options(device, runtimes, ov_mode, kv_cache_precision, ov_cache_dir)
    # An absent device, a repeated model or bad thread count fails here, before any progress display.
    configs = plan(model_names, device, list(runtimes) or [None], precision, settings, threads, options)
    specs = [c.spec() for c in configs]
    check_writable(results)
    console = _console()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        tasks = {}

        def progress(label, done):
            if label not in tasks:
                tasks[label] = bar.add_task(f"{label} repetitions", total=settings.min_reps)
            bar.update(tasks[label], completed=done, total=max(done, settings.min_reps))

        rows = run_benchmark(configs, cache_dir=cache_dir, log=lambda msg: console.log(msg), progress=progress,
                             specs=specs, require_quiet=require_quiet)
    console.print(summary_table(rows))
    ratios = pair_ratios(rows)
    if ratios:
        console.print(ratio_table(ratios))
    if len({r["runtime"] for r in rows}) > 1:
        console.print(runtime_table(rows))
    for table in [*text_tables(rows), vision_table(rows)]:
        if table is not None:
            console.print(table)
    for row in rows:
        for warning in row["warnings"]:
            console.print(f"[yellow]warning[/yellow] {row['model']}: {warning}")
    append_rows(results, rows)  # every row of the run in one write, after the table is on screen
    console.print(f"{len(rows)} rows appended to {results} (machine {rows[0]['machine']['name']})")


@cli.command()
def devices():
    """List every runtime/device pair, available or not, and why.

    \b
    Example:
      slmbench devices
    """
    from rich.table import Table

    from slmbench.runners import device_table

    table = Table(title="runtimes and devices on this machine", title_justify="left")
    for col in ("runtime", "device", "available", "reason"):
        table.add_column(col)
    for r in device_table():
        table.add_row(r["runtime"], r["device"], "[green]yes[/green]" if r["available"] else "[red]no[/red]",
                      r["reason"])
    _console().print(table)


EXIT_GRACE_S = 15.0  # an interrupted sweep has this long to tidy up before it is ended


@contextmanager
def _bounded_interrupt():
    """Ctrl-C (or SIGTERM) ends the sweep within EXIT_GRACE_S even if tidying up sticks (a thread
    on a lock, a dying child): every completed row is already on disk, so a timer then prints
    each thread's stack (for the bug report) and exits 130 without the rest."""
    import faulthandler
    import os
    import signal
    import threading

    def give_up():
        click.echo(f"interrupted: exiting after {EXIT_GRACE_S:g}s of clean-up; completed rows are kept; "
                   "the threads were here:", err=True)
        faulthandler.dump_traceback(all_threads=True)
        os._exit(130)

    def interrupt(signum, frame):
        if not armed:
            timer = threading.Timer(EXIT_GRACE_S, give_up)
            timer.daemon = True  # a clean exit does not wait for it
            timer.start()
            armed.append(timer)
        raise KeyboardInterrupt

    armed: list[threading.Timer] = []
    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@cli.command()
@click.argument("sweep_file")
@click.option("--results", type=click.Path(path_type=Path), default=None,
              help="JSON Lines file the rows are appended to (default results/<sweep name>/results.jsonl).")
@click.option("--force", is_flag=True, help="Measure again what the results file already has.")
@click.option("--timeout", type=float, default=None,
              help="Seconds one configuration may take, export included (default: the file's timeout_s).")
@click.option("--memory-limit", type=float, default=None,
              help="GiB of address space per configuration (default: the file's, else the RAM on CPU).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="auto", default=None, metavar="[ADDRESS|auto]",
              help="Run across a farm of hosts on Ray (the Ray cluster at ADDRESS, default auto): each configuration "
                   "on a node that has its device, rows appended here (extra: pip install 'slmbench[farm]').")
@_cache_option
@_trust_option
def sweep(sweep_file, results, force, timeout, memory_limit, ray_address, cache_dir):
    """Run a sweep file: each configuration in its own process, resumable, crash- and hang-proof.

    SWEEP_FILE is a TOML path or a shipped sweep: quick, paper-cpu, paper-gpu, paper-npu,
    input-scaling, budget-scaling, crossover, vision. A configuration already in the results file is skipped; a crash,
    hang or out-of-memory becomes a failed row and the sweep goes on; Ctrl-C keeps every completed
    row (exit 130; run again to resume); absent devices are reported once and skipped. Exit 1 when
    a configuration failed.

    \b
    Examples:
      slmbench sweep quick
      slmbench sweep paper-cpu                   # -> results/paper-cpu/results.jsonl
      slmbench sweep my-grid.toml --results results/mine.jsonl --timeout 600
      slmbench sweep paper-cpu --ray head-host:6379   # across the farm (slmbench farm join)
    """
    from slmbench.report.terminal import pair_ratios, ratio_table, summary_table
    from slmbench.sweep.files import check_memory_limit, check_timeout, load_sweep
    from slmbench.sweep.run import RichSweepProgress, SweepInterrupted, run_sweep

    if timeout is not None:
        check_timeout(timeout)
    if memory_limit is not None:
        check_memory_limit(memory_limit)
    if ray_address is not None:
        from slmbench.sweep.farm import require_ray

        require_ray()  # before the sweep file: without Ray, say how to install it
    plan = load_sweep(sweep_file)
    results = results or Path("results") / plan.name / "results.jsonl"
    console = _console()
    try:
        if ray_address is not None:
            from slmbench.sweep.farm import RichFarmProgress, run_farm_sweep

            with _bounded_interrupt(), RichFarmProgress(console) as progress:
                outcome = run_farm_sweep(plan, results, ray_address, force, timeout, memory_limit, cache_dir,
                                         progress)
        else:
            with _bounded_interrupt(), RichSweepProgress(console) as progress:
                outcome = run_sweep(plan, results, force, timeout, memory_limit, cache_dir, progress)
    except SweepInterrupted as exc:
        click.echo(str(exc), err=True)
        sys.exit(130)
    if outcome.rows:
        console.print(summary_table(outcome.rows, title=f"sweep {plan.name}: rows written by this run"))
        if ratios := pair_ratios(outcome.rows):
            console.print(ratio_table(ratios))
    console.print(f"sweep {plan.name}: {outcome.measured} configurations measured, {outcome.failed} failed, "
                  f"{outcome.done_before} already done, {len(outcome.skipped)} runtime/device combinations "
                  f"absent; {len(outcome.rows)} rows appended to {outcome.results}")
    if outcome.failed:
        sys.exit(1)


@cli.group()
def farm():
    """A farm of hosts on Ray for `slmbench sweep FILE --ray` (README, "A device farm").

    \b
    Example:
      slmbench farm join --head && slmbench sweep quick --ray
    """


@farm.command("join")
@click.argument("address", required=False)
@click.option("--head", is_flag=True, help="Start the farm's head on this host instead of joining one.")
@click.option("--print", "print_only", is_flag=True, help="Print the `ray start` line instead of running it.")
def farm_join(address, head, print_only):
    """Join this host to a farm at ADDRESS (or start the head), advertising its devices as Ray resources.

    The resources come from `slmbench devices`: one slmbench-slot (one measurement at a time per host),
    slmbench-<device> and slmbench-<device>-<runtime> for each available pair.

    \b
    Examples:
      slmbench farm join --head                 # on the head host
      slmbench farm join head-host:6379         # on every other host
      slmbench farm join head-host:6379 --print # the ray start line, to run it yourself
    """
    import shlex
    import shutil
    import subprocess

    from slmbench.errors import InvalidOption
    from slmbench.sweep.farm import join_command, require_ray

    if head == bool(address):
        raise InvalidOption("give the head's ADDRESS to join a farm, or --head to start one (not both)")
    command = join_command(None if head else address)
    if print_only:
        click.echo(shlex.join(command))
        return
    require_ray()
    ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    sys.exit(subprocess.call([ray_cli, *command[1:]]))


@cli.command()
@click.argument("results_paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("results/report"), show_default=True,
              help="Folder for report.md and figures/ (PNG and SVG).")
@click.option("--title", default="slmbench report", show_default=True)
def report(results_paths, out, title):
    """Markdown report with plots from result files or folders (several hosts merge into one).

    \b
    Examples:
      slmbench report results/paper-cpu/results.jsonl --out results/paper-cpu/report
      slmbench report results/ --out results/report
    """
    from slmbench.report.markdown import build_report, print_summary

    built = build_report(results_paths, out, title)
    print_summary(_console(), built)
    click.echo(f"report: {built.markdown} with {len(built.figures)} figures (PNG and SVG) in "
               f"{built.figures_dir}")


GATE_SWEEP = Path("results/baselines/regress.toml")


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path), metavar="[BASELINE CANDIDATE]")
@click.option("--base-rev", default=None, metavar="REV",
              help="Measure revision REV (a git worktree, run from its source) beside the working tree, "
                   "alternating, in this one job, and compare the two: the gate that holds on any machine.")
@click.option("--rounds", type=int, default=3, show_default=True,
              help="With --base-rev: processes per side, alternating (base first in odd rounds).")
@click.option("--sweep", "sweep_file", type=click.Path(path_type=Path), default=GATE_SWEEP, show_default=True,
              help="With --base-rev or --record-baseline: the sweep file measured (plus the tiny pair's "
                   "harness overhead).")
@click.option("--noise-study", type=int, default=None, metavar="N",
              help="Run N A/A comparisons (--base-rev, default HEAD, against a clean working tree) and record "
                   "each same-run metric's noise band in results/baselines/<machine>.noise.json; thresholds "
                   "inside it are refused from then on.")
@click.option("--record-baseline", is_flag=True,
              help="Measure the working tree into results/baselines/<machine>.jsonl: the fallback of "
                   "--base-rev where the base revision is not in the clone (shallow).")
@click.option("--threshold", "thresholds", multiple=True, metavar="METRIC=RATIO",
              help="Minimum effect for a verdict, per metric (default 1.10 each); repeatable. Metrics: "
                   "ttft_s, tpot_s, decode_tps, e2e_s, encoder_s, ed_do_ttft, ed_do_decode_tps, "
                   "overhead_ttft, overhead_step.")
@click.option("--alpha", type=float, default=0.002, show_default=True,
              help="Mann-Whitney U significance level.")
@click.option("--gate", type=click.Choice(["all", "same-run"]), default="all", show_default=True,
              help="Which verdicts --fail-on-regression acts on: every metric, or only the same-run ratios "
                   "(enc-dec/dec-only, harness/bare).")
@click.option("--fail-on-regression", is_flag=True, help="Exit 1 on a regression, a failed configuration, or "
                                                         "when the gate could not decide anything.")
@click.option("--allow-env-mismatch", is_flag=True,
              help="Compare rows of two machines (then only the same-run ratios are compared).")
@_cache_option
def compare(paths, base_rev, rounds, sweep_file, noise_study, record_baseline, thresholds, alpha, gate,
            fail_on_regression, allow_env_mismatch, cache_dir):
    """Compare a baseline with a candidate: per configuration and metric, ratio, Mann-Whitney U p
    and a verdict that needs both p < alpha and a ratio beyond the metric's threshold.

    Either two result files or folders, or --base-rev REV: REV and the working tree measured
    side by side on this machine now (what `make regress` and CI do).

    \b
    Examples:
      slmbench compare --base-rev HEAD~1 --fail-on-regression      # the CI gate
      slmbench compare --base-rev main --rounds 5                  # this branch against main
      slmbench compare old.jsonl new.jsonl --threshold ttft_s=1.2 --fail-on-regression
      slmbench compare base.jsonl cand.jsonl --gate same-run --allow-env-mismatch
    """
    from slmbench.errors import InvalidOption
    from slmbench.gate.compare import compare as run_compare
    from slmbench.gate.compare import compare_rows, parse_thresholds

    console = _console()
    if record_baseline or base_rev or noise_study:
        from slmbench.gate import ab

        if paths:
            raise InvalidOption("give either BASELINE CANDIDATE or --base-rev / --record-baseline / --noise-study, "
                                "not both")
        if not Path(sweep_file).is_file():
            raise InvalidOption(f"no sweep file {sweep_file}: run from the repository root or give --sweep")
        commands = ab.gate_commands(sweep_file)
        stored = ab.machine_baseline(Path(sweep_file).parent)
        noise = ab.noise_file(Path(sweep_file).parent)
        if record_baseline:
            console.print(f"baseline recorded: {ab.record_baseline(stored, commands, cache_dir)}")
            return
        if noise_study:
            band = ab.noise_study(base_rev or "HEAD", commands, noise_study, rounds, noise, cache_dir,
                                  log=lambda m: console.log(m))
            console.print(f"noise band recorded in {noise}: " + ", ".join(f"{m} x{b:.3f}" for m, b in
                                                                         sorted(band.items())))
            return
        band = ab.check_thresholds(parse_thresholds(thresholds), noise)
        try:
            base, candidate, info = ab.gate_rows(base_rev, commands, rounds, stored, cache_dir,
                                                 log=lambda m: console.log(m))
        except ab.NothingGated as exc:
            click.echo(f"gate: NOTHING GATED: {exc}", err=True)
            sys.exit(1 if fail_on_regression else 0)
        title = f"{info['base']} -> {info['candidate']} on {info.get('machine', 'this machine')}, " \
                f"{info['rounds']} rounds a side" + (f"; A/A noise band up to x{max(band.values()):.3f}"
                                                     if band else "")
        report = compare_rows(base, candidate, thresholds=thresholds, alpha=alpha,
                              allow_env_mismatch=allow_env_mismatch)
    else:
        if len(paths) != 2:
            raise InvalidOption("give BASELINE and CANDIDATE (result files or folders), or --base-rev REV")
        baseline, candidate_path = paths
        title = f"{baseline} -> {candidate_path}"
        report = run_compare(baseline, candidate_path, thresholds=thresholds, alpha=alpha,
                             allow_env_mismatch=allow_env_mismatch)
    _print_verdict(console, report, gate, title, fail_on_regression)


def _print_verdict(console, report, gate: str, title: str, fail_on_regression: bool) -> None:
    from slmbench.gate.compare import comparison_table, context_line

    if report.env_differences:
        console.print("[yellow]measured on another machine than the baseline; only same-run ratios are compared:"
                      "[/yellow] " + "; ".join(report.env_differences))
    console.print(comparison_table(report, gate, title=title, gated_only=gate != "all"))
    if gate != "all" and (context := context_line(report, gate)):
        console.print(context)
    for label, configs in (("only in the baseline", report.missing), ("only in the candidate", report.added)):
        if configs:
            console.print(f"{label}: {', '.join(configs)}")
    counts = {}
    for c in report.gated(gate):
        counts[c.verdict] = counts.get(c.verdict, 0) + 1
    tally = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    console.print(f"gate '{gate}': {tally or 'nothing compared'}")
    failures = report.gate_failures(gate)
    if fail_on_regression and failures:
        for reason in failures:
            click.echo(f"gate failed: {reason}", err=True)
        sys.exit(1)


@cli.command()
@click.option("--model", "-m", "model_names", multiple=True, default=("mu-tiny", "deconly-tiny"),
              show_default=True, help="Preset name or hf:PATH; repeat for several.")
@click.option("--device", "-d", default="cpu", show_default=True)
@click.option("--precision", "-p", default="fp32", show_default=True)
@click.option("--input-len", "-i", type=int, default=64, show_default=True)
@click.option("--output-len", "-o", type=int, default=16, show_default=True)
@click.option("--threads", "-t", type=int, default=None,
              help="Runtime threads (default: physical cores within the CPU affinity mask).")
@click.option("--warmup", type=int, default=2, show_default=True)
@click.option("--min-reps", type=int, default=20, show_default=True, help="Minimum repetitions of each loop.")
@click.option("--min-time", type=float, default=1.0, show_default=True,
              help="Minimum measured seconds per loop.")
@click.option("--max-reps", type=int, default=200, show_default=True)
@click.option("--results", type=click.Path(path_type=Path), default=Path("results/results.jsonl"),
              show_default=True, help="JSON Lines file the rows (loop=harness, loop=bare) are appended to.")
@_cache_option
def overhead(model_names, device, precision, input_len, output_len, threads, warmup, min_reps, min_time,
             max_reps, results, cache_dir):
    """Harness overhead: the harness's loop against a bare loop of ONNX Runtime's own calls on the same
    session, repetitions interleaved; prints harness / bare for TTFT and TPOT.

    \b
    Example:
      slmbench overhead -m deconly-tiny -t 1 --results /tmp/overhead.jsonl
    """
    from slmbench.config import RunSettings
    from slmbench.errors import InvalidOption
    from slmbench.models import resolve_model
    from slmbench.tools.overhead import measure_overhead, overhead_table

    if threads is not None and threads <= 0:
        raise InvalidOption(f"--threads must be a positive integer, got {threads}")
    settings = RunSettings(batch=1, input_len=input_len, output_len=output_len, warmup=warmup,
                           min_reps=min_reps, min_time_s=min_time, max_reps=max_reps)
    console = _console()
    rows = []
    for name in model_names:
        rows += measure_overhead(resolve_model(name), settings, device, threads, precision, cache_dir,
                                 results, log=lambda msg: console.log(msg))
    console.print(overhead_table(rows))
    console.print(f"{len(rows)} rows appended to {results}")


def main() -> None:
    cli(prog_name="slmbench")


if __name__ == "__main__":
    sys.exit(main())
