"""The OpenVINO modes, one class each: what a mode exports, which options it takes and how it
defaults them, how it compiles, whether it has a bare loop, and the session it runs. The runner
holds one `Mode` and asks it; nothing else looks at the mode's name.

- `stateful` (default on CPU/GPU): the KV cache is OpenVINO state (exporters.openvino).
- `static` (default on NPU): static-shape graphs, KV as explicit fixed-size f32 tensors
  (exporters.static); also runs on CPU/GPU, which is how it is tested.
- `npuw` (NPU only, decoder-only): the NPU plugin's own LLM pipeline over a stateful IR.
Static and npuw shapes come from the options `max_prompt_len` (P) and `min_response_len` (R); the
run's input and output lengths fill them when not given.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from slmbench.errors import InvalidOption
from slmbench.exporters import openvino as ov_exporter
from slmbench.exporters import static as static_exporter
from slmbench.exporters.artifact import Artifact, ArtifactError
from slmbench.exporters.byo import byo_artifact
from slmbench.exporters.compress_openvino import compressed_openvino_artifact
from slmbench.exporters.precision import check_supported
from slmbench.models.byo import byo_format
from slmbench.runners.openvino import npuw
from slmbench.runners.openvino.layout import LayoutSession
from slmbench.runners.openvino.npuw import NpuwSession
from slmbench.runners.openvino.stateful import StatefulSession
from slmbench.runners.openvino.static import StaticSession

# Every option the OpenVINO runner takes (each mode reads those it needs).
OPTIONS = (
    "mode",
    "kv_cache_precision",
    "ov_cache_dir",
    "ov_device",
    "max_prompt_len",
    "min_response_len",
    "npuw_prefill_hint",
)
KV_PRECISIONS = ("f32", "f16", "bf16", "u8", "i8", "u4")


class Mode:
    name: ClassVar[str]
    bare_loop: ClassVar[bool] = False  # has a plain loop of OpenVINO's calls (the overhead floor)

    def __init__(self, device: str, options: dict):
        self.options = options
        self.precision: str | None = None  # set by config() at load
        self.kv_precision = str(options.get("kv_cache_precision") or "f32").lower()
        if self.kv_precision not in KV_PRECISIONS:
            raise InvalidOption(
                f"KV cache precision {self.kv_precision!r}; choose from {', '.join(KV_PRECISIONS)}"
            )

    @classmethod
    def run_defaults(cls, options: dict, settings) -> None:
        """Fill the options this mode takes from the run's settings, where the user gave none."""

    def shapes(self) -> tuple[int | None, int | None]:
        return None, None

    # ---- the artifact ----

    @classmethod
    def artifact(cls, spec, precision: str, cache_dir=None, force: bool = False,
                 prompt_len: int | None = None, response_len: int | None = None) -> tuple[Artifact, bool]:
        """This mode's IR of `spec` in `precision` (others derive from fp32), checked before caching
        through this mode's session."""
        check_supported("openvino", precision, "openvino")
        if precision == "fp32":
            return cls.export(spec, cache_dir, force, prompt_len, response_len)
        fp32 = lambda: cls.export(spec, cache_dir, False, prompt_len, response_len)
        return compressed_openvino_artifact(spec, precision, fp32, cls.session, cache_dir, force)

    @classmethod
    def export(cls, spec, cache_dir, force: bool, prompt_len, response_len) -> tuple[Artifact, bool]:
        raise NotImplementedError

    def prepare(self, spec, precision: str, cache_dir=None, force: bool = False) -> tuple[Artifact, bool]:
        if byo_format(spec.name):
            raise InvalidOption(f"{spec.name} runs as exported, in mode stateful; mode {self.name} needs "
                                "graphs slmbench exports itself (use a preset or hf:DIR)")
        return self.artifact(spec, precision, cache_dir, force, *self.shapes())

    # ---- running it ----

    def config(self, plugin: str, precision: str, threads: int | None) -> dict:
        """compile_model's configuration: every speed-relevant setting explicit."""
        self.precision = precision
        config: dict = {"PERFORMANCE_HINT": "LATENCY"}
        if plugin in ("CPU", "GPU"):
            if precision in ("fp32", "bf16"):  # bf16 reaches here on a CPU only (runner.check_bf16)
                config["INFERENCE_PRECISION_HINT"] = {"fp32": "f32", "bf16": "bf16"}[precision]
            config.update(self.kv_config())
        if plugin == "CPU":
            config["INFERENCE_NUM_THREADS"] = threads
        return config

    def kv_config(self) -> dict:
        return {}

    def kv_record(self, applied: dict) -> str:
        """The KV cache precision a row records."""
        raise NotImplementedError

    def record(self, manifest: dict) -> dict:
        """What a row records about this mode beyond its name."""
        return {}

    @staticmethod
    def session(compiled: dict, manifest: dict):
        """The session over compiled graphs (by role) of an artifact with `manifest`; also what the
        exporters run their parity check through (slmbench.exporters.openvino.SessionFactory)."""
        raise NotImplementedError

    def check_request(self, input_ids: np.ndarray, max_new_tokens: int) -> None:
        """Refuse a request this mode cannot hold (before the session's own checks)."""


