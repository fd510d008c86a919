"""One prepared check for a lent CUDA machine: the paper's 330M pair on torch/CUDA, fp16 and fp32.

Runs from a checkout with no install (the lent machine has torch with CUDA, no slmbench):

    python3 bench/tools/gpu_check.py                                   # mu-330m vs deconly-330m on cuda
    python3 bench/tools/gpu_check.py --device cpu --models mu-tiny,deconly-tiny --precisions fp32,bf16 \\
        -i 16 -o 4 --min-reps 2 --min-time 0                     # the same logic, here, in seconds

The installed package maps bench/ to `slmbench`, models/ to `slmbench.models` and so on
(pyproject.toml, [tool.setuptools] package-dir); a plain PYTHONPATH cannot express that, so this
script mirrors the mapping with symlinks in a temporary folder and imports this checkout from it.
Steps: (1) correctness: the tiny pair on the target device against torch CPU fp32, teacher-forced
logits per step; (2) per precision, one interleaved `run_benchmark` of the pair on torch, printing
TTFT and decode tok/s per model and the encoder-decoder/decoder-only ratios; (3) ONNX Runtime
CUDA too when its GPU wheel is installed (otherwise the reason is printed). Rows are appended to
--results (default $OUT/gpu_check.jsonl when $OUT is set; a summary goes to
$OUT/gpu_check_summary.json after each step). Exit 0 ok, 1 a failed check or step (the other
steps still run), 2 the device is unavailable (one line).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MAPPING = {"slmbench": "bench", "slmbench.runners": "bench/runners", "slmbench.models": "models",
                   "slmbench.exporters": "exporters"}
FP32_TOLERANCE = 1e-4  # CUDA fp32 (no TF32) against CPU fp32; reductions differ in order only


def package_mapping(repo: Path = REPO) -> dict[str, str]:
    """The package-dir mapping pyproject.toml installs with (so this script cannot drift from it)."""
    try:
        import tomllib

        data = tomllib.loads((repo / "pyproject.toml").read_text())
        return dict(data["tool"]["setuptools"]["package-dir"])
    except (ImportError, OSError, KeyError, ValueError):
        return dict(DEFAULT_MAPPING)


def source_layout(repo: Path = REPO) -> Path:
    """A temporary folder holding `slmbench/` laid out as installed, made of symlinks into `repo`."""
    root = Path(tempfile.mkdtemp(prefix="slmbench-src-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    mapping = package_mapping(repo)
    top = root / "slmbench"
    top.mkdir()
    subpackages = {name.split(".", 1)[1]: repo / path for name, path in mapping.items() if "." in name}
    for entry in (repo / mapping["slmbench"]).iterdir():
        if entry.name != "__pycache__" and entry.name not in subpackages:
            (top / entry.name).symlink_to(entry)
    for name, path in subpackages.items():
        (top / name).symlink_to(path, target_is_directory=True)
    return root


def use_source(repo: Path = REPO) -> Path:
    """Import `slmbench` from this checkout, never from bench/ as a top-level folder (running
    `python bench/tools/gpu_check.py` puts bench/ first on sys.path, where its modules would shadow)."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    root = source_layout(repo)
    sys.path.insert(0, str(root))
    return root


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--models", default="mu-330m,deconly-330m", help="comma-separated presets")
    p.add_argument("--precisions", default="fp16,fp32", help="comma-separated: fp32, fp16, bf16")
    p.add_argument("-i", "--input-len", type=int, default=512)
    p.add_argument("-o", "--output-len", type=int, default=128)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--min-reps", type=int, default=5)
    p.add_argument("--min-time", type=float, default=3.0, help="minimum measured seconds per model")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--check-models", default="mu-tiny,deconly-tiny",
                   help="models for the correctness step (empty to skip)")
    p.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime CUDA step")
    p.add_argument("--results", type=Path, default=None)
    return p.parse_args(argv)


def correctness(models: list[str], device: str, precisions: list[str]) -> bool:
    """Teacher-forced logits of the torch runner on `device` against torch CPU fp32."""
    import numpy as np

    from slmbench.exporters.parity import parity_inputs
    from slmbench.models import resolve_model
    from slmbench.runners.torch import TorchRunner

    def steps(device, precision, spec, prompt, forced):
        runner = TorchRunner(device, 1)
        runner.load(runner.prepare(spec, precision)[0])
        runner.start(prompt, forced.shape[1] + 1)
        cfg = spec.config
        if cfg.is_encoder_decoder:
            runner.encode(prompt)
            first = np.full((prompt.shape[0], 1), cfg.decoder_start_token, np.int64)
        else:
            first = prompt
        out = [runner.step_logits(first)]
        out += [runner.step_logits(forced[:, i:i + 1]) for i in range(forced.shape[1])]
        runner.close()
        return out

    ok = True
    for name in models:
        spec = resolve_model(name)
        prompt, forced = parity_inputs(spec.config.vocab_size, batch=2, prompt=24, steps=8)
        reference = steps("cpu", "fp32", spec, prompt, forced)
        for precision in precisions:
            got = steps(device, precision, spec, prompt, forced)
            diff = max(float(np.max(np.abs(r - g))) for r, g in zip(reference, got, strict=True))
            agree = float(np.mean([np.mean(r.argmax(-1) == g.argmax(-1)) for r, g in zip(reference, got,
                                                                                       strict=True)]))
            verdict = ""
            if precision == "fp32":
                passed = diff <= FP32_TOLERANCE
                ok &= passed
                verdict = "PASS" if passed else f"FAIL (tolerance {FP32_TOLERANCE:g})"
            print(f"check {name:14s} torch/{device} {precision}: max |dlogit| vs cpu fp32 {diff:.2e}, "
                  f"argmax agreement {agree:.0%} {verdict}".rstrip(), flush=True)
    return ok


