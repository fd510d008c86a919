"""Sweep files: a TOML grid of configurations, parsed into typed, validated dataclasses.

A sweep file names models x devices x runtimes x precisions x input lengths x output lengths x
batch sizes, plus repetition settings and per-configuration limits. Every mistake is one line
that names the key and the allowed values (`SweepFileError`), raised before anything runs.

Expansion turns the grid into `Configuration`s: each is one worker process. An encoder-decoder
and its decoder-only partner of the same budget (models.presets.PAIRS) form one configuration,
so their repetitions interleave and their ratio is measured in the same run (docs/metrics.md).
"""

from __future__ import annotations

import itertools
import math
import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from slmbench.config import LIMITS, RunConfig, RunSettings
from slmbench.errors import BenchError, InvalidOption
from slmbench.exporters.precision import PRECISIONS as RECIPES
from slmbench.host.cpus import default_threads
from slmbench.prompts import Text, read_prompts
from slmbench.runners import precision_unsupported

# Precision names a sweep may ask for: the exporters' recipes plus bf16 (PyTorch runner). Whether a
# given runtime supports one is its runner's call: a configuration it refuses is a failed row.
PRECISIONS = (*RECIPES, "bf16")
MAX_TIMEOUT_S = 7 * 24 * 3600.0
MAX_MEMORY_GB = 1 << 14


class SweepFileError(InvalidOption):
    """A sweep file (or a value in it) that cannot be run; the message names the key and the fix."""


@dataclass(frozen=True)
class Grid:
    models: tuple[str, ...]
    output_lens: tuple[int, ...]
    input_lens: tuple[int, ...] = ()  # () only with [text]: the text as is
    devices: tuple[str, ...] = ("cpu",)
    runtimes: tuple[str, ...] = ("onnxruntime",)
    precisions: tuple[str, ...] = ("fp32",)
    batch_sizes: tuple[int, ...] = (1,)
    threads: int | None = None  # None: the machine's physical cores, resolved when expanding
    pair_models: bool = True
    image_sizes: tuple[int, ...] = ()  # vision models' images (pixels a side); (): each tower's native size


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 1800.0  # per configuration, export included
    # RLIMIT_AS for each configuration's process. None: the machine's RAM on CPU, no limit on
    # accelerators (CUDA and GPU drivers reserve address space far beyond physical memory).
    memory_limit_gb: float | None = None


@dataclass(frozen=True)
class Sweep:
    name: str
    grid: Grid
    repetitions: RunSettings  # batch and lengths here are placeholders; the grid sets them
    limits: Limits = Limits()
    # Runner options per runtime ([options.openvino] mode = "static", ...), as sorted items.
    options: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()
    description: str = ""
    source: str = ""
    text: Text | None = None  # [text]: fed instead of random ids; as is when the grid has no input_lens

    def configurations(self) -> tuple[list[Configuration], list[str]]:
        """The grid as configurations, plus one note per combination left out and why."""
        return expand(self)


