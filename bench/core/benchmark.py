"""The library entry point: RunConfig -> artifact -> runner -> measurement -> result rows.

`run_benchmark` measures configurations (models, runtimes) with interleaved repetitions and
returns one row per configuration; given a results file it appends them all in one write once
every one is measured. Everything a row needs to be trusted later (raw timestamps, settings,
artifact, machine) goes into it (slmbench.rows).
"""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slmbench.config import RunConfig, check_one_run
from slmbench.core.child import in_fresh_process
from slmbench.core.inputs import ModelInput, model_inputs
from slmbench.core.measure import Subject, generate, measure, memory_by_phase, summarize_subject
from slmbench.errors import DeviceUnavailable
from slmbench.exporters.artifact import NotCached, cached_only, default_cache_dir
from slmbench.exporters.precision import row_fields as precision_fields
from slmbench.host.compute import row_compute_ceiling
from slmbench.host.contention import MachineBusy, wait_until_quiet
from slmbench.host.contention import warning as contention_warning
from slmbench.host.cpus import allowed_cpus
from slmbench.host.environment import environment
from slmbench.host.hugepages import back_with_huge_pages
from slmbench.host.memory import current_rss, peak_rss, reset_peak_rss
from slmbench.host.roofline import row_roofline
from slmbench.models import ModelSpec
from slmbench.models.cost import BYTES_PER_PARAM, generation_flops, mean_decode_bytes
from slmbench.results import append_rows, check_writable
from slmbench.rows import measured_row
from slmbench.runners import select_runner


@dataclass
class Loaded:
    """A runner ready to measure, with what its row must say about how it got there."""

    config: RunConfig
    spec: ModelSpec
    runner: object
    artifact: object
    reused: bool
    load: object  # LoadInfo
    load_rss_delta: int | None
    huge_pages: dict | None = None


def _export(config: dict, spec: ModelSpec, cache_dir) -> None:
    run = RunConfig.from_dict(config)
    runner = select_runner(run.device, run.runtime)(run.device, run.threads, run.option_dict)
    runner.prepare(spec, run.precision, cache_dir)


MEMORY_DEVICES = ("cpu", "cuda")  # where a model's memory can be read: the RSS; NVML's per-process reading


def _memory_alone(config: dict, spec: ModelSpec, cache_dir) -> dict:
    """The model alone in this (fresh) process: what loading it adds to the RSS, then the peak of
    each phase of one generation above that (core.measure.memory_by_phase)."""
    run = RunConfig.from_dict(config)
    loaded = prepare_and_load(run, spec, cache_dir, log=lambda message: None)
    after = current_rss()
    settings = run.settings
    given = model_inputs(settings, spec)
    try:
        phases = memory_by_phase(loaded.runner, given.slots[0], settings.output_len, spec.config.is_encoder_decoder,
                                 spec.config.decoder_start_token, after, given.pixels)
    finally:
        loaded.runner.close()
    return {"load_bytes": loaded.load_rss_delta, **phases,
            "scope": "the model alone in a fresh process, one untimed generation"}


def prepare_artifact(config: RunConfig, spec: ModelSpec, runner, cache_dir, log=print):
    """The artifact from the cache, or exported first in a fresh process (slmbench.core.child): an
    export leaves gigabytes of fragmented PyTorch heap that would shape the memory of the runtime
    this process then measures. Returns (artifact, reused)."""
    try:
        with cached_only():
            return runner.prepare(spec, config.precision, cache_dir)
    except NotCached:
        log(f"exporting {spec.name} for {config.runtime} ({config.precision}) in a fresh process")
        in_fresh_process(_export, config.to_dict(), spec, cache_dir)
    return runner.prepare(spec, config.precision, cache_dir)[0], False


def prepare_and_load(config: RunConfig, spec: ModelSpec | None = None, cache_dir=None, log=print,
                     runner=None) -> Loaded:
    """Export (or reuse) the artifact, load it, time the load, and refuse a device the runtime did
    not really give us, before anything is timed. `runner` defaults to the config's runtime's."""
    spec = spec or config.spec()
    if runner is None:
        runner = select_runner(config.device, config.runtime)(config.device, config.threads, config.option_dict)
    log(f"preparing {spec.name} for {config.runtime}/{config.device} ({config.precision})")
    artifact, reused = prepare_artifact(config, spec, runner, cache_dir, log)
    rss_before = current_rss()
    started = time.perf_counter()
    load = runner.load(artifact)
    load.load_s = time.perf_counter() - started
    check_device(config.device, load.device_executed)
    huge = back_with_huge_pages()  # the weights just loaded: untimed, recorded in the row
    if huge.get("collapsed_bytes"):
        log(f"backed {huge['collapsed_bytes'] / 2**20:.0f} MiB with huge pages in {huge['seconds']:.1f}s")
    elif huge["status"] not in ("nothing to do", "collapsed"):
        log(f"huge pages: {huge['status']}{' (' + ', '.join(huge['errors']) + ')' if huge.get('errors') else ''}")
    rss_after = current_rss()
    delta = (rss_after - rss_before) if rss_before and rss_after else None
    return Loaded(config, spec, runner, artifact, reused, load, delta, huge)


