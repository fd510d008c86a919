"""The library entry point: spec -> artifact -> runner -> measurement -> result rows.

`run_benchmark` measures one or more models on one runtime/device with interleaved repetitions,
appends one row per model as soon as all are measured, and returns the rows. Everything a row
needs to be trusted later (raw timestamps, settings, artifact, environment) goes into it.
"""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from slmbench.environment import environment
from slmbench.errors import DeviceUnavailable
from slmbench.exporters.precision import row_fields as precision_fields
from slmbench.hugepages import back_with_huge_pages
from slmbench.measure import RunSettings, Subject, generate, make_inputs, measure, summarize_subject
from slmbench.memory import current_rss, peak_rss, reset_peak_rss
from slmbench.models import ModelSpec
from slmbench.results import SCHEMA, append_row, check_writable
from slmbench.roofline import BYTES_PER_PARAM, row_roofline
from slmbench.runners import select_runner


def config_key(model: str, device: str, runtime: str, precision: str, settings: RunSettings,
               threads: int | None, options: dict | None = None) -> str:
    """What makes two rows the same configuration (sweeps resume by it)."""
    opts = ",".join(f"{k}={v}" for k, v in sorted((options or {}).items()))
    return (f"{model}|{device}|{runtime}|{precision}|b{settings.batch}|in{settings.input_len}|"
            f"out{settings.output_len}|t{threads or 'auto'}" + (f"|{opts}" if opts else ""))


@dataclass
class Loaded:
    """A runner ready to measure, with what its row must say about how it got there."""

    spec: ModelSpec
    runner: object
    options: dict
    artifact: object
    reused: bool
    load: object  # LoadInfo
    load_rss: int | None
    huge_pages: dict | None = None


def prepare_and_load(runner, spec: ModelSpec, device: str, precision: str, cache_dir, options: dict,
                     log=print) -> Loaded:
    """Export (or reuse) the artifact, load it, time the load, and refuse a device the runtime did
    not really give us, before anything is timed."""
    log(f"preparing {spec.name} for {runner.runtime}/{device} ({precision})")
    artifact, reused = runner.prepare(spec, precision, cache_dir)
    rss_before = current_rss()
    started = time.perf_counter()
    load = runner.load(artifact)
    load.load_s = time.perf_counter() - started
    check_device(device, load.device_executed)
    huge = back_with_huge_pages()  # the weights just loaded: untimed, recorded in the row
    if huge.get("collapsed_bytes"):
        log(f"backed {huge['collapsed_bytes'] / 2**20:.0f} MiB with huge pages in {huge['seconds']:.1f}s")
    elif huge["status"] not in ("nothing to do", "collapsed"):
        log(f"huge pages: {huge['status']}{' (' + ', '.join(huge['errors']) + ')' if huge.get('errors') else ''}")
    rss_after = current_rss()
    load_rss = (rss_after - rss_before) if rss_before and rss_after else None
    return Loaded(spec, runner, options, artifact, reused, load, load_rss, huge)


def result_row(subject: Subject, loaded: Loaded, device: str, precision: str, settings: RunSettings, group: str,
               env: dict, key_options: dict | None = None) -> dict:
    """One measured configuration as a result row: identity, statistics, raw timestamps, and the
    provenance (runtime settings, artifact, environment) needed to trust it later."""
    spec, runner, load, artifact = loaded.spec, loaded.runner, loaded.load, loaded.artifact
    options = loaded.options if key_options is None else key_options
    metrics, warnings = summarize_subject(subject, settings.batch)
    return {
        "schema": SCHEMA, "run_id": uuid.uuid4().hex[:12], "group": group,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "key": config_key(spec.name, device, runner.runtime, precision, settings, runner.threads, options),
        "status": "ok", "error": None,
        "model": spec.name, "family": spec.family.value, "parameters": spec.parameters,
        "device": device, "runtime": runner.runtime, "runtime_version": load.runtime_version,
        "precision": precision, **precision_fields(artifact.manifest, precision),
        "batch": settings.batch, "input_len": settings.input_len,
        "output_len": settings.output_len, "threads": runner.threads,
        "mode": loaded.options.get("mode"),
        "device_executed": load.device_executed, "device_info": load.device_info,
        "runtime_options": load.options,
        "settings": asdict(settings), "label": subject.label,
        "metrics": metrics, "cold_ttft_s": subject.cold.metrics(settings.batch)["ttft_s"],
        "load_s": load.load_s, "compile_s": load.compile_s, "load_rss_bytes": loaded.load_rss,
        "huge_pages": loaded.huge_pages,
        "peak_device_memory_bytes": runner.peak_device_memory(),
        "tokens_generated": subject.reps[0].tokens,
        "repetitions": [{"timestamps_ns": r.timestamps_ns, "encoder_end_ns": r.encoder_end_ns}
                        for r in subject.reps],
        "cold": {"timestamps_ns": subject.cold.timestamps_ns, "encoder_end_ns": subject.cold.encoder_end_ns},
        "warmup_count": len(subject.warmups),
        "warnings": warnings,
        "artifact": {"key": artifact.key, "path": str(artifact.path) if artifact.path else None,
                     "format": artifact.manifest["format"],
                     "spec_hash": artifact.manifest["spec_hash"], "reused": loaded.reused,
                     "export_seconds": artifact.manifest.get("export_seconds"),
                     "opset": artifact.manifest.get("opset"),
                     "parity_max_abs_diff": (artifact.manifest["parity"] or {}).get("max_abs_diff"),
                     "weight_bytes": artifact.weight_bytes, "variant": artifact.manifest.get("variant")},
        "environment": env,
    }


