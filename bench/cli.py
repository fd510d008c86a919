"""The command line: thin click commands over the library (the library never sees click).

Errors a user can act on print one line and exit with code 2; Ctrl-C exits with 130 after
everything already measured has been written.
"""

from __future__ import annotations

import sys
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

        # Library warnings (a re-export, a noisy metric) reach the user as one plain line.
        warnings.showwarning = lambda message, *args, **kwargs: click.echo(f"warning: {message}", err=True)
        try:
            return super().invoke(ctx)
        except _user_errors() as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: every completed result row is kept", err=True)
            ctx.exit(130)


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
def models(as_json):
    """List model presets with family, layers, width, heads and exact parameter count.

    \b
    Example:
      slmbench models
    """
    from rich.table import Table

    from slmbench.models import PRESETS, resolve_model

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


@cli.command()
@click.option("--model", "-m", "model_names", multiple=True, default=DEFAULT_PAIR, show_default=True,
              help="Preset name or hf:PATH; repeat for several.")
@click.option("--runtime", "-r", default="onnxruntime", show_default=True,
              help="Which exporter's artifact: onnxruntime (ONNX) or openvino (IR).")
@click.option("--precision", "-p", default="fp32", show_default=True)
@click.option("--force", is_flag=True, help="Re-export even when a valid cached artifact exists.")
@_cache_option
def export(model_names, runtime, precision, force, cache_dir):
    """Export models to runnable artifacts, check them against PyTorch, and cache them.

    \b
    Example:
      slmbench export --model mu-tiny --model deconly-tiny
    """
    from slmbench.models import resolve_model
    from slmbench.runners import RUNNERS

    if runtime not in RUNNERS:
        raise click.BadParameter(f"choose from {', '.join(RUNNERS)}", param_hint="--runtime")
    for name in model_names:
        spec = resolve_model(name)
        artifact, reused = RUNNERS[runtime]("cpu").prepare(spec, precision, cache_dir, force)
        parity = artifact.manifest["parity"]
        state = "cached" if reused else f"exported in {artifact.manifest['export_seconds']:.1f}s"
        click.echo(f"{name}: {state} -> {artifact.path} (parity max |dlogit| {parity['max_abs_diff']:.2e}, "
                   f"tolerance {parity['tolerance']:g})")


@cli.command()
@click.option("--model", "-m", "model_names", multiple=True, default=DEFAULT_PAIR, show_default=True,
              help="Preset name or hf:PATH; repeat to compare (repetitions are interleaved).")
@click.option("--device", "-d", default="cpu", show_default=True, help="cpu, cuda, gpu (Intel) or npu.")
@click.option("--runtime", "-r", default=None, help="onnxruntime, openvino or torch (default: best for the device).")
@click.option("--precision", "-p", default="fp32", show_default=True)
@click.option("--input-len", "-i", type=int, default=512, show_default=True, help="Prompt tokens.")
@click.option("--output-len", "-o", type=int, default=128, show_default=True, help="Generated tokens (EOS ignored).")
@click.option("--batch", "-b", type=int, default=1, show_default=True)
@click.option("--threads", "-t", type=int, default=None, help="Runtime threads (default: physical cores).")
@click.option("--warmup", type=int, default=1, show_default=True, help="Warm-up generations per model.")
@click.option("--min-reps", type=int, default=5, show_default=True, help="Minimum measured repetitions.")
@click.option("--min-time", type=float, default=10.0, show_default=True, help="Minimum measured seconds per model.")
@click.option("--max-reps", type=int, default=200, show_default=True)
@click.option("--results", type=click.Path(path_type=Path), default=Path("results/results.jsonl"),
              show_default=True, help="JSON Lines file the rows are appended to.")
@_cache_option
def run(model_names, device, runtime, precision, input_len, output_len, batch, threads, warmup, min_reps,
        min_time, max_reps, results, cache_dir):
    """Measure TTFT and throughput; compare encoder-decoder with decoder-only in one interleaved run.

    \b
    Examples:
      slmbench run                                   # mu-330m vs deconly-330m on CPU
      slmbench run --device cpu --model mu-330m --model deconly-330m --input-len 512 --output-len 128
      slmbench run --device npu                      # OpenVINO on an Intel NPU
      slmbench run -m mu-tiny -m deconly-tiny -i 64 -o 16 --min-time 1
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from slmbench.benchmark import run_benchmark
    from slmbench.display import pair_ratios, ratio_table, summary_table
    from slmbench.errors import InvalidOption
    from slmbench.measure import RunSettings
    from slmbench.models import resolve_model

    if threads is not None and threads <= 0:
        raise InvalidOption(f"--threads must be a positive integer, got {threads}")
    settings = RunSettings(batch=batch, input_len=input_len, output_len=output_len, warmup=warmup,
                           min_reps=min_reps, min_time_s=min_time, max_reps=max_reps)
    specs = [resolve_model(name) for name in model_names]
    console = _console()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        tasks = {}

        def progress(label, done):
            if label not in tasks:
                tasks[label] = bar.add_task(f"{label} repetitions", total=settings.min_reps)
            bar.update(tasks[label], completed=done, total=max(done, settings.min_reps))

        rows = run_benchmark(specs, device, runtime, precision, settings, threads, results, cache_dir,
                             log=lambda msg: console.log(msg), progress=progress)
    console.print(summary_table(rows))
    ratios = pair_ratios(rows)
    if ratios:
        console.print(ratio_table(ratios))
    for row in rows:
        for warning in row["warnings"]:
            console.print(f"[yellow]warning[/yellow] {row['model']}: {warning}")
    console.print(f"{len(rows)} rows appended to {results}")


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


def main() -> None:
    cli(prog_name="slmbench")


if __name__ == "__main__":
    sys.exit(main())