def result_row(config: RunConfig, subject: Subject, loaded: Loaded, group: str, env: dict,
               inputs: ModelInput | None = None, **fields) -> dict:
    """One measured configuration as a result row: statistics, raw timestamps, and the provenance
    (runtime settings, artifact) needed to trust it later; identity comes from the config."""
    spec, runner, load, artifact = loaded.spec, loaded.runner, loaded.load, loaded.artifact
    s = config.settings
    batch = s.batch
    metrics, warnings = summarize_subject(subject, batch)
    if (allowed := allowed_cpus()) and config.threads > allowed:
        warnings.append(f"oversubscribed: {config.threads} runtime threads on the {allowed} CPUs this process may "
                        "use; threads wait for each other, so times are not this machine's best")
    roofline = compute = None
    # where machine readings are kept: the artifact cache, never beside a user's own export
    record = artifact.manifest.get("record")
    store = Path(record).parent if record else artifact.path.parent if artifact.path else default_cache_dir()
    if config.precision in BYTES_PER_PARAM and not config.loop:  # overhead loops: no ceiling needed
        roofline = row_roofline(mean_decode_bytes(spec.config, config.precision, s.input_len, s.output_len, spec.image),
                                config.threads, store, (metrics.get("decode_tps") or {}).get("median"), batch)
    if config.device == "cpu":
        flops = generation_flops(spec.config, s.input_len, s.output_len, spec.image)["first_token_flops"] * batch
        compute = row_compute_ceiling(flops, config.runtime, load.compute_precision, config.threads, store,
                                      (metrics.get("ttft_s") or {}).get("median"))
    return measured_row(
        config, group, env,
        family=spec.family.value, parameters=spec.parameters, runtime_version=load.runtime_version,
        **precision_fields(artifact.manifest, config.precision),
        device_executed=load.device_executed, device_info=load.device_info, runtime_options=load.options,
        label=subject.label, metrics=metrics, cold_ttft_s=subject.cold.metrics(batch)["ttft_s"],
        load_s=load.load_s, compile_s=load.compile_s, load_rss_delta_bytes=loaded.load_rss_delta,
        huge_pages=loaded.huge_pages, peak_device_memory_bytes=runner.peak_device_memory(),
        tokens_generated=subject.reps[0].tokens,
        repetitions=[r.record() for r in subject.reps], cold=subject.cold.record(),
        warmup_count=len(subject.warmups), warnings=warnings, contention=subject.contention.summary(),
        artifact={"key": artifact.key, "path": str(artifact.path) if artifact.path else None,
                  "format": artifact.manifest["format"], "spec_hash": artifact.manifest["spec_hash"],
                  "reused": loaded.reused, "export_seconds": artifact.manifest.get("export_seconds"),
                  "opset": artifact.manifest.get("opset"),
                  "parity_max_abs_diff": (artifact.manifest["parity"] or {}).get("max_abs_diff"),
                  "weight_bytes": artifact.weight_bytes, "variant": artifact.manifest.get("variant"),
                  **_own_export(artifact.manifest)},
        roofline=roofline, compute_roofline=compute, **({"text": inputs.text} if inputs and inputs.text else {}),
        **({"vision": vision_fields(spec, s, artifact.manifest)} if spec.image is not None else {}), **fields)


def vision_fields(spec: ModelSpec, settings, manifest: dict) -> dict:
    """What a vision model's row says of its image: size, tokens, the tower's parameters and FLOPs,
    its parity, and the KV bytes each decode step reads with the image's tokens in the cache
    (encoder-decoder: its cross-attention K/V over image + text; decoder-only: its self-attention
    cache, whose prefix they are), beside what the text alone would make them."""
    from slmbench.models.cost import vision_flops

    cfg = spec.config
    kv = lambda image: mean_decode_bytes(cfg, "fp32", settings.input_len, settings.output_len, image)["kv_bytes"]
    return {"image_size": spec.image, "image_tokens": spec.image_tokens, "native_image_size": cfg.vision.image_size,
            "tower_parameters": cfg.vision.parameter_count(cfg.hidden), "vision_flops": vision_flops(cfg, spec.image),
            "parity_max_abs_diff": ((manifest.get("parity") or {}).get("vision") or {}).get("max_abs_diff"),
            "kv_bytes_per_token": kv(spec.image), "kv_bytes_per_token_text_only": kv(None),
            "kv_at": f"decode step {settings.output_len // 2}, fp32"}


def _own_export(manifest: dict) -> dict:
    """What a row says of a user's own export (`onnx:DIR`, `ov:DIR`; slmbench.exporters.byo): its
    layout, every file's size and SHA-256, and whether its graphs were checked against PyTorch
    ("ok") or could not be, the folder holding no weights ("unchecked"). Our own exports: "ok"."""
    if "layout" not in manifest:
        return {"parity": "ok" if manifest.get("parity") else None}
    return {"parity": manifest["parity_status"], "layout": manifest["layout"]["kind"],
            "files": manifest["source_files"], "check_record": manifest.get("record")}


