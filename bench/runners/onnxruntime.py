"""ONNX Runtime runner (CPU; CUDA where onnxruntime-gpu is installed).

The KV cache never leaves the runtime between steps: IOBinding binds each step's present K/V
OrtValues (allocated on the run device) as the next step's past, and the encoder's cross K/V and
mask once per request. Only the in-graph argmax (`next_token`, bound to host memory) is copied to
the host per step; logits stay on the device. Run() synchronises the execution provider before it
returns (ONNX Runtime's default), so a returned token is final. The empty past takes the dtype
the decoder graph declares, so fp16 artifacts work unchanged.
"""

from __future__ import annotations

import time

import numpy as np

from slmbench.errors import DeviceUnavailable
from slmbench.exporters.onnx import past_dtype
from slmbench.host.cpus import default_threads
from slmbench.runners.base import Availability, LoadInfo, Runner

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


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
            hint = ("install onnxruntime-gpu in place of onnxruntime (the cuda extra; exactly one of the "
                    "two may be installed: README, section CUDA)") if device == "cuda" else ""
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
        from slmbench.exporters.quantize_onnx import quantized_onnx_artifact

        if precision == "fp32":
            return onnx_artifact(spec, precision, cache_dir, force)
        return quantized_onnx_artifact(spec, precision, cache_dir, force)

    def _session(self, path):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # Initializers allocated once outside the arena: peak RSS fell from 1.78x to ~1.1x the
        # weight bytes for deconly-330m here, at unchanged speed (make perf).
        opts.add_session_config_entry("session.use_device_allocator_for_initializers", "1")
        provider = _PROVIDERS[self.device]
        # fp32 means IEEE fp32 on every runtime; the CUDA EP would otherwise use TF32 matmuls
        options = {"use_tf32": "0"} if self.device == "cuda" else {}
        session = ort.InferenceSession(str(path), opts, providers=[(provider, options)])
        got = session.get_providers()
        check_provider(provider, got)
        return session

    def load(self, artifact) -> LoadInfo:
        import onnxruntime as ort

        self.threads = self.threads or default_threads()
        manifest = artifact.manifest
        self.kv = manifest["kv"]
        started = time.perf_counter()
        self.decoder = self._session(artifact.graph_path("decoder"))
        self.encoder = self._session(artifact.graph_path("encoder")) if "encoder" in manifest["graphs"] else None
        compile_s = time.perf_counter() - started
        self.graphs = manifest["graphs"]
        self.ort_device = "cuda" if self.device == "cuda" else "cpu"
        self.binding = self.decoder.io_binding()
        self.past_names = [n for n in self.graphs["decoder"]["inputs"] if n.startswith("past_")]
        self.kv_dtype = past_dtype(self.decoder, self.past_names)
        self.present_names = [n for n in self.graphs["decoder"]["outputs"] if n.startswith("present_")]
        info = {"providers": self.decoder.get_providers(), "kv_dtype": np.dtype(self.kv_dtype).name}
        if self.device == "cuda":
            from slmbench.runners.cuda import cuda_device_info, ort_cuda_build

            info.update(cuda_device_info())
            info.update(ort_cuda_build())
            info["provider_options"] = self.decoder.get_provider_options().get(_PROVIDERS["cuda"], {})
        # an fp32 graph computes in f32 on the CPU provider; lower precisions run kernels of their own
        compute = "f32" if self.device == "cpu" and manifest.get("precision") == "fp32" else None
        return LoadInfo(compile_s=compile_s, device_executed=self.decoder.get_providers()[0], compute_precision=compute,
                        device_info=info, runtime_version=ort.__version__,
                        options={"intra_op_num_threads": self.threads, "inter_op_num_threads": 1,
                                 "graph_optimization_level": "ORT_ENABLE_ALL", "io_binding": True,
                                 "use_device_allocator_for_initializers": True})

    def _ortvalue(self, array: np.ndarray):
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(array, self.ort_device, 0)

    def start(self, input_ids: np.ndarray, max_new_tokens: int) -> None:
        batch = input_ids.shape[0]
        b = self.binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        empty = np.zeros((batch, self.kv["kv_heads"], 0, self.kv["head_dim"]), self.kv_dtype)
        for name in self.past_names:
            b.bind_ortvalue_input(name, self._ortvalue(empty))
        self._bind_outputs()
        self._step_ids = np.zeros((batch, 1), np.int64)
        self._step_value = self._ortvalue(self._step_ids) if self.device == "cpu" else None

    def _bind_outputs(self) -> None:
        """Let ORT allocate each output afresh: the present K/V grows by one row per step. All stay
        on the run device except next_token, the one thing the host needs."""
        self.binding.clear_binding_outputs()
        for name in self.graphs["decoder"]["outputs"]:
            self.binding.bind_output(name, "cpu" if name == "next_token" else self.ort_device)

    def encode(self, input_ids: np.ndarray) -> None:
        mask = np.ones_like(input_ids)
        enc = self.encoder.io_binding()
        enc.bind_cpu_input("input_ids", input_ids)
        enc.bind_cpu_input("attention_mask", mask)
        for name in self.graphs["encoder"]["outputs"]:
            enc.bind_output(name, self.ort_device)
        self.encoder.run_with_iobinding(enc)
        enc.synchronize_outputs()  # the encoder time ends when its outputs are ready
        outputs = dict(zip(self.graphs["encoder"]["outputs"], enc.get_outputs()))
        self.binding.bind_ortvalue_input("encoder_attention_mask", self._ortvalue(mask))  # on device, once
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

    def bare_generate(self, input_ids: np.ndarray, output_len: int, start_token: int = 0):
        """The floor for harness overhead (slmbench.tools.overhead): the generation measure.generate does,
        on the same session, binding and buffers, as a plain loop of ONNX Runtime's own calls with
        nothing of the harness between them. Its bindings must stay in step with decode().
        Returns (timestamps_ns from t_0, encoder end or None, tokens), what measure.generate times."""
        self.start(input_ids, output_len)  # untimed per-request set-up, as for the harness
        b, run, clock = self.binding, self.decoder.run_with_iobinding, time.perf_counter_ns
        past, step_ids, step_value = self.past_names, self._step_ids, self._step_value
        targets = [(n, "cpu" if n == "next_token" else self.ort_device)
                   for n in self.graphs["decoder"]["outputs"]]
        first = (np.full((input_ids.shape[0], 1), start_token, np.int64) if self.encoder is not None
                 else np.ascontiguousarray(input_ids))
        tokens = np.empty((input_ids.shape[0], output_len), np.int64)
        stamps = [0] * (output_len + 1)
        encoder_end = None
        t0 = stamps[0] = clock()
        if self.encoder is not None:
            self.encode(input_ids)  # the encoder's runtime calls, once per request
            encoder_end = clock()
        b.bind_cpu_input("input_ids", first)
        for i in range(output_len):
            run(b)
            out = b.get_outputs()
            for name, value in zip(past, out[2:], strict=False):
                b.bind_ortvalue_input(name, value)
            b.clear_binding_outputs()
            for name, where in targets:
                b.bind_output(name, where)
            step_ids[:, 0] = tokens[:, i] = out[1].numpy()
            stamps[i + 1] = clock()
            if i == 0:
                if step_value is not None:
                    b.bind_ortvalue_input("input_ids", step_value)  # shares step_ids' buffer
                else:
                    b.bind_cpu_input("input_ids", step_ids)
            elif step_value is None:
                b.bind_cpu_input("input_ids", step_ids)
        return [s - t0 for s in stamps], None if encoder_end is None else encoder_end - t0, tokens

    def close(self) -> None:
        self.decoder = self.encoder = self.binding = None


def check_provider(requested: str, got: list[str]) -> None:
    """ONNX Runtime falls back to CPU with only a warning; refuse that (docs/environment.md)."""
    if not got or got[0] != requested:
        raise DeviceUnavailable(f"onnxruntime fell back to {got[0] if got else 'nothing'} instead of "
                                f"{requested}; refusing to report CPU numbers as another device's")
