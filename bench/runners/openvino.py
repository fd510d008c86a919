"""OpenVINO runner: CPU, Intel GPU and Intel NPU.

Modes (option `mode`, recorded in every row): `stateful` (default on CPU/GPU: the KV cache is
OpenVINO state), `static` (default on NPU: static-shape graphs, KV as explicit fixed-size tensors;
also runs on CPU/GPU, which is how it is tested), `npuw` (NPU only, decoder-only: the NPU plugin's
own LLM pipeline). Static and npuw shapes come from the options `max_prompt_len` (P) and
`min_response_len` (R); the CLI fills them from --input-len / --output-len.

Truthfulness: availability comes from `Core().available_devices`; after every compile the
runner reads `EXECUTION_DEVICES` and refuses anything but the requested device (AUTO is used only
when the option `ov_device` asks for it, e.g. "AUTO:NPU,CPU", and is then held to the same rule).
Speed-relevant settings are set explicitly and recorded: PERFORMANCE_HINT=LATENCY,
INFERENCE_NUM_THREADS, INFERENCE_PRECISION_HINT=f32 for fp32 (the CPU plugin would pick bf16 on
AMX machines), KV_CACHE_PRECISION (default f32; the CPU plugin would pick u8). Compile time is
recorded per graph; with `ov_cache_dir` (CACHE_DIR) a warm compile loads the cached blob, and
whether it did (LOADED_FROM_CACHE) is recorded.
"""

from __future__ import annotations

import functools
import re
import time
from pathlib import Path

import numpy as np

from slmbench.errors import DeviceUnavailable, InvalidOption
from slmbench.runners.base import Availability, LoadInfo, Runner, default_threads

PLUGINS = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}
MODES = ("stateful", "static", "npuw")
KV_PRECISIONS = ("f32", "f16", "bf16", "u8", "i8", "u4")
DRIVER_HINTS = {
    "GPU": "install the Intel GPU compute runtime (intel-opencl-icd, libOpenCL.so.1)",
    "NPU": "install the Intel NPU driver (linux-npu-driver) and check /dev/accel",
}
DEVICE_FACTS = (
    "FULL_DEVICE_NAME",
    "DEVICE_ARCHITECTURE",
    "DEVICE_TYPE",
    "OPTIMIZATION_CAPABILITIES",
    "DEVICE_GOPS",
    "NPU_DRIVER_VERSION",
    "NPU_COMPILER_VERSION",
    "NPU_DEVICE_TOTAL_MEM_SIZE",
    "GPU_DEVICE_TOTAL_MEM_SIZE",
    "DEVICE_PCI_INFO",
)
OPTION_KEYS = (
    "mode",
    "kv_cache_precision",
    "ov_cache_dir",
    "ov_device",
    "max_prompt_len",
    "min_response_len",
    "npuw_prefill_hint",
)


def _short(error: BaseException) -> str:
    """OpenVINO's multi-line 'Exception from file:line' chain, reduced to its message, one line."""
    lines = [ln.strip() for ln in str(error).splitlines()]
    text = " ".join(ln for ln in lines if ln and not ln.startswith("Exception from"))
    text = re.sub(r"Exception from \S+:\d+:\s*", "", text)
    text = re.sub(r"\"?/[^\s\"]*/([^/\s\":]+)\"?", r"\1", text)  # paths -> file names
    return re.sub(r"(\S+): \1:", r"\1:", text).strip()  # "x.so: x.so: cannot open" -> "x.so: cannot open"


def _probe_error(core, plugin: str) -> str:
    """Why a plugin cannot run: compile a one-op model and keep the plugin's own message."""
    import openvino as ov
    from openvino import opset13 as ops

    x = ops.parameter([1, 2], ov.Type.f32, name="x")
    try:
        core.compile_model(ov.Model([ops.relu(x)], [x]), plugin)
    except RuntimeError as exc:
        return _short(exc)
    return ""