def _labels(configs: Sequence[RunConfig]) -> list[str]:
    """Short names for progress and tables: the model, with the runtime where models repeat, else
    the whole key."""
    for label in (lambda c: c.model, lambda c: f"{c.model}@{c.runtime}", lambda c: c.key):
        names = [label(c) for c in configs]
        if len(set(names)) == len(names):
            return names
    raise AssertionError("keys are unique")  # check_one_run refused duplicates


def run_benchmark(configs: Sequence[RunConfig], results: Path | str | None = None, cache_dir=None, log=print,
                  progress=None, specs: Sequence[ModelSpec] | None = None, require_quiet: bool = False) -> list[dict]:
    """Measure every configuration, all interleaved repetition by repetition in this one run; one
    row each. `specs` (one per config) skips resolving the models by name. `require_quiet` waits
    (bounded) for a quiet machine before measuring and records nothing when the run competed."""
    configs = list(configs)
    check_one_run(configs)
    specs = list(specs) if specs is not None else [c.spec() for c in configs]
    settings = configs[0].settings  # the repetitions' (check_one_run: shared by all)
    for config, spec in zip(configs, specs, strict=True):
        config.settings.check_fits(spec.name, spec.config, spec.image_tokens)
    inputs = [model_inputs(c.settings, spec) for c, spec in zip(configs, specs, strict=True)]  # tokenized here
    if results is not None:
        check_writable(results)
    for config, spec in zip(configs, specs, strict=True):  # an absent device, a model it cannot run: before exports
        select_runner(config.device, config.runtime).check_model(spec, config.precision, config.option_dict)
    group = uuid.uuid4().hex[:12]
    loaded = [prepare_and_load(c, spec, cache_dir, log) for c, spec in zip(configs, specs, strict=True)]
    subjects = [Subject(label, item.runner, item.spec.config.is_encoder_decoder, item.spec.config.decoder_start_token,
                        given.pixels) for label, item, given in zip(_labels(configs), loaded, inputs, strict=True)]
    feed = {s.label: given.cycle() for s, given in zip(subjects, inputs, strict=True)}
    gc.collect()
    if require_quiet:
        wait_until_quiet(log=log)
    load_peak = peak_rss()  # import, export and load included
    reset_peak_rss()  # from here the high-water mark covers the generations only
    shape = (f"input {settings.input_len}" if settings.text is None else
             f"text {settings.text.id} ({len(settings.text.prompts)} prompts, "
             + (f"{settings.input_len} tokens each)" if settings.text.fit else "as is)"))
    log(f"measuring {', '.join(s.label for s in subjects)}: batch {settings.batch}, {shape}, "
        f"output {settings.output_len} (interleaved; >= {settings.min_reps} reps and >= {settings.min_time_s:g}s each)")
    try:
        measure([subjects], settings, lambda s: generate(s.runner, feed[s.label](), settings.output_len,
                                                         s.encoder_decoder, s.start_token, s.pixels), progress)
        peak = peak_rss()
    finally:
        for subject in subjects:
            subject.runner.close()
    busy = [f"{s.label}: {w}" for s in subjects if (w := contention_warning(s.contention.summary()))]
    if require_quiet and busy:
        raise MachineBusy("--require-quiet: nothing recorded, the run " + "; ".join(busy))
    env = environment()
    if any(c.device in MEMORY_DEVICES for c in configs):
        log("memory by phase: each model alone in a fresh process, one untimed generation")
    phases = [in_fresh_process(_memory_alone, c.to_dict(), spec, cache_dir) if c.device in MEMORY_DEVICES else
              {"scope": f"not measured on {c.device}: host RSS is not its memory, it reports none per process, "
                        "and a second load compiles again"}
              for c, spec in zip(configs, specs, strict=True)]
    rows = []
    for subject, item, phase, given in zip(subjects, loaded, phases, inputs, strict=True):
        rows.append(result_row(item.config, subject, item, group, env, given,
                               compared_with=[s.label for s in subjects if s is not subject], peak_rss_bytes=peak,
                               rss_scope="process, all models of the run loaded, generations only",
                               load_peak_rss_bytes=load_peak, memory_phases=phase))
    if results is not None:
        append_rows(results, rows)
    return rows


def check_device(requested: str, executed: str) -> None:
    """Refuse to measure when the runtime reports another device than the one asked for (a silent
    fallback); ONNX Runtime reports execution providers, OpenVINO its EXECUTION_DEVICES."""
    aliases = {"cpu": {"cpu", "cpuexecutionprovider"}, "cuda": {"cuda", "cudaexecutionprovider"},
               "gpu": {"gpu"}, "npu": {"npu"}}.get(requested, {requested})
    if executed.lower().split(":")[0].split(".")[0] not in aliases:
        raise DeviceUnavailable(f"asked for {requested} but the runtime runs on {executed}; refusing to measure")