class Stateful(Mode):
    name = "stateful"
    bare_loop = True

    @classmethod
    def export(cls, spec, cache_dir, force, prompt_len, response_len):
        return ov_exporter.stateful_artifact(spec, cls.session, cache_dir, force)

    def prepare(self, spec, precision, cache_dir=None, force=False):
        """A user's own IR (`ov:DIR`) is read in place; its parity check runs this mode's session."""
        if byo_format(spec.name):
            steps = lambda artifact: ov_exporter.exact_session(artifact.path, artifact.manifest, self.session)
            return byo_artifact(spec, precision, steps, cache_dir, force, mode=self.name)
        return super().prepare(spec, precision, cache_dir, force)

    def kv_config(self) -> dict:
        return {"KV_CACHE_PRECISION": self.kv_precision}

    def kv_record(self, applied: dict) -> str:
        return str(applied.get("KV_CACHE_PRECISION", self.kv_precision))

    def check_request(self, input_ids, max_new_tokens):
        if self.precision == "bf16" and input_ids.shape[0] > 1:
            raise InvalidOption(
                "OpenVINO's bf16 fused attention computes wrong logits at batch > 1 (measured here: 2.5 "
                "logit std off at batch 2, exact at batch 1; docs/environment.md): use --batch 1 or fp32"
            )

    @staticmethod
    def session(compiled, manifest):
        if "layout" in manifest:  # a user's own IR (slmbench.exporters.byo)
            return LayoutSession(compiled, manifest)
        return StatefulSession(compiled["decoder"], compiled.get("encoder"), manifest["kv"],
                               manifest["graphs"]["decoder"]["inputs"], compiled.get("vision"),
                               (manifest.get("vision") or {}).get("hidden"))


class Shaped(Mode):
    """A mode with static shapes: the prompt capacity P and the response length R."""

    @classmethod
    def run_defaults(cls, options, settings):
        options.setdefault("max_prompt_len", settings.input_len)
        options.setdefault("min_response_len", settings.output_len)

    def shapes(self) -> tuple[int, int]:
        p, r = self.options.get("max_prompt_len"), self.options.get("min_response_len")
        if p is None or r is None:
            raise InvalidOption(
                f"mode {self.name} needs the options max_prompt_len and min_response_len "
                "(the CLI sets them from --input-len and --output-len)"
            )
        return int(p), int(r)

    def record(self, manifest):
        return {"static": manifest.get("static")
                or dict(zip(("max_prompt_len", "min_response_len"), self.shapes(), strict=True))}


class Static(Shaped):
    name = "static"

    def __init__(self, device, options):
        super().__init__(device, options)
        if options.get("kv_cache_precision"):
            raise InvalidOption(
                "static mode holds the KV cache in explicit f32 tensors; drop --kv-cache-precision"
            )

    @classmethod
    def export(cls, spec, cache_dir, force, prompt_len, response_len):
        return static_exporter.static_artifact(spec, prompt_len, response_len, cls.session, cache_dir, force)

    def kv_record(self, applied):
        return "explicit f32 tensors"

    @staticmethod
    def session(compiled, manifest):
        graphs = manifest["graphs"]
        return StaticSession(compiled, graphs, manifest["static"], manifest["kv"], "encoder" in graphs)


class Npuw(Shaped):
    name = "npuw"

    def __init__(self, device, options):
        if device != "npu":
            raise InvalidOption(
                "mode npuw is the NPU plugin's own LLM pipeline: it runs only with --device npu"
            )
        super().__init__(device, options)

    @classmethod
    def export(cls, spec, cache_dir, force, prompt_len, response_len):
        return static_exporter.npuw_artifact(spec, cls.session, cache_dir, force)

    def prepare(self, spec, precision, cache_dir=None, force=False):
        if spec.config.is_encoder_decoder:
            raise InvalidOption(
                f"mode npuw is for decoder-only models; {spec.name} is an encoder-decoder "
                "(use --ov-mode static)"
            )
        return super().prepare(spec, precision, cache_dir, force)

    def config(self, plugin, precision, threads):
        config = npuw.npuw_config(*self.shapes(), self.options.get("npuw_prefill_hint"))
        if self.options.get("kv_cache_precision"):  # the pipeline's own default is f16
            config["KV_CACHE_PRECISION"] = self.kv_precision
        return config

    def kv_record(self, applied):
        return self.kv_precision if self.options.get("kv_cache_precision") else "f16 (NPUW default)"

    @staticmethod
    def session(compiled, manifest):
        return NpuwSession(compiled["decoder"], manifest["kv"], manifest["graphs"]["decoder"]["inputs"])

    def check_request(self, input_ids, max_new_tokens):
        capacity = npuw.npuw_capacity(*self.shapes())
        if input_ids.shape[0] != 1 or input_ids.shape[1] < 2:
            raise InvalidOption("mode npuw needs batch 1 and a prompt of at least 2 tokens")
        if input_ids.shape[1] + max_new_tokens > capacity:
            raise InvalidOption(f"prompt + new tokens exceed the NPU KV capacity {capacity}")


MODES: dict[str, type[Mode]] = {m.name: m for m in (Stateful, Static, Npuw)}


def default_mode(device: str) -> str:
    """Static shapes on the NPU (which compiles nothing else), stateful elsewhere."""
    return "static" if device == "npu" else "stateful"


def mode_for(device: str, options: dict) -> Mode:
    """The runner's mode from its options (or the device's default), checked."""
    name = options.get("mode") or default_mode(device)
    if name not in MODES:
        raise InvalidOption(f"unknown OpenVINO mode {name!r}; choose from {', '.join(MODES)}")
    return MODES[name](device, options)


def openvino_artifact(spec, precision: str = "fp32", mode: str = "stateful", cache_dir=None, force: bool = False,
                      prompt_len: int | None = None, response_len: int | None = None) -> tuple[Artifact, bool]:
    """The IR of `spec` for `mode` in `precision`; static graphs are specific to (prompt_len,
    response_len). What the runner's `prepare` does, without a runner."""
    if mode not in MODES:
        raise ArtifactError(f"unknown OpenVINO mode {mode!r}; choose from {', '.join(MODES)}")
    return MODES[mode].artifact(spec, precision, cache_dir, force, prompt_len, response_len)
