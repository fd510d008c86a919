"""ONNX Runtime runner (CPU; CUDA where onnxruntime-gpu is installed).

The KV cache never leaves the runtime between steps: IOBinding binds each step's present K/V
OrtValues (allocated on the run device) as the next step's past, and the encoder's cross K/V and
mask once per request. Only the in-graph argmax (`next_token`, bound to host memory) is copied to
the host per step; logits stay on the device. Run() synchronises the execution provider before it
returns (ONNX Runtime's default), so a returned token is final. The empty past takes the dtype
the decoder graph declares, so fp16 artifacts work unchanged.

The user's own optimum exports (`onnx:DIR`, slmbench.exporters.byo) run on the same sessions and
bindings; their manifest's `layout` says what each input is fed (attention mask, positions, the
merged decoder's branch flag), which graph runs a step, and how present K/V map onto past inputs.
Their graphs have no in-graph argmax: the last position's logits come to the host for it.

A vision model's tower writes its image embeddings to an OrtValue on the run device, bound as the
encoder's (or the prefill's) `image_embeds`; a decoder-only model's later steps are bound an empty
image, once, when the prefill has run.
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
    takes_images = True

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
        from slmbench.models.byo import byo_format

        if byo_format(spec.name):
            from slmbench.exporters.byo import byo_artifact

            return byo_artifact(spec, precision, self._parity_session, cache_dir, force)
        from slmbench.exporters.quantize_onnx import quantized_onnx_artifact

        if precision == "fp32":
            return onnx_artifact(spec, precision, cache_dir, force)
        return quantized_onnx_artifact(spec, precision, cache_dir, force)

    def _options(self, path):
        """The session options every graph of this runner gets (bench/tools/prefill_profile.py adds
        the profiler to them)."""
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
        return opts

    def _session(self, path):
        import onnxruntime as ort

        opts = self._options(path)
        provider = _PROVIDERS[self.device]
        # fp32 means IEEE fp32 on every runtime; the CUDA EP would otherwise use TF32 matmuls
        options = {"use_tf32": "0"} if self.device == "cuda" else {}
        session = ort.InferenceSession(str(path), opts, providers=[(provider, options)])
        got = session.get_providers()
        check_provider(provider, got)
        return session

    @staticmethod
    def _parity_session(artifact):
        """The candidate side of a user export's parity check: this runner's own bindings, on CPU."""
        runner = OnnxRuntimeRunner("cpu", 1)
        runner.load(artifact)
        return runner

    def load(self, artifact) -> LoadInfo:
        import onnxruntime as ort

        self.threads = self.threads or default_threads()
        manifest = artifact.manifest
        self.kv = manifest["kv"]
        self.layout = manifest.get("layout")
        started = time.perf_counter()
        self.decoder = self._session(artifact.graph_path("decoder"))
        self.encoder = self._session(artifact.graph_path("encoder")) if "encoder" in manifest["graphs"] else None
        self.first = self._session(artifact.graph_path("first")) if "first" in manifest["graphs"] else None
        self.vision = self._session(artifact.graph_path("vision")) if "vision" in manifest["graphs"] else None
        self.hidden = (manifest.get("vision") or {}).get("hidden")
        compile_s = time.perf_counter() - started
        self.graphs = manifest["graphs"]
        self.ort_device = "cuda" if self.device == "cuda" else "cpu"
        self.binding = self.decoder.io_binding()
        if self.layout:
            self.sessions = {"decoder": self.decoder, "first": self.first}
            self._bindings = {role: s.io_binding() for role, s in self.sessions.items() if s is not None}
            self.past_names = [p for graph in ("decoder", "first") if graph in self.graphs
                               for p, _ in self.graphs[graph]["self_kv"] if p]
        else:
            self.past_names = [n for n in self.graphs["decoder"]["inputs"] if n.startswith("past_")]
        self.kv_dtype = past_dtype(self.decoder, self.past_names)
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
        if self.layout:
            self._empty = self._ortvalue(np.zeros((batch, self.kv["kv_heads"], 0, self.kv["head_dim"]), self.kv_dtype))
            self._cache, self._cross, self._fixed, self._past_len = {}, {}, {}, 0
            return
        b = self.binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        empty = np.zeros((batch, self.kv["kv_heads"], 0, self.kv["head_dim"]), self.kv_dtype)
        for name in self.past_names:
            b.bind_ortvalue_input(name, self._ortvalue(empty))
        self._bind_outputs()
        self._step_ids = np.zeros((batch, 1), np.int64)
        self._step_value = self._ortvalue(self._step_ids) if self.device == "cpu" else None
        self._image = None  # the image embeddings the next encode / prefill reads
        if self.vision is not None:
            self._no_image = self._ortvalue(np.zeros((batch, 0, self.hidden), np.float32))
            if self.encoder is None:
                b.bind_ortvalue_input("image_embeds", self._no_image)

    def encode_image(self, pixels: np.ndarray) -> None:
        """The vision tower to completion, its output left on the run device for the next graph."""
        binding = self.vision.io_binding()
        binding.bind_cpu_input("pixel_values", np.ascontiguousarray(pixels))
        binding.bind_output("image_embeds", self.ort_device)
        self.vision.run_with_iobinding(binding)
        binding.synchronize_outputs()  # the tower's time ends when its output is ready
        self._image = binding.get_outputs()[0]
        if self.encoder is None:
            self.binding.bind_ortvalue_input("image_embeds", self._image)

    def _bind_outputs(self) -> None:
        """Let ORT allocate each output afresh: the present K/V grows by one row per step. All stay
        on the run device except next_token, the one thing the host needs."""
        self.binding.clear_binding_outputs()
        for name in self.graphs["decoder"]["outputs"]:
            self.binding.bind_output(name, "cpu" if name == "next_token" else self.ort_device)

    def encode(self, input_ids: np.ndarray) -> None:
        mask = np.ones_like(input_ids)
        if self.layout:
            return self._encode_layout(input_ids, mask)
        enc = self.encoder.io_binding()
        enc.bind_cpu_input("input_ids", input_ids)
        if self.vision is not None:
            image = self._no_image if self._image is None else self._image
            enc.bind_ortvalue_input("image_embeds", image)
            mask = np.ones((input_ids.shape[0], image.shape()[1] + input_ids.shape[1]), np.int64)
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
        if self.layout:
            return self._decode_layout(input_ids)
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
        if self._image is not None and self.encoder is None:  # the prefill read the image: none from here
            b.bind_ortvalue_input("image_embeds", self._no_image)
            self._image = None
        return outputs[1].numpy()

    # ---- the user's own exports (manifest["layout"], slmbench.exporters.byo) ----

    def _encode_layout(self, input_ids: np.ndarray, mask: np.ndarray) -> None:
        enc = self.encoder.io_binding()
        enc.bind_cpu_input("input_ids", input_ids)
        enc.bind_cpu_input("attention_mask", mask)
        hidden = self.graphs["encoder"]["hidden"]
        enc.bind_output(hidden, self.ort_device)
        self.encoder.run_with_iobinding(enc)
        enc.synchronize_outputs()  # the encoder time ends when its outputs are ready
        self._fixed = {"encoder_hidden": enc.get_outputs()[0], "encoder_mask": self._ortvalue(mask)}

    def _decode_layout(self, input_ids: np.ndarray) -> np.ndarray:
        """One step over the user's graphs: the graph for this step, its inputs by role, the KV cache
        moved from present outputs to past inputs as OrtValues that stay on the run device."""
        from slmbench.exporters.byo import last_token, step_feeds, step_graph

        role = step_graph(self.layout, self._past_len)
        graph, session, b = self.graphs[role], self.sessions[role], self._bindings[role]
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        batch, new = input_ids.shape
        b.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids))
        for name, array in step_feeds(graph, batch, self._past_len, new).items():
            b.bind_cpu_input(name, array)
        for name, what in graph["feeds"].items():
            if what in self._fixed:
                b.bind_ortvalue_input(name, self._fixed[what])
        for past, present in graph["self_kv"]:
            if past:
                b.bind_ortvalue_input(past, self._cache.get(present, self._empty))
        for past, present in graph["cross_in"]:
            b.bind_ortvalue_input(past, self._cross.get(present, self._empty))
        first = self._past_len == 0
        wanted = [graph["logits"], *(p for _, p in graph["self_kv"]), *(graph["cross_out"] if first else ())]
        for name in wanted:
            b.bind_output(name, "cpu" if name == graph["logits"] else self.ort_device)
        session.run_with_iobinding(b)
        out = dict(zip(wanted, b.get_outputs(), strict=True))
        for _, present in graph["self_kv"]:
            self._cache[present] = out[present]
        if first:
            self._cross = {name: out[name] for name in graph["cross_out"]}
        self._past_len += new
        self._logits = out[graph["logits"]].numpy()
        return last_token(self._logits)

    def logits(self) -> np.ndarray:
        """The last step's logits at its last position, float32 (the parity check's candidate side)."""
        return self._logits[:, -1, :].astype(np.float32)

    def bare_generate(self, input_ids: np.ndarray, output_len: int, start_token: int = 0):
        """The floor for harness overhead (slmbench.tools.overhead): the generation measure.generate does,
        on the same session, binding and buffers, as a plain loop of ONNX Runtime's own calls with
        nothing of the harness between them. Its bindings must stay in step with decode().
        Returns (timestamps_ns from t_0, encoder end or None, tokens), what measure.generate times."""
        if self.layout or self.vision is not None:
            from slmbench.errors import InvalidOption

            raise InvalidOption("the bare loop for harness overhead exists for slmbench's own text exports only")
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
        self.decoder = self.encoder = self.first = self.vision = self.binding = None


def check_provider(requested: str, got: list[str]) -> None:
    """ONNX Runtime falls back to CPU with only a warning; refuse that (docs/environment.md)."""
    if not got or got[0] != requested:
        raise DeviceUnavailable(f"onnxruntime fell back to {got[0] if got else 'nothing'} instead of "
                                f"{requested}; refusing to report CPU numbers as another device's")