def _ms(metric: dict | None) -> str:
    return f"{metric['median'] * 1e3:9.2f}" if metric else "        -"


def report(rows: list[dict]) -> list[dict]:
    """One printed line per row, then the pair's ratios; returns compact summaries."""
    summaries = []
    for row in rows:
        m = row["metrics"]
        peak = row.get("peak_device_memory_bytes")
        summary = {"model": row["model"], "machine": row["machine"], "runtime": row["runtime"], "device": row["device"],
                   "precision": row["precision"], "input_len": row["input_len"],
                   "output_len": row["output_len"], "ttft_s": m["ttft_s"]["median"],
                   "encoder_s": (m.get("encoder_s") or {}).get("median"),
                   "tpot_s": (m.get("tpot_s") or {}).get("median"),
                   "decode_tps": (m.get("decode_tps") or {}).get("median"), "reps": m["ttft_s"]["count"],
                   "cold_ttft_s": row["cold_ttft_s"], "load_s": row["load_s"],
                   "peak_device_memory_bytes": peak, "device_executed": row["device_executed"]}
        summaries.append(summary)
        tps = summary["decode_tps"]
        print(f"{row['model']:14s} {row['runtime']}/{row['device']} {row['precision']:5s} "
              f"TTFT p50 {_ms(m['ttft_s'])} ms  encoder {_ms(m.get('encoder_s'))} ms  "
              f"decode {tps if tps is not None else float('nan'):9.1f} tok/s  "
              f"peak device {f'{peak / 2**20:8.1f} MiB' if peak else '-'}  "
              f"({summary['reps']} reps)", flush=True)
    from slmbench.report.terminal import pair_ratios

    for p in pair_ratios(rows):
        speed = p["throughput_ratio"]
        print(f"  {p['encoder_decoder']} / {p['decoder_only']}: TTFT reduction {p['ttft_reduction_pct']:.0f}%, "
              f"decode tok/s x{speed if speed is not None else float('nan'):.2f}", flush=True)
    return summaries


def main(argv=None) -> int:
    args = parse_args(argv)
    use_source()
    import slmbench
    import slmbench.models
    from slmbench.config import RunSettings, plan
    from slmbench.core.benchmark import run_benchmark
    from slmbench.errors import BenchError
    from slmbench.models import resolve_model
    from slmbench.runners import select_runner

    print(f"slmbench imported from {slmbench.__path__[0]} (models: "
          f"{Path(slmbench.models.__file__).resolve().parent})", flush=True)
    models = [m for m in args.models.split(",") if m]
    precisions = [p for p in args.precisions.split(",") if p]
    try:
        select_runner(args.device, "torch")
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import torch

    from slmbench.runners.cuda import cuda_device_info

    print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"device {args.device}", flush=True)
    if args.device == "cuda":
        print("gpu: " + json.dumps(cuda_device_info(torch.cuda.current_device())), flush=True)
    results = args.results
    if results is None and os.environ.get("OUT"):
        results = Path(os.environ["OUT"]) / "gpu_check.jsonl"
    cache = Path(tempfile.mkdtemp(prefix="slmbench-cache-"))
    atexit.register(shutil.rmtree, cache, ignore_errors=True)

    ok = True
    check_models = [m for m in args.check_models.split(",") if m]
    if check_models:
        started = time.perf_counter()
        ok = correctness(check_models, args.device, sorted(set(precisions) | {"fp32"}))
        print(f"correctness step: {time.perf_counter() - started:.1f}s", flush=True)

    settings = RunSettings(input_len=args.input_len, output_len=args.output_len, warmup=args.warmup,
                           min_reps=args.min_reps, min_time_s=args.min_time)
    specs = [resolve_model(m) for m in models]
    summaries = []
    steps = [("torch", p) for p in precisions]
    if args.device == "cuda" and not args.no_ort:
        try:
            select_runner("cuda", "onnxruntime")
            steps.append(("onnxruntime", "fp32"))
        except BenchError as exc:
            print(f"onnxruntime/cuda skipped: {exc}", flush=True)
    for runtime, precision in steps:
        started = time.perf_counter()
        print(f"== {runtime}/{args.device} {precision}: {', '.join(models)}, input {settings.input_len}, "
              f"output {settings.output_len}", flush=True)
        try:
            configs = plan(models, args.device, [runtime], precision, settings, args.threads)
            rows = run_benchmark(configs, results, cache, log=lambda msg: None, specs=specs)
        except Exception:  # one failed step must not cost the others on a machine lent for minutes
            traceback.print_exc()
            print(f"   {runtime} {precision} FAILED (traceback above); continuing", flush=True)
            ok = False
            continue
        summaries += report(rows)
        print(f"   ({time.perf_counter() - started:.1f}s)", flush=True)
        if os.environ.get("OUT"):
            (Path(os.environ["OUT"]) / "gpu_check_summary.json").write_text(json.dumps(summaries, indent=2))
    if results is not None:
        print(f"rows appended to {results}")
    if not ok:
        print("gpu_check FAILED: see the FAIL lines above", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