@dataclass(frozen=True)
class Configuration:
    """One worker process: the RunConfig of one model, or of an encoder-decoder / decoder-only pair
    (measured interleaved); they differ only in the model."""

    runs: tuple[RunConfig, ...]
    memory_limit_gb: float | None = None
    sweep: str = ""

    # What every run of the configuration shares.
    device = property(lambda self: self.runs[0].device)
    runtime = property(lambda self: self.runs[0].runtime)
    precision = property(lambda self: self.runs[0].precision)
    settings = property(lambda self: self.runs[0].settings)
    threads = property(lambda self: self.runs[0].threads)

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(r.model for r in self.runs)

    @property
    def keys(self) -> dict[str, str]:
        return {r.model: r.key for r in self.runs}

    @property
    def label(self) -> str:
        s = self.settings
        mode = self.runs[0].option_dict.get("mode")
        return (
            f"{' vs '.join(self.models)} · {self.runtime}/{self.device}{' ' + mode if mode else ''} {self.precision} · "
            f"b{s.batch} {s.input_key} out{s.output_len}"
        )

    def cost(self) -> float:
        """A rough relative cost (parameters x tokens x generations) so the ETA weighs configurations."""
        from slmbench.models import resolve_model

        s = self.settings
        params = sum(resolve_model(m).parameters for m in self.models)
        return params * s.batch * (s.input_len / 8 + s.output_len) * (1 + s.warmup + s.min_reps)

    def on_host(self, threads: int | None, memory_limit_gb: float | None) -> Configuration:
        """The same configuration as another host runs it: its own thread count (when the grid left
        threads to the machine; the keys follow) and memory limit (when no limit was set)."""
        runs = self.runs if threads is None else tuple(replace(r, threads=threads) for r in self.runs)
        return replace(self, runs=runs, memory_limit_gb=self.memory_limit_gb if memory_limit_gb is None
                       else memory_limit_gb)

    def to_job(self) -> dict:
        return {"runs": [r.to_dict() for r in self.runs], "memory_limit_gb": self.memory_limit_gb,
                "sweep": self.sweep}


# ---------------------------------------------------------------- parsing and validation


_TOP = {
    "name": "a string",
    "description": "a string",
    "grid": "a table",
    "repetitions": "a table",
    "limits": "a table",
    "options": "a table",
    "text": "a table",
}
_GRID_LISTS = {
    "models": str,
    "devices": str,
    "runtimes": str,
    "precisions": str,
    "input_lens": int,
    "output_lens": int,
    "batch_sizes": int,
    "image_sizes": int,
}
_GRID_OTHER = ("threads", "pair_models")
_REPS = ("warmup", "min_reps", "min_time_s", "max_reps", "seed", "target_ci")
_LIMITS = ("timeout_s", "memory_limit_gb")
_TEXT = ("prompt", "prompts")


def _where(path: str, key: str) -> str:
    return f"{path}: {key}" if path else key


def _unknown(path: str, section: str, table: dict, allowed) -> None:
    for key in table:
        if key not in allowed:
            name = f"{section}.{key}" if section else key
            raise SweepFileError(
                f"{_where(path, 'unknown key ' + repr(name))}; allowed keys"
                f"{' in [' + section + ']' if section else ''}: {', '.join(allowed)}"
            )


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


def _list(path: str, key: str, value, kind: type) -> tuple:
    what = "strings" if kind is str else "integers"
    if not isinstance(value, list) or not value:
        raise SweepFileError(f"{_where(path, key)} must be a non-empty list of {what}, got {value!r}")
    for i, item in enumerate(value):
        ok = isinstance(item, str) and item != "" if kind is str else _is_int(item)
        if not ok:
            raise SweepFileError(
                f"{_where(path, f'{key}[{i}]')} must be "
                f"{'a non-empty string' if kind is str else 'an integer'}"
                f", got {item!r}"
            )
    if len(set(value)) != len(value):
        dup = next(v for v in value if value.count(v) > 1)
        raise SweepFileError(f"{_where(path, key)} lists {dup!r} twice; list each value once")
    return tuple(value)


def _choice(path: str, key: str, values: tuple, allowed) -> None:
    for i, v in enumerate(values):
        if v not in allowed:
            raise SweepFileError(
                f"{_where(path, f'{key}[{i}]')} = {v!r} is unknown; allowed: {', '.join(allowed)}"
            )


def known_runtimes() -> tuple[str, ...]:
    """Runtimes a sweep may name: the registered ones and those planned for some device, sorted so
    that error messages do not depend on the registry's insertion order."""
    from slmbench.runners import DEFAULT_RUNTIMES, RUNNERS

    return tuple(sorted({*RUNNERS, *(r for runtimes in DEFAULT_RUNTIMES.values() for r in runtimes)}))


