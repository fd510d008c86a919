"""`RunConfig`: what one measured row is a measurement *of*, and the only implementation of its key.

One model on one runtime and device, at one precision, batch and lengths, with its repetition
settings, thread count and every runtime option that changes speed (the OpenVINO mode, KV-cache
precision, static capacities). `slmbench run`, sweep expansion, the sweep worker, `overhead`,
`perf` and `gpu_check` all build one of these, so a row measured by any of them carries the same
key for the same thing. Where it was measured is the machine's identity (slmbench.host.environment),
never part of the key: resume, report and gate match on (machine, key).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

from slmbench.errors import InvalidOption
from slmbench.prompts import Text

LIMITS = {"batch": 256, "input_len": 1 << 17, "output_len": 1 << 16}


@dataclass(frozen=True)
class RunSettings:
    """Batch, lengths and how long to repeat: the part of a configuration shared by everything
    measured interleaved in one run. Validated on construction, no side effects."""

    batch: int = 1
    input_len: int = 512
    output_len: int = 128
    warmup: int = 1
    min_reps: int = 5
    min_time_s: float = 10.0
    max_reps: int = 200
    seed: int = 0
    # Optional run length chosen from the data: keep repeating (up to max_reps) until the 95% CI
    # of the median TTFT and of the median TPOT is within this fraction of the median.
    target_ci: float | None = None
    # Text instead of random ids (slmbench.prompts): as is, input_len is each model's own token count
    # (its mean over the prompts); fitted, every prompt is cut or repeated to input_len tokens.
    text: Text | None = None
    # A vision model's image, in pixels a side (models/vision.py); RunConfig.create fills in the
    # tower's native size. None for text models.
    image_size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", Text.from_value(self.text))
        for name in ("batch", "input_len", "output_len", "min_reps", "max_reps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InvalidOption(f"{name} must be a positive integer, got {value!r}")
            if value > LIMITS.get(name, 1 << 30):
                raise InvalidOption(f"{name} = {value} is beyond the supported {LIMITS[name]}")
        if not isinstance(self.warmup, int) or isinstance(self.warmup, bool) or self.warmup < 0:
            raise InvalidOption(f"warmup must be an integer >= 0, got {self.warmup!r}")
        if (not isinstance(self.min_time_s, int | float) or isinstance(self.min_time_s, bool)
                or not math.isfinite(self.min_time_s) or self.min_time_s < 0):
            raise InvalidOption(f"min_time_s must be a finite number of seconds >= 0, got {self.min_time_s!r}")
        if self.target_ci is not None and (not isinstance(self.target_ci, int | float)
                                           or isinstance(self.target_ci, bool)
                                           or not 0 < self.target_ci < 1):
            raise InvalidOption(f"target_ci must be a fraction between 0 and 1 (0.05 = +-5%), "
                                f"got {self.target_ci!r}")
        if self.image_size is not None and (not isinstance(self.image_size, int) or isinstance(self.image_size, bool)
                                            or self.image_size <= 0):
            raise InvalidOption(f"image_size must be a positive integer (pixels), got {self.image_size!r}")
        if self.max_reps < self.min_reps:
            raise InvalidOption(f"max_reps ({self.max_reps}) must be >= min_reps ({self.min_reps})")

    @property
    def text_as_is(self) -> bool:
        return self.text is not None and not self.text.fit

    def for_model(self, spec) -> RunSettings:
        """The settings as `spec` runs them: under a text as is, its input length is its own
        tokenizer's count of the text (slmbench.prompts.Text.token_length)."""
        if not self.text_as_is:
            return self
        return replace(self, input_len=self.text.token_length(spec, self.input_len))

    def shared(self) -> RunSettings:
        """What every configuration of one run must have in common: all of it, but the input length
        of a text as is, which each model's tokenizer decides."""
        return replace(self, input_len=1) if self.text_as_is else self

    @property
    def input_key(self) -> str:
        """The key's input field: `in512` (random ids), `in512:text-ID` (the text fitted to 512
        tokens), `in:text-ID` (the text as is, whatever each tokenizer makes of it, so that models
        with different tokenizers pair on the same text)."""
        image = f"+img{self.image_size}" if self.image_size else ""
        if self.text is None:
            return f"in{self.input_len}{image}"
        return (f"in:text-{self.text.id}" if self.text_as_is else f"in{self.input_len}:text-{self.text.id}") + image

    def check_fits(self, model: str, cfg, image_tokens: int = 0) -> None:
        """Lengths must fit the model's positions (decoder-only: prompt + generated tokens), the
        image's tokens included."""
        image = " + image tokens" if image_tokens else ""
        if cfg.is_encoder_decoder:
            need = {f"input_len{image}": self.input_len + image_tokens, "output_len": self.output_len}
        else:
            need = {f"input_len{image} + output_len": self.input_len + image_tokens + self.output_len}
        for what, value in need.items():
            if value > cfg.max_positions:
                raise InvalidOption(f"{what} = {value} exceeds {model}'s maximum positions "
                                    f"({cfg.max_positions}); use shorter lengths")


