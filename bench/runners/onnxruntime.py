"""ONNX Runtime runner (CPU; CUDA where onnxruntime-gpu is installed).

The KV cache never leaves the runtime between steps: IOBinding binds each step's present K/V
OrtValues as the next step's past, and the encoder's cross K/V once per request. Only the
in-graph argmax (`next_token`) is copied to the host per step.
"""

from __future__ import annotations

import time

import numpy as np

from slmbench.errors import DeviceUnavailable
from slmbench.runners.base import Availability, LoadInfo, Runner

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def default_threads() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or 1


class OnnxRuntimeRunner(Runner):
    runtime = "onnxruntime"
    devices = ("cpu", "cuda")
    artifact_format = "onnx"

    @classmethod
    def availability(cls, device: str) -> Availability:
        try:
            import onnxruntime as ort
        except ImportError:
            return Availability(False, "onnxruntime is not installed (pip install onnxruntime)")
        provider = _PROVIDERS.get(device)
        if provider is None:
            return Availability(False, f"onnxruntime runs on {', '.join(cls.devices)}, not {device}")
        if provider not in ort.get_available_providers():
            hint = ("install onnxruntime-gpu in place of onnxruntime (pip install slmbench[cuda]; "
                    "exactly one of the two may be installed)") if device == "cuda" else ""
            return Availability(False, f"onnxruntime {ort.__version__} has no {provider}"
                                       + (f"; {hint}" if hint else ""))
        if device == "cuda":
            from slmbench.runners.cuda import cuda_absent_reason

            reason = cuda_absent_reason()
            if reason:
                return Availability(False, reason)
        return Availability(True)

    def prepare(self, spec, precision, cache_dir=None, force=False):
        from slmbench.exporters.onnx import onnx_artifact

        return onnx_artifact(spec, precision, cache_dir, force)

    def _session(self, path):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        provider = _PROVIDERS[self.device]
        session = ort.InferenceSession(str(path), opts, providers=[provider])
        got = session.get_providers()
        check_provider(provider, got)
        return session

    def load(self, artifact) -> LoadInfo:
        import onnxruntime as ort

        self.threads = self.threads or default_threads()
        manifest = artifact.manifest
        self.family = manifest["family"]
        self.kv = manifest["kv"]
        started = time.perf_counter()
        self.decoder = self._session(artifact.graph_path("decoder"))
        self.encoder = self._session(artifact.graph_path("encoder")) if "encoder" in manifest["graphs"] else None
        compile_s = time.perf_counter() - started
        self.graphs = manifest["graphs"]
        self.ort_device = "cuda" if self.device == "cuda" else "cpu"
        self.binding = self.decoder.io_binding()
        self.past_names = [n for n in self.graphs["decoder"]["inputs"] if n.startswith("past_")]
        self.present_names = [n for n in self.graphs["decoder"]["outputs"] if n.startswith("present_")]
        info = {"providers": self.decoder.get_providers()}
        if self.device == "cuda":
            from slmbench.runners.cuda import cuda_device_info

            info.update(cuda_device_info())
        return LoadInfo(load_s=compile_s, compile_s=compile_s, device_executed=self.decoder.get_providers()[0],
                        device_info=info, runtime_version=ort.__version__,
                        options={"intra_op_num_threads": self.threads, "inter_op_num_threads": 1,
                                 "graph_optimization_level": "ORT_ENABLE_ALL", "io_binding": True})

    def _ortvalue(self, array: np.ndarray):
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(array, self.ort_device, 0)

    def start(self, input_ids: np.ndarray, max_new_tokens: int) -> None:
        batch = input_ids.shape[0]
        b = self.binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        empty = np.zeros((batch, self.kv["kv_heads"], 0, self.kv["head_dim"]), np.float32)
        for name in self.past_names:
            b.bind_ortvalue_input(name, self._ortvalue(empty))
        self._bind_outputs()
        self._step_ids = np.zeros((batch, 1), np.int64)
        self._step_value = self._ortvalue(self._step_ids) if self.device == "cpu" else None

    def _bind_outputs(self) -> None:
        """Let ORT allocate each output afresh: the present K/V grows by one row per step."""
        self.binding.clear_binding_outputs()
        for name in self.graphs["decoder"]["outputs"]:
            self.binding.bind_output(name, self.ort_device)

    def encode(self, input_ids: np.ndarray) -> None:
        mask = np.ones_like(input_ids)
        enc = self.encoder.io_binding()
        enc.bind_cpu_input("input_ids", input_ids)
        enc.bind_cpu_input("attention_mask", mask)
        for name in self.graphs["encoder"]["outputs"]:
            enc.bind_output(name, self.ort_device)
        self.encoder.run_with_iobinding(enc)
        outputs = dict(zip(self.graphs["encoder"]["outputs"], enc.get_outputs()))
        self.binding.bind_cpu_input("encoder_attention_mask", mask)
        for name, value in outputs.items():
            if name.startswith("cross_"):
                self.binding.bind_ortvalue_input(name, value)

    def decode(self, input_ids: np.ndarray) -> np.ndarray:
        b = self.binding
        if input_ids.shape[1] == 1 and self._step_value is not None:
            self._step_ids[...] = input_ids  # the bound OrtValue shares this buffer: no rebinding
            b.bind_ortvalue_input("input_ids", self._step_value)
        else:
            b.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids))
        self.decoder.run_with_iobinding(b)
        outputs = b.get_outputs()
        for name, value in zip(self.past_names, outputs[2:]):
            b.bind_ortvalue_input(name, value)
        self._bind_outputs()
        return outputs[1].numpy()

    def close(self) -> None:
        self.decoder = self.encoder = self.binding = None


def check_provider(requested: str, got: list[str]) -> None:
    """ONNX Runtime falls back to CPU with only a warning; refuse that (DESIGN.md section 4)."""
    if not got or got[0] != requested:
        raise DeviceUnavailable(f"onnxruntime fell back to {got[0] if got else 'nothing'} instead of "
                                f"{requested}; refusing to report CPU numbers as another device's")