def _grid(path: str, table, text: bool = False) -> Grid:
    from slmbench.models import PRESETS, resolve_model
    from slmbench.models.config import ConfigError
    from slmbench.runners import DEVICES

    if not isinstance(table, dict):
        raise SweepFileError(f"{_where(path, 'grid')} must be a table ([grid]), got {table!r}")
    _unknown(path, "grid", table, (*_GRID_LISTS, *_GRID_OTHER))
    for required in ("models", "output_lens") if text else ("models", "input_lens", "output_lens"):
        if required not in table:
            raise SweepFileError(f"{_where(path, 'grid.' + required)} is missing; it is required")
    values = {k: _list(path, f"grid.{k}", table[k], kind) for k, kind in _GRID_LISTS.items() if k in table}
    for i, model in enumerate(values["models"]):
        if model not in PRESETS and not model.startswith("hf:"):
            raise SweepFileError(
                f"{_where(path, f'grid.models[{i}]')} = {model!r} is unknown; allowed: "
                f"{', '.join(PRESETS)} or hf:PATH"
            )
        try:
            resolve_model(model)
        except (ConfigError, BenchError) as exc:
            raise SweepFileError(f"{_where(path, f'grid.models[{i}]')}: {exc}") from None
    towers = [(m, resolve_model(m).config.vision) for m in values["models"] if ":" not in m]
    towers = [(m, v) for m, v in towers if v is not None]
    if values.get("image_sizes") and not towers:
        raise SweepFileError(f"{_where(path, 'grid.image_sizes')}: none of the models takes an image "
                             "(vision presets: mu-vl-330m, deconly-vl-330m, ...)")
    for i, size in enumerate(values.get("image_sizes", ())):
        for model, vision in towers:
            try:
                vision.check_image_size(size)
            except ConfigError as exc:
                raise SweepFileError(f"{_where(path, f'grid.image_sizes[{i}]')}: {model}: {exc}") from None
    _choice(path, "grid.devices", values.get("devices", ()), DEVICES)
    _choice(path, "grid.runtimes", values.get("runtimes", ()), known_runtimes())
    _choice(path, "grid.precisions", values.get("precisions", ()), PRECISIONS)
    for key, limit_name in (
        ("input_lens", "input_len"),
        ("output_lens", "output_len"),
        ("batch_sizes", "batch"),
    ):
        for i, v in enumerate(values.get(key, ())):
            if v <= 0 or v > LIMITS[limit_name]:
                raise SweepFileError(
                    f"{_where(path, f'grid.{key}[{i}]')} = {v} is out of range; allowed: "
                    f"1 to {LIMITS[limit_name]}"
                )
    threads = table.get("threads")
    if threads is not None and (not _is_int(threads) or not 1 <= threads <= 4096):
        raise SweepFileError(
            f"{_where(path, 'grid.threads')} must be an integer from 1 to 4096 (omit it for the "
            f"physical core count), got {threads!r}"
        )
    pair = table.get("pair_models", True)
    if not isinstance(pair, bool):
        raise SweepFileError(f"{_where(path, 'grid.pair_models')} must be true or false, got {pair!r}")
    return Grid(threads=threads, pair_models=pair, **values)


def _repetitions(path: str, table) -> RunSettings:
    if not isinstance(table, dict):
        raise SweepFileError(f"{_where(path, 'repetitions')} must be a table ([repetitions]), got {table!r}")
    _unknown(path, "repetitions", table, _REPS)
    for key, value in table.items():
        if key == "target_ci":
            if not _is_number(value) or not 0 < value < 1:
                raise SweepFileError(
                    f"{_where(path, 'repetitions.target_ci')} must be a fraction between 0 and 1 "
                    f"(0.05 = +-5%), got {value!r}"
                )
        elif key == "min_time_s":
            if not _is_number(value) or not 0 <= value <= 86400:
                raise SweepFileError(
                    f"{_where(path, 'repetitions.min_time_s')} must be a number of seconds from 0 "
                    f"to 86400, got {value!r}"
                )
        elif not _is_int(value) or not (0 if key in ("warmup", "seed") else 1) <= value <= 1_000_000:
            low = 0 if key in ("warmup", "seed") else 1
            raise SweepFileError(
                f"{_where(path, 'repetitions.' + key)} must be an integer from {low} to 1000000, "
                f"got {value!r}"
            )
    try:
        return RunSettings(**table)
    except InvalidOption as exc:
        raise SweepFileError(f"{_where(path, 'repetitions')}: {exc}") from None