MAX_THREADS = 4096
Scalar = str | int | float | bool


def _check_options(options) -> tuple[tuple[str, Scalar], ...]:
    items = options.items() if isinstance(options, Mapping) else options
    out = []
    for name, value in items:
        if not isinstance(name, str) or not name:
            raise InvalidOption(f"a runner option name must be a non-empty string, got {name!r}")
        if value is None:
            continue  # an option not given is not a setting
        if not isinstance(value, Scalar) or (isinstance(value, float) and not math.isfinite(value)):
            raise InvalidOption(f"runner option {name} must be a string, number or boolean, got {value!r}")
        out.append((name, value))
    return tuple(sorted(out))


@dataclass(frozen=True)
class RunConfig:
    """One configuration; frozen and validated on construction (no side effects, no I/O)."""

    model: str
    device: str
    runtime: str
    precision: str
    settings: RunSettings
    threads: int
    options: tuple[tuple[str, Scalar], ...] = ()
    loop: str | None = None  # harness-overhead rows: "harness" or "bare" (slmbench.tools.overhead)
    _key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from slmbench.runners import DEVICES

        for name in ("model", "runtime", "precision"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or "|" in value:
                raise InvalidOption(f"{name} must be a non-empty name without '|', got {value!r}")
        if self.device not in DEVICES:
            raise InvalidOption(f"unknown device {self.device!r}; choose from {', '.join(DEVICES)}")
        if not isinstance(self.settings, RunSettings):
            raise InvalidOption(f"settings must be RunSettings, got {type(self.settings).__name__}")
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) or not 1 <= self.threads <= MAX_THREADS:
            raise InvalidOption(f"threads must be an integer from 1 to {MAX_THREADS}, got {self.threads!r}")
        if self.loop not in (None, "harness", "bare"):
            raise InvalidOption(f"loop must be harness or bare, got {self.loop!r}")
        object.__setattr__(self, "options", _check_options(self.options))
        object.__setattr__(self, "_key", self._make_key())

    def _make_key(self) -> str:
        s = self.settings
        extra = self.options + ((("loop", self.loop),) if self.loop else ())
        opts = ",".join(f"{k}={v}" for k, v in sorted(extra))
        return (f"{self.model}|{self.device}|{self.runtime}|{self.precision}|b{s.batch}|{s.input_key}|"
                f"out{s.output_len}|t{self.threads}" + (f"|{opts}" if opts else ""))

    @property
    def key(self) -> str:
        """What makes two rows the same configuration (the format rows of schema 1 already carry)."""
        return self._key

    @property
    def peer_key(self) -> str:
        """The key without the model: rows that share it differ only in the model measured."""
        return peer_key(self.key)

    @property
    def option_dict(self) -> dict:
        return dict(self.options)

    def spec(self):
        """The model this configuration measures (a vision model fed its image size)."""
        from slmbench.models import resolve_model

        return resolve_model(self.model).with_image_size(self.settings.image_size)

    def to_dict(self) -> dict:
        return {"model": self.model, "device": self.device, "runtime": self.runtime, "precision": self.precision,
                "settings": asdict(self.settings), "threads": self.threads, "options": dict(self.options),
                "loop": self.loop}

    @classmethod
    def from_dict(cls, data: Mapping) -> RunConfig:
        try:
            return cls(data["model"], data["device"], data["runtime"], data["precision"],
                       RunSettings(**data["settings"]), data["threads"], tuple((data.get("options") or {}).items()),
                       data.get("loop"))
        except (KeyError, TypeError) as exc:
            raise InvalidOption(f"not a run configuration ({exc})") from None

    @classmethod
    def create(cls, model: str, device: str = "cpu", runtime: str | None = None, precision: str = "fp32",
               settings: RunSettings | None = None, threads: int | None = None, options: Mapping | None = None,
               loop: str | None = None) -> RunConfig:
        """A configuration with what a run would fill in: the device's default runtime (checked
        available), the physical-core thread count, and the runner's option defaults for the device
        and shapes (one runtime's options never enter another's key)."""
        from slmbench.host.cpus import default_threads
        from slmbench.models.byo import byo_format
        from slmbench.runners import RUNNERS, select_runner

        settings = settings or RunSettings()
        fmt = byo_format(model)  # a user's own export runs on the runtime that reads its format
        if runtime is None:
            runtime = select_runner(device, None, fmt).runtime
        elif fmt and runtime in RUNNERS and RUNNERS[runtime].artifact_format != fmt:
            readers = [n for n, c in RUNNERS.items() if c.artifact_format == fmt]
            raise InvalidOption(f"{model} is an {fmt} export: {runtime} cannot run it; use --runtime "
                                f"{' or '.join(readers)}")
        if threads is None:
            threads = default_threads()
        settings = _with_image(model, settings)
        opts = dict(options or {})
        if runtime in RUNNERS:
            opts = RUNNERS[runtime].run_options(device, settings, opts)
        return cls(model, device, runtime, precision, settings, threads, tuple(opts.items()), loop)