@functools.cache
def _availability(device: str) -> Availability:
    try:
        import openvino as ov
    except ImportError:
        return Availability(False, "openvino is not installed (pip install openvino)")
    plugin = PLUGINS.get(device)
    if plugin is None:
        return Availability(False, f"openvino runs on {', '.join(PLUGINS)}, not {device}")
    core = ov.Core()
    seen = core.available_devices
    if any(d.split(".")[0] == plugin for d in seen):
        return Availability(True)
    what = {"GPU": "no Intel GPU", "NPU": "no Intel NPU"}.get(plugin, f"no {plugin}")
    why = _probe_error(core, plugin)
    return Availability(
        False,
        f"{what}: OpenVINO {ov.get_version().split('-')[0]} sees [{', '.join(seen)}]"
        + (f" ({plugin} plugin: {why})" if why else "")
        + f"; {DRIVER_HINTS.get(plugin, '')}",
    )


def executed_devices(compiled) -> list[str]:
    """EXECUTION_DEVICES as a list of names; AUTO reports e.g. '(CPU)' while it accelerates startup."""
    raw = compiled.get_property("EXECUTION_DEVICES")
    items = [raw] if isinstance(raw, str) else list(raw)
    return [str(d).strip().strip("()") for d in items]


def check_executed(devices: list[str], plugin: str, target: str) -> None:
    bases = {d.split(".")[0] for d in devices}
    if bases != {plugin}:
        raise DeviceUnavailable(
            f"OpenVINO compiled for {target} executes on {', '.join(devices) or 'nothing'}, "
            f"not {plugin}; refusing a silent fallback"
        )


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "get_type_name"):  # openvino.Type -> "f32"
        return value.get_type_name()
    if hasattr(value, "name") and not isinstance(value, (list, tuple, dict)):  # pybind enums
        return str(value.name)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def device_facts(core, plugin: str) -> dict:
    """The device's identity as OpenVINO reports it (name, architecture, driver, compiler)."""
    import openvino as ov

    try:
        supported = set(core.get_property(plugin, "SUPPORTED_PROPERTIES"))
    except Exception:  # metadata only: a plugin may not report it
        supported = set()
    facts = {"openvino_version": ov.get_version(), "plugin": plugin}
    for key in DEVICE_FACTS:
        if key in supported:
            try:
                facts[key.lower()] = _jsonable(core.get_property(plugin, key))
            except Exception:  # metadata only: a plugin may not report it
                continue
    return facts