def _text(path: str, table) -> tuple[str, ...] | None:
    """[text]: `prompt = "..."` or `prompts = "FILE"` (relative to the sweep file); None without it."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise SweepFileError(f"{_where(path, 'text')} must be a table ([text]), got {table!r}")
    _unknown(path, "text", table, _TEXT)
    if len(table) != 1 or not isinstance(value := next(iter(table.values())), str) or not value.strip():
        raise SweepFileError(f"{_where(path, '[text]')} needs exactly one of prompt = \"TEXT\" or prompts = \"FILE\"")
    try:
        if "prompt" in table:
            return (value,)
        return read_prompts(Path(path).parent / value if path else Path(value))
    except InvalidOption as exc:
        raise SweepFileError(f"{_where(path, 'text')}: {exc}") from None


def _limits(path: str, table) -> Limits:
    if not isinstance(table, dict):
        raise SweepFileError(f"{_where(path, 'limits')} must be a table ([limits]), got {table!r}")
    _unknown(path, "limits", table, _LIMITS)
    timeout = table.get("timeout_s", Limits.timeout_s)
    check_timeout(timeout, _where(path, "limits.timeout_s"))
    memory = table.get("memory_limit_gb")
    if memory is not None:
        check_memory_limit(memory, _where(path, "limits.memory_limit_gb"))
    return Limits(float(timeout), None if memory is None else float(memory))


def check_timeout(value, name: str = "--timeout") -> float:
    if not _is_number(value) or not 0 < value <= MAX_TIMEOUT_S:
        raise SweepFileError(
            f"{name} must be a number of seconds above 0 and at most {MAX_TIMEOUT_S:.0f}, got {value!r}"
        )
    return float(value)


def check_memory_limit(value, name: str = "--memory-limit") -> float:
    if not _is_number(value) or not 0.1 <= value <= MAX_MEMORY_GB:
        raise SweepFileError(f"{name} must be a number of GiB from 0.1 to {MAX_MEMORY_GB}, got {value!r}")
    return float(value)


def _options(path: str, table) -> tuple[tuple[str, tuple[tuple[str, object], ...]], ...]:
    if not isinstance(table, dict):
        raise SweepFileError(
            f"{_where(path, 'options')} must be a table ([options.<runtime>]), got {table!r}"
        )
    out = []
    for runtime, opts in table.items():
        if runtime not in known_runtimes():
            raise SweepFileError(
                f"{_where(path, 'options.' + runtime)}: options are per runtime; allowed tables: "
                f"{', '.join('options.' + r for r in known_runtimes())}"
            )
        if not isinstance(opts, dict):
            raise SweepFileError(
                f"{_where(path, 'options.' + runtime)} must be a table of runner options, got {opts!r}"
            )
        for key, value in opts.items():
            if not isinstance(value, str | int | float | bool) or (
                isinstance(value, float) and not math.isfinite(value)
            ):
                raise SweepFileError(
                    f"{_where(path, f'options.{runtime}.{key}')} must be a string, number or boolean, "
                    f"got {value!r}"
                )
        out.append((runtime, tuple(sorted(opts.items()))))
    return tuple(sorted(out))


def parse_sweep(data: dict, path: str = "", default_name: str = "sweep") -> Sweep:
    """A sweep from a parsed TOML document; raises SweepFileError naming the first bad key."""
    if not isinstance(data, dict):
        raise SweepFileError(f"{_where(path, 'the document')} must be a TOML table")
    _unknown(path, "", data, tuple(_TOP))
    for key in ("name", "description"):
        if key in data and not isinstance(data[key], str):
            raise SweepFileError(f"{_where(path, key)} must be a string, got {data[key]!r}")
    name = data.get("name", default_name)
    if not name or any(c in name for c in "/\\\0") or name.strip() != name:
        raise SweepFileError(
            f"{_where(path, 'name')} = {name!r} must be a plain name (no slashes or padding)"
        )
    if "grid" not in data:
        raise SweepFileError(
            f"{_where(path, '[grid]')} is missing; a sweep needs at least grid.models, "
            "grid.input_lens and grid.output_lens"
        )
    prompts = _text(path, data.get("text"))
    grid = _grid(path, data["grid"], text=prompts is not None)
    return Sweep(
        name=name,
        grid=grid,
        repetitions=_repetitions(path, data.get("repetitions", {})),
        limits=_limits(path, data.get("limits", {})),
        options=_options(path, data.get("options", {})),
        description=data.get("description", ""),
        source=path,
        text=None if prompts is None else Text(prompts, fit=bool(grid.input_lens)),
    )


def shipped_sweeps() -> dict[str, Path]:
    """The sweep files shipped with slmbench, by name."""
    folder = Path(__file__).resolve().parent / "shipped"  # package data, beside this module
    return {p.stem: p for p in sorted(folder.glob("*.toml"))}


def load_sweep(name_or_path: str | Path) -> Sweep:
    """A sweep file by path, or a shipped sweep by name (quick, paper-cpu, ...)."""
    path = Path(name_or_path)
    if not path.is_file():
        shipped = shipped_sweeps()
        if str(name_or_path) in shipped:
            path = shipped[str(name_or_path)]
        else:
            raise SweepFileError(
                f"no sweep file {str(name_or_path)!r}; give a path or a shipped sweep: "
                f"{', '.join(sorted(shipped))}"
            )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SweepFileError(f"{path}: not valid TOML ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SweepFileError(f"{path}: cannot be read ({exc})") from None
    return parse_sweep(data, str(path), default_name=path.stem)


# ---------------------------------------------------------------- expansion


def _runtime_devices(runtime: str) -> tuple[str, ...]:
    from slmbench.runners import DEFAULT_RUNTIMES, RUNNERS

    if runtime in RUNNERS:
        return RUNNERS[runtime].devices
    return tuple(d for d, names in DEFAULT_RUNTIMES.items() if runtime in names)


def model_units(models: tuple[str, ...], pair: bool) -> list[tuple[str, ...]]:
    """Models grouped into what one process measures: (encoder-decoder, decoder-only) pairs where
    both are listed and pairing is on, single models otherwise. Order follows the list."""
    from slmbench.models.presets import PAIRS

    units, used = [], set()
    for model in models:
        if model in used:
            continue
        partner = None
        if pair:
            if model in PAIRS and PAIRS[model] in models:
                partner = PAIRS[model]
            else:
                partner = next((do for do, ed in PAIRS.items() if ed == model and do in models), None)
        if partner and partner not in used:
            ed, do = (partner, model) if model in PAIRS else (model, partner)
            units.append((ed, do))
            used.update((ed, do))
        else:
            units.append((model,))
            used.add(model)
    return units


def _model_settings(model: str, settings: RunSettings) -> RunSettings | str:
    """The model's settings (under a text as is, its own token count of it; a text model's without
    the grid's image size), or why it cannot hold them."""
    from slmbench.models import resolve_model
    from slmbench.models.config import ConfigError

    spec = resolve_model(model)
    if spec.config.vision is None:
        settings = replace(settings, image_size=None)
    try:
        spec = spec.with_image_size(settings.image_size)
        settings = settings.for_model(spec)
        settings.check_fits(model, spec.config, spec.image_tokens)
    except (InvalidOption, ConfigError) as exc:
        return str(exc)
    return settings