def _with_image(model: str, settings: RunSettings) -> RunSettings:
    """The settings with a vision model's image size stated (its tower's native size unless given),
    so its key says what it was fed; a size given for a text model is refused. Only presets have a
    tower: other models are not resolved here."""
    if ":" in model:
        if settings.image_size is not None:
            raise InvalidOption(f"{model} takes no image; --image-size is for vision presets (mu-vl-330m, ...)")
        return settings
    from slmbench.models import resolve_model

    spec = resolve_model(model).with_image_size(settings.image_size)
    return settings if spec.image == settings.image_size else replace(settings, image_size=spec.image)


def plan(models: Iterable[str], device: str = "cpu", runtimes: Sequence[str | None] = (None,),
         precision: str = "fp32", settings: RunSettings | None = None, threads: int | None = None,
         options: Mapping | None = None) -> list[RunConfig]:
    """Every model on every runtime (None: the device's default), in that order: what one
    interleaved `run` measures. A model or runtime named twice is refused, not measured twice."""
    models, runtimes = list(models), list(runtimes) or [None]
    for what, values in (("--model", models), ("--runtime", runtimes)):
        seen = set()
        for v in values:
            if v in seen:
                raise InvalidOption(f"{what} {v} is given twice; name each once")
            seen.add(v)
    settings = settings or RunSettings()
    per_model = {m: settings for m in models}
    if settings.text_as_is:  # each model's own token count of the text
        from slmbench.models import resolve_model

        per_model = {m: settings.for_model(resolve_model(m)) for m in models}
    configs = [RunConfig.create(m, device, r, precision, per_model[m], threads, options)
               for r in runtimes for m in models]
    if len({c.settings.image_size is None for c in configs}) > 1:
        text = sorted({c.model for c in configs if c.settings.image_size is None})
        raise InvalidOption(f"the models of one run all take an image or none does: {', '.join(text)} "
                            f"take{'s' if len(text) == 1 else ''} none; measure text and vision models in "
                            "separate runs")
    from slmbench.runners import RUNNERS, precision_unsupported

    for runtime in dict.fromkeys(c.runtime for c in configs):  # refused before anything is prepared
        if why := precision_unsupported(runtime, precision):
            raise InvalidOption(why)
    for c in configs:  # a vision model where its graphs do not exist, too
        if c.settings.image_size is not None:
            RUNNERS[c.runtime].check_model(c.spec(), c.precision, c.option_dict)
    return configs


def peer_key(key: str) -> str:
    """A key without its model (the first field): the pairing identity of schema-1 rows too."""
    return key.partition("|")[2]


def check_one_run(configs: Sequence[RunConfig]) -> None:
    """Configurations measured interleaved in one run share their repetition settings, and none is
    there twice (two rows with one key, the first carrying the second's load figures)."""
    if not configs:
        raise InvalidOption("nothing to measure: give at least one model")
    keys = [c.key for c in configs]
    for key in keys:
        if keys.count(key) > 1:
            raise InvalidOption(f"the configuration {key} is given twice; name each model once")
    if len({c.settings.shared() for c in configs}) > 1:
        raise InvalidOption("configurations measured in one run must share batch, lengths and repetitions")
