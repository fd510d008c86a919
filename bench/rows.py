"""The result row: one versioned schema, its two constructors, JSON in and out, and the migration.

A row is a plain JSON object (what JSON Lines and pandas read), but only this module makes one:
`measured_row` for a measurement, `failed_row` for a configuration that could not be measured.
Every field is named in FIELDS with what it means (units included); a constructor given a field
not listed there fails, so a second shape of a row cannot creep in. `from_json` reads any
schema this project ever wrote: schema-1 rows (committed under results/) are migrated on read and
attributed to their own machine, computed from the environment they recorded.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict

from slmbench.config import RunConfig, RunSettings
from slmbench.host.environment import environment, machine_identity

SCHEMA = 2

FIELDS: dict[str, str] = {
    "schema": "row schema version (2; schema-1 rows are migrated on read)",
    "run_id": "this row's id",
    "group": "the id of the run that measured this row; rows of one group were measured interleaved",
    "timestamp": "when the row was made (local time, ISO 8601)",
    "key": "the configuration key (slmbench.config.RunConfig.key); not the machine",
    "config": "the RunConfig as a dict (None for schema-1 rows whose key it cannot reproduce)",
    "machine": "{id, name}: the measuring machine's fingerprint and readable name (slmbench.host.environment)",
    "status": "ok or failed",
    "error": "why a failed row failed (one line); None when ok",
    "failure": "a failed row's diagnosis: kind, exit code, log tail, memory",
    "model": "model preset or hf:PATH", "family": "encoder-decoder or decoder-only",
    "parameters": "exact parameter count",
    "device": "the device asked for", "runtime": "the runtime", "runtime_version": "the runtime's version",
    "precision": "the precision recipe's name", "precision_recipe": "how the weights were made that precision",
    "accuracy": "the artifact's logit error against fp32 PyTorch",
    "batch": "batch size",
    "input_len": "prompt tokens (a text as is: this model's tokens of it, mean over the prompts)",
    "output_len": "generated tokens (EOS ignored)",
    "threads": "runtime threads", "mode": "OpenVINO graph mode (None elsewhere)",
    "device_executed": "the device the runtime reports it ran on", "device_info": "what the runtime says of it",
    "runtime_options": "every runtime setting that affects speed, as applied",
    "settings": "batch, lengths and repetition settings (RunSettings)",
    "label": "the name this row had in its run's progress and tables",
    "metrics": "per metric (seconds or tokens/s): median, p90, p99, mean, stdev, min, max, count, ci95_low/high",
    "cold_ttft_s": "TTFT of the first generation after load (s), never in the warm statistics",
    "load_s": "wall time of the runtime's load, compile included (s)",
    "compile_s": "session creation / model compile alone (s), where the runtime separates it",
    "load_rss_delta_bytes": "process RSS after this model's load minus before it (bytes); negative when the load "
                            "returned more memory to the system than it kept (freed export or conversion buffers)",
    "load_peak_rss_bytes": "process RSS high-water mark from start to the end of loading every model of the run "
                           "(bytes; import, export and load included)",
    "peak_rss_bytes": "process RSS high-water mark during the generations (bytes), with every model of the run "
                      "loaded; see rss_scope",
    "rss_scope": "what peak_rss_bytes covers, in words",
    "memory_phases": "the model alone in a fresh process, one untimed generation: load_bytes (RSS added by "
                     "loading), and the RSS peak above the loaded RSS to the first token (first_token_bytes: "
                     "encoder + first step, or the prefill) and while decoding (decode_bytes); None where the OS "
                     "cannot reset the peak; on CUDA also device: the process's device memory once loaded "
                     "(loaded_bytes, NVML) and its growth by the end of the first token and of the decoding; "
                     "CPU and CUDA runs only (scope says why not)",
    "huge_pages": "how the loaded weights were backed by 2 MiB pages",
    "peak_device_memory_bytes": "the device's memory high-water mark where the runtime reports one (bytes)",
    "tokens_generated": "tokens produced per generation",
    "repetitions": "raw timestamps of every warm repetition: timestamps_ns (t_i - t_0), encoder_end_ns, and "
                   "vision_end_ns for a vision model (its tower done)",
    "vision": "a vision model's image: image_size and image_tokens, the tower's parameters and FLOPs, its parity "
              "against PyTorch, and the KV bytes a decode step reads with the image in the cache beside the text "
              "alone's (kv_bytes_per_token, kv_bytes_per_token_text_only; fp32, at kv_at)",
    "cold": "raw timestamps of the cold generation", "warmup_count": "warm-up generations, not measured",
    "warnings": "what a reader must see (noisy metrics, a run that competed for the CPU)",
    "contention": "over the warm repetitions: wall, own and others' CPU seconds, steal, involuntary switches, "
                  "others' and steal fractions of the allowed CPUs' time (slmbench.host.contention)",
    "artifact": "the artifact measured: key, path, format, spec hash, opset, parity, weight bytes",
    "environment": "host, CPU, cores, memory, kernel, huge pages, Python, packages, slmbench commit",
    "compared_with": "labels of the other rows of this run",
    "roofline": "the decode's memory-bandwidth ceiling and the fraction of it reached",
    "compute_roofline": "the first token's compute ceiling (CPU): its FLOPs (encoder + first step, or the prefill; "
                        "models/cost.py) over the peak FLOP/s of the runtime's own MatMul at the run's threads and "
                        "compute precision (host/compute.py), and the fraction of it the median TTFT reached",
    "text": "a run fed text (slmbench.prompts): its id, prompts, characters and words; how this model got it (input: "
            "as is, cut, repeated, or random ids without a tokenizer), its tokenizer (file, sha256), its tokens per "
            "prompt, and the characters and words its input held per prompt (mean)",
    "loop": "harness-overhead rows: harness or bare", "overhead_of": "harness-overhead rows: the plain key",
    "sweep": "the sweep that measured this row", "_source": "the file it was read from (set on read, not stored)",
}


class RowError(ValueError):
    """A row built with a field the schema does not have (a programming error, not a user's)."""


def _stamp(config: RunConfig, group: str, env: dict) -> dict:
    return {"schema": SCHEMA, "run_id": uuid.uuid4().hex[:12], "group": group,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "key": config.key, "config": config.to_dict(),
            "machine": machine_identity(env), "environment": env,
            "model": config.model, "device": config.device, "runtime": config.runtime,
            "precision": config.precision, "batch": config.settings.batch, "input_len": config.settings.input_len,
            "output_len": config.settings.output_len, "threads": config.threads,
            "mode": config.option_dict.get("mode"), "settings": asdict(config.settings)}


def _checked(row: dict) -> dict:
    unknown = sorted(set(row) - set(FIELDS))
    if unknown:
        raise RowError(f"fields not in the row schema: {unknown}")
    return row


def measured_row(config: RunConfig, group: str, env: dict, **fields) -> dict:
    """A measured configuration: identity from the config and the machine, measurements in `fields`."""
    row = _stamp(config, group, env)
    row.update(status="ok", error=None, **fields)
    if config.loop:
        row["loop"] = config.loop
    return _checked(row)


def failed_row(config: RunConfig, group: str, error: str, failure: dict, family: str, parameters: int,
               env: dict | None = None, **fields) -> dict:
    """A configuration that was not measured, with its identity and the cause."""
    row = _stamp(config, group, env or environment())
    row.update(status="failed", error=error, failure=failure, family=family, parameters=parameters, **fields)
    return _checked(row)


def to_json(row: dict) -> str:
    """One JSON line (no NaN: JSON has none); `_source` is where it was read, not part of it."""
    return json.dumps({k: v for k, v in row.items() if k != "_source"}, sort_keys=True, allow_nan=False)


def migrate(row: dict) -> dict:
    """A row of any schema as a schema-2 row."""
    if row.get("schema", 1) >= SCHEMA:
        return row
    row = dict(row)
    if "load_rss_bytes" in row:
        row["load_rss_delta_bytes"] = row.pop("load_rss_bytes")
    if row.get("status") == "ok" and "rss_scope" not in row and "peak_rss_bytes" in row:
        row["rss_scope"] = "process, all models of the group loaded"
    row["machine"] = machine_identity(row.get("environment") or {})
    row["config"] = _config_of_schema1(row)
    row["schema"] = SCHEMA
    return row


def _config_of_schema1(row: dict) -> dict | None:
    """The RunConfig a schema-1 row was keyed by, where its fields reproduce its key exactly."""
    key = row.get("key") or ""
    fields = key.split("|")
    options = {}
    for item in (fields[8].split(",") if len(fields) > 8 else ()):
        name, _, value = item.partition("=")
        options[name] = int(value) if value.isdigit() else value
    loop = options.pop("loop", None)
    try:
        config = RunConfig(row["model"], row["device"], row["runtime"], row["precision"],
                           RunSettings(**row["settings"]), row["threads"], tuple(options.items()), loop)
    except Exception:  # noqa: BLE001 - whatever an old row lacks, it simply has no config
        return None
    return config.to_dict() if config.key == key else None


def from_json(line: str | bytes) -> dict | None:
    """A row from one JSON line, migrated; None when the line is not a JSON object."""
    row = json.loads(line)
    return migrate(row) if isinstance(row, dict) else None