def run_benchmark(specs: list[ModelSpec], device: str = "cpu", runtime: str | Sequence[str] | None = None,
                  precision: str = "fp32", settings: RunSettings | None = None, threads: int | None = None,
                  results: Path | str | None = None, cache_dir=None, options: dict | None = None,
                  log=print, progress=None) -> list[dict]:
    """Measure every model on every runtime given (one, several, or None for the device's
    default), all interleaved repetition by repetition in this one run; one row per pair."""
    settings = settings or RunSettings()
    for spec in specs:
        settings.check_fits(spec.name, spec.config)
    if results is not None:
        check_writable(results)
    names = [runtime] if runtime is None or isinstance(runtime, str) else list(dict.fromkeys(runtime))
    classes = [select_runner(device, name) for name in names]
    group = uuid.uuid4().hex[:12]
    subjects, loaded = [], {}
    for runner_cls in classes:
        opts = runner_cls.run_options(device, settings, options)
        for spec in specs:
            label = spec.name if len(classes) == 1 else f"{spec.name}@{runner_cls.runtime}"
            loaded[label] = prepare_and_load(runner_cls(device, threads, opts), spec, device, precision, cache_dir,
                                             opts, log)
            subjects.append(Subject(label, loaded[label].runner, spec.config.is_encoder_decoder,
                                    spec.config.decoder_start_token))
    inputs = {label: make_inputs(settings, item.spec.config.vocab_size) for label, item in loaded.items()}
    gc.collect()
    load_peak = peak_rss()  # import, export and load included
    reset_peak_rss()  # from here the high-water mark covers the generations only
    log(f"measuring {', '.join(s.label for s in subjects)}: batch {settings.batch}, input {settings.input_len}, "
        f"output {settings.output_len} (interleaved; >= {settings.min_reps} reps and >= {settings.min_time_s:g}s each)")
    measure([subjects], settings, lambda s: generate(s.runner, inputs[s.label], settings.output_len,
                                                     s.encoder_decoder, s.start_token), progress)
    peak = peak_rss()
    env = environment()
    rows = []
    for subject in subjects:
        item = loaded[subject.label]
        row = result_row(subject, item, device, precision, settings, group, env)
        row.update({"compared_with": [s.label for s in subjects if s is not subject], "peak_rss_bytes": peak,
                    "rss_scope": "process, all models of the group loaded", "load_peak_rss_bytes": load_peak})
        if precision in BYTES_PER_PARAM:
            tps = (row["metrics"].get("decode_tps") or {}).get("median")
            row["roofline"] = row_roofline(item.spec.config, precision, settings.input_len, settings.output_len,
                                           item.runner.threads or 1, tps, settings.batch)
        rows.append(row)
    for subject in subjects:
        subject.runner.close()
    if results is not None:
        for row in rows:
            append_row(results, row)
    return rows


def check_device(requested: str, executed: str) -> None:
    """Refuse to measure when the runtime reports another device than the one asked for (a silent
    fallback); ONNX Runtime reports execution providers, OpenVINO its EXECUTION_DEVICES."""
    aliases = {"cpu": {"cpu", "cpuexecutionprovider"}, "cuda": {"cuda", "cudaexecutionprovider"},
               "gpu": {"gpu"}, "npu": {"npu"}}.get(requested, {requested})
    if executed.lower().split(":")[0].split(".")[0] not in aliases:
        raise DeviceUnavailable(f"asked for {requested} but the runtime runs on {executed}; refusing to measure")
