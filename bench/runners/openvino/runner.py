"""The OpenVINO runner: availability, device checks, compile and load; what differs by mode is in
slmbench.runners.openvino.modes.

Truthfulness: availability comes from `Core().available_devices`; after every compile the
runner reads `EXECUTION_DEVICES` and refuses anything but the requested device (AUTO is used only
when the option `ov_device` asks for it, e.g. "AUTO:NPU,CPU", and is then held to the same rule).
Speed-relevant settings are set explicitly and recorded: PERFORMANCE_HINT=LATENCY,
INFERENCE_NUM_THREADS, INFERENCE_PRECISION_HINT=f32 for fp32 (the CPU plugin would pick bf16 on
AMX and AVX512-BF16 machines) and bf16 for bf16, read back after compiling, KV_CACHE_PRECISION
(default f32; the CPU plugin would pick u8). Compile time is recorded per graph; with
`ov_cache_dir` (CACHE_DIR) a warm compile loads the cached blob, and whether it did
(LOADED_FROM_CACHE) is recorded.
"""

from __future__ import annotations

import functools
import re
import time
from pathlib import Path

import numpy as np

from slmbench.errors import DeviceUnavailable, InvalidOption
from slmbench.exporters.openvino import check_compute_precision
from slmbench.host.cpus import default_threads
from slmbench.host.memory import release_mapped_files
from slmbench.runners.base import Availability, LoadInfo, Runner
from slmbench.runners.openvino.modes import MODES, OPTIONS, default_mode, mode_for

PLUGINS = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}
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


def check_bf16(plugin: str) -> None:
    """bf16 compute is the CPU plugin's, on a CPU with AVX512-BF16 or AMX; refuse it elsewhere."""
    if plugin != "CPU":
        raise InvalidOption(f"bf16 compute is OpenVINO CPU's; the {plugin} plugin computes in f16 or f32 "
                            "(use --precision fp16)")
    import openvino as ov

    capabilities = [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    if "BF16" not in capabilities:
        raise InvalidOption(f"this CPU has no bf16 compute (OpenVINO CPU capabilities: {', '.join(capabilities)}); "
                            "bf16 needs AVX512-BF16 or AMX")


class OpenVinoRunner(Runner):
    runtime = "openvino"
    devices = ("cpu", "gpu", "npu")
    artifact_format = "openvino"

    option_names = frozenset(OPTIONS)
    takes_images = True

    @classmethod
    def check_model(cls, spec, precision, options):
        super().check_model(spec, precision, options)
        if spec.image is not None and options.get("mode") == "npuw":
            raise InvalidOption(f"{spec.name} is a vision model: mode npuw's NPU LLM pipeline takes input_ids only, "
                                "no image embeddings; use --ov-mode static (or stateful)")

    def __init__(self, device: str, threads: int | None = None, options: dict | None = None):
        super().__init__(device, threads, options)
        unknown = sorted(set(self.options) - self.option_names)
        if unknown:
            raise InvalidOption(f"unknown OpenVINO options {unknown}; known: {', '.join(OPTIONS)}")
        self.mode = mode_for(device, self.options)
        self.plugin = PLUGINS.get(device, device.upper())

    @classmethod
    def run_options(cls, device: str, settings, options: dict | None) -> dict:
        """The mode by device, and the mode's defaults from the run's settings."""
        opts = super().run_options(device, settings, options)
        opts.setdefault("mode", default_mode(device))
        if opts["mode"] in MODES:
            MODES[opts["mode"]].run_defaults(opts, settings)
        return opts

    @classmethod
    def availability(cls, device: str) -> Availability:
        return _availability(device)

    def prepare(self, spec, precision, cache_dir=None, force=False):
        if precision == "bf16":
            check_bf16(self.plugin)
        return self.mode.prepare(spec, precision, cache_dir, force)

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
        if mode != self.mode.name:
            raise InvalidOption(f"artifact {artifact.key} is mode {mode}, the runner is set to {self.mode.name}")
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
        config = self.mode.config(self.plugin, manifest["variant"]["precision"], self.threads)
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
            check_compute_precision(compiled[role], config.get("INFERENCE_PRECISION_HINT"))
        self.session = self.mode.session(compiled, manifest)
        primed = self._prime("encoder" in manifest["graphs"], artifact, manifest) if self.plugin == "CPU" else None
        applied = self._applied(compiled["decoder"], config)
        options = {
            "mode": self.mode.name,
            "compile_target": target,
            "config": _jsonable(config),
            "applied": applied,
            "kv_cache_precision": self.mode.kv_record(applied),
            "compile_s": compile_s,
            "ov_cache_dir": str(cache_dir) if cache_dir else None,
            "cache_warm_before": warm_before,
            "loaded_from_cache": from_cache,
            "primed": primed,
            **self.mode.record(manifest),
        }
        info = device_facts(core, self.plugin)
        info["execution_devices"] = executed
        return LoadInfo(
            compute_precision=applied.get("INFERENCE_PRECISION_HINT") if self.plugin == "CPU" else None,
            compile_s=sum(compile_s.values()),
            device_executed=self.plugin,
            device_info=info,
            runtime_version=ov.get_version(),
            options=options,
        )

    def _prime(self, encoder_decoder: bool, artifact, manifest: dict) -> dict:
        """One untimed two-token request inside load, then the IR's mapped weight pages released.

        The CPU plugin maps the IR's .bin, packs some weights into its own layout at compile and
        the rest only at the first inference (deconly-330m fp32: 0.84 GB at compile, 0.54 GB more
        at the first request), and keeps the mapping. Priming here puts every packed weight in
        place before the loader backs the weights with huge pages (slmbench.host.hugepages: memory
        allocated later stays on 4 KiB pages), and lets the file's pages go, which the plugin then
        barely reads (the embedding's rows): peak RSS while generating fell from 2.15x to 1.21x
        the weights. The pages compiling read are let go before the request too, for a lower load
        peak. Cold TTFT is therefore the first request after this one (docs/metrics.md)."""
        weights = [(artifact.path / graph["file"]).with_suffix(".bin") for graph in manifest["graphs"].values()]
        released = release_mapped_files(weights)  # what compiling read: the request's own peak stays lower
        ids = np.ones((1, 2), np.int64)
        started = time.perf_counter()
        self.start(ids, 2)
        if encoder_decoder:
            self.encode(ids)
        step = self.decode(np.zeros((1, 1), np.int64) if encoder_decoder else ids)
        self.decode(np.ascontiguousarray(step, dtype=np.int64).reshape(1, 1))
        seconds = time.perf_counter() - started
        return {"request_s": seconds, "released_file_bytes": released + release_mapped_files(weights)}

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

    def start(self, input_ids: np.ndarray, max_new_tokens: int) -> None:
        self.mode.check_request(input_ids, max_new_tokens)
        self.session.start(input_ids, max_new_tokens)

    def encode_image(self, pixels: np.ndarray) -> None:
        self.session.encode_image(pixels)

    def encode(self, input_ids: np.ndarray) -> None:
        self.session.encode(input_ids)

    def decode(self, input_ids: np.ndarray) -> np.ndarray:
        return self.session.decode(input_ids)

    def bare_generate(self, input_ids: np.ndarray, output_len: int, start_token: int = 0):
        """OpenVINO's own calls in a plain loop (stateful mode), for the harness-overhead floor."""
        if not self.mode.bare_loop:
            raise InvalidOption("the bare loop for harness overhead exists for --ov-mode stateful only")
        return self.session.bare_generate(input_ids, output_len, start_token)

    def close(self) -> None:
        self.session = None