class OpenVinoRunner(Runner):
    runtime = "openvino"
    devices = ("cpu", "gpu", "npu")
    artifact_format = "openvino"

    def __init__(self, device: str, threads: int | None = None, options: dict | None = None):
        super().__init__(device, threads, options)
        unknown = sorted(set(self.options) - set(OPTION_KEYS))
        if unknown:
            raise InvalidOption(f"unknown OpenVINO options {unknown}; known: {', '.join(OPTION_KEYS)}")
        self.mode = self.options.get("mode") or ("static" if device == "npu" else "stateful")
        if self.mode not in MODES:
            raise InvalidOption(f"unknown OpenVINO mode {self.mode!r}; choose from {', '.join(MODES)}")
        if self.mode == "npuw" and device != "npu":
            raise InvalidOption(
                "mode npuw is the NPU plugin's own LLM pipeline: it runs only with --device npu"
            )
        self.kv_precision = str(self.options.get("kv_cache_precision") or "f32").lower()
        if self.kv_precision not in KV_PRECISIONS:
            raise InvalidOption(
                f"KV cache precision {self.kv_precision!r}; choose from {', '.join(KV_PRECISIONS)}"
            )
        if self.mode == "static" and self.options.get("kv_cache_precision"):
            raise InvalidOption(
                "static mode holds the KV cache in explicit f32 tensors; drop --kv-cache-precision"
            )
        self.plugin = PLUGINS.get(device, device.upper())

    option_names = frozenset({"mode", "kv_cache_precision", "ov_cache_dir", "ov_device", "max_prompt_len",
                              "min_response_len", "npuw_prefill_hint"})

    @classmethod
    def run_options(cls, device: str, settings, options: dict | None) -> dict:
        """Mode by device (static shapes on the NPU, stateful elsewhere); static modes take their
        prompt and response capacity from the run's lengths unless given."""
        opts = super().run_options(device, settings, options)
        opts.setdefault("mode", "static" if device == "npu" else "stateful")
        if opts["mode"] in ("static", "npuw"):
            opts.setdefault("max_prompt_len", settings.input_len)
            opts.setdefault("min_response_len", settings.output_len)
        return opts

    @classmethod
    def availability(cls, device: str) -> Availability:
        return _availability(device)

    def _shapes(self) -> tuple[int | None, int | None]:
        if self.mode == "stateful":
            return None, None
        p, r = self.options.get("max_prompt_len"), self.options.get("min_response_len")
        if p is None or r is None:
            raise InvalidOption(
                f"mode {self.mode} needs the options max_prompt_len and min_response_len "
                "(the CLI sets them from --input-len and --output-len)"
            )
        return int(p), int(r)

    def prepare(self, spec, precision, cache_dir=None, force=False):
        from slmbench.exporters.openvino import openvino_artifact

        if self.mode == "npuw" and spec.config.is_encoder_decoder:
            raise InvalidOption(
                f"mode npuw is for decoder-only models; {spec.name} is an encoder-decoder "
                "(use --ov-mode static)"
            )
        p, r = self._shapes()
        return openvino_artifact(spec, precision, self.mode, cache_dir, force, p, r)

    def _config(self, precision: str) -> dict:
        config: dict = {"PERFORMANCE_HINT": "LATENCY"}
        if self.mode == "npuw":
            from slmbench.exporters.static import npuw_config

            p, r = self._shapes()
            config = npuw_config(p, r, self.options.get("npuw_prefill_hint"))
            if self.options.get("kv_cache_precision"):  # the pipeline's own default is f16
                config["KV_CACHE_PRECISION"] = self.kv_precision
            return config
        if self.plugin in ("CPU", "GPU"):
            if precision == "fp32":
                config["INFERENCE_PRECISION_HINT"] = "f32"
            if self.mode == "stateful":
                config["KV_CACHE_PRECISION"] = self.kv_precision
        if self.plugin == "CPU":
            config["INFERENCE_NUM_THREADS"] = self.threads
        return config

    def _compile(self, core, path: Path, target: str, config: dict):
        started = time.perf_counter()
        compiled = core.compile_model(str(path), target, config)
        elapsed = time.perf_counter() - started
        try:
            cached = bool(compiled.get_property("LOADED_FROM_CACHE"))
        except Exception:  # metadata only: a plugin may not report it
            cached = None
        return compiled, elapsed, cached

    def load(self, artifact) -> LoadInfo:
        import openvino as ov

        manifest = artifact.manifest
        mode = manifest["variant"]["mode"]
        if mode != self.mode:
            raise InvalidOption(f"artifact {artifact.key} is mode {mode}, the runner is set to {self.mode}")
        self.family = manifest["family"]
        if self.plugin == "CPU":
            self.threads = self.threads or default_threads()
        core = ov.Core()
        cache_dir = self.options.get("ov_cache_dir")
        warm_before = None
        if cache_dir:
            cache_dir = Path(cache_dir)
            warm_before = cache_dir.is_dir() and any(cache_dir.iterdir())
            core.set_property({"CACHE_DIR": str(cache_dir)})
        target = self.options.get("ov_device") or self.plugin
        config = self._config(manifest["variant"]["precision"])
        compiled, compile_s, from_cache, executed = {}, {}, {}, {}
        for role, graph in manifest["graphs"].items():
            try:
                compiled[role], compile_s[role], from_cache[role] = self._compile(
                    core, artifact.path / graph["file"], target, config
                )
            except RuntimeError as exc:
                raise DeviceUnavailable(
                    f"OpenVINO could not compile {role} for {target}: {_short(exc)}"
                ) from None
            executed[role] = executed_devices(compiled[role])
            check_executed(executed[role], self.plugin, target)
        self.session = self._session(compiled, manifest)
        applied = self._applied(compiled["decoder"], config)
        options = {
            "mode": self.mode,
            "compile_target": target,
            "config": _jsonable(config),
            "applied": applied,
            "kv_cache_precision": self._kv_record(applied),
            "compile_s": compile_s,
            "ov_cache_dir": str(cache_dir) if cache_dir else None,
            "cache_warm_before": warm_before,
            "loaded_from_cache": from_cache,
        }
        if self.mode in ("static", "npuw"):
            options["static"] = manifest.get("static") or dict(
                zip(("max_prompt_len", "min_response_len"), self._shapes(), strict=True)
            )
        info = device_facts(core, self.plugin)
        info["execution_devices"] = executed
        return LoadInfo(
            load_s=sum(compile_s.values()),
            compile_s=sum(compile_s.values()),
            device_executed=self.plugin,
            device_info=info,
            runtime_version=ov.get_version(),
            options=options,
        )

    def _applied(self, compiled, config: dict) -> dict:
        """What the compiled model says it runs with (the request may be adjusted by the plugin)."""
        keys = (
            "PERFORMANCE_HINT",
            "INFERENCE_NUM_THREADS",
            "NUM_STREAMS",
            "INFERENCE_PRECISION_HINT",
            "KV_CACHE_PRECISION",
            "KEY_CACHE_PRECISION",
            "VALUE_CACHE_PRECISION",
            "EXECUTION_MODE_HINT",
            "ENABLE_CPU_PINNING",
        )
        try:
            supported = set(compiled.get_property("SUPPORTED_PROPERTIES"))
        except Exception:  # metadata only: a plugin may not report it
            supported = set()
        applied = {}
        for key in keys:
            if key in supported:
                try:
                    applied[key] = _jsonable(compiled.get_property(key))
                except Exception:  # metadata only: a plugin may not report it
                    continue
        return applied

    def _kv_record(self, applied: dict) -> str:
        if self.mode == "static":
            return "explicit f32 tensors"
        if self.mode == "npuw":
            return self.kv_precision if self.options.get("kv_cache_precision") else "f16 (NPUW default)"
        return str(applied.get("KV_CACHE_PRECISION", self.kv_precision))

    def _session(self, compiled: dict, manifest: dict):
        from slmbench.exporters.openvino import StatefulSession
        from slmbench.exporters.static import NpuwSession, StaticSession

        graphs, kv = manifest["graphs"], manifest["kv"]
        if self.mode == "stateful":
            return StatefulSession(
                compiled["decoder"], compiled.get("encoder"), kv, graphs["decoder"]["inputs"]
            )
        if self.mode == "static":
            return StaticSession(compiled, graphs, manifest["static"], kv, self.family == "encoder-decoder")
        return NpuwSession(compiled["decoder"], kv, graphs["decoder"]["inputs"])

    def start(self, input_ids: np.ndarray, max_new_tokens: int) -> None:
        if self.mode == "npuw":
            from slmbench.exporters.static import npuw_capacity

            p, r = self._shapes()
            if input_ids.shape[0] != 1 or input_ids.shape[1] < 2:
                raise InvalidOption("mode npuw needs batch 1 and a prompt of at least 2 tokens")
            if input_ids.shape[1] + max_new_tokens > npuw_capacity(p, r):
                raise InvalidOption(f"prompt + new tokens exceed the NPU KV capacity {npuw_capacity(p, r)}")
        self.session.start(input_ids, max_new_tokens)

    def encode(self, input_ids: np.ndarray) -> None:
        self.session.encode(input_ids)

    def decode(self, input_ids: np.ndarray) -> np.ndarray:
        return self.session.decode(input_ids)

    def bare_generate(self, input_ids: np.ndarray, output_len: int, start_token: int = 0):
        """OpenVINO's own calls in a plain loop (stateful mode), for the harness-overhead floor."""
        if self.mode != "stateful":
            raise InvalidOption("the bare loop for harness overhead exists for --ov-mode stateful only")
        return self.session.bare_generate(input_ids, output_len, start_token)

    def close(self) -> None:
        self.session = None