def default_memory_limit(device: str) -> float | None:
    """A configuration's memory limit when none is set: this machine's RAM on CPU, none on
    accelerators (their drivers reserve address space far beyond physical memory)."""
    if device != "cpu":
        return None
    import psutil

    return round(psutil.virtual_memory().total / 2**30, 1)


def expand(sweep: Sweep) -> tuple[list[Configuration], list[str]]:
    g, reps = sweep.grid, sweep.repetitions
    notes, configs = [], []
    threads = g.threads or default_threads()
    combos = []
    for device in g.devices:
        for runtime in g.runtimes:
            if device in _runtime_devices(runtime):
                combos.append((device, runtime))
            elif len(g.devices) * len(g.runtimes) > 1:
                notes.append(f"{runtime} does not run on {device}: that combination is not in the grid")
            else:
                raise SweepFileError(
                    f"{_where(sweep.source, 'grid')}: runtime {runtime} does not run on {device}; "
                    f"it runs on {', '.join(_runtime_devices(runtime)) or 'nothing here'}"
                )
    units = model_units(g.models, g.pair_models)
    fitted_any = set()
    for device, runtime in combos:
        memory = sweep.limits.memory_limit_gb or default_memory_limit(device)
        for precision in g.precisions:
            if why := precision_unsupported(runtime, precision):
                if len(g.runtimes) * len(g.precisions) == 1:
                    raise SweepFileError(f"{_where(sweep.source, 'grid.precisions')}: {why}")
                if f"{why}: left out" not in notes:
                    notes.append(f"{why}: left out")
                continue
            for batch in g.batch_sizes:
                for output_len in g.output_lens:
                    for input_len, image_size in itertools.product(g.input_lens or (None,), g.image_sizes or (None,)):
                        settings = RunSettings(  # input_len None: the text as is
                            **{
                                **asdict(reps),
                                "batch": batch,
                                "input_len": input_len or RunSettings.input_len,
                                "output_len": output_len,
                                "text": sweep.text,
                                "image_size": image_size,
                            }
                        )
                        for whole in units:
                            unit = {}
                            for model in whole:  # a pair whose partner cannot hold the lengths runs alone
                                mine = _model_settings(model, settings)
                                if isinstance(mine, str):
                                    shape = ("the text" if input_len is None else f"input {input_len}") + (
                                        f", image {image_size}" if image_size else "")
                                    note = f"left out {model} at {shape}, output {output_len}: {mine}"
                                    if note not in notes:
                                        notes.append(note)
                                else:
                                    unit[model] = mine
                            if not unit:
                                continue
                            fitted_any.update({("input_lens", input_len), ("output_lens", output_len)})
                            options = dict(dict(sweep.options).get(runtime, ()))
                            runs = tuple(RunConfig.create(m, device, runtime, precision, mine, threads, options)
                                         for m, mine in unit.items())
                            configs.append(Configuration(runs, memory, sweep.name))
    for key, values in (("input_lens", g.input_lens), ("output_lens", g.output_lens)):
        for v in values:
            if combos and (key, v) not in fitted_any:
                raise SweepFileError(
                    f"{_where(sweep.source, 'grid.' + key)}: {v} fits none of the models "
                    f"({', '.join(g.models)}); use shorter lengths"
                )
    return configs, notes


__all__ = [
    "Configuration",
    "Grid",
    "Limits",
    "PRECISIONS",
    "Sweep",
    "SweepFileError",
    "check_memory_limit",
    "check_timeout",
    "default_memory_limit",
    "expand",
    "load_sweep",
    "model_units",
    "parse_sweep",
    "shipped_sweeps",
]
