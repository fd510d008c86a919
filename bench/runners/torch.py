"""PyTorch eager runner (CPU and CUDA): the models/ modules themselves, no export.

It is the reference that needs no exporter, and the GPU path where only PyTorch has CUDA.
- KV cache: preallocated once per request in `start()` ([batch, kv_heads, max_len, head_dim] per
  layer) and filled in place (the model's `cache_len` path), so no tensor grows per step;
  attention reads only the filled prefix. Cross-attention K/V are computed once, in `encode()`.
- Precision: fp32, fp16, bf16 on both devices. Parameters are cast; buffers (the RoPE frequency
  table) stay fp32, so rotary angles are not rounded to bf16's 8-bit mantissa. fp16 on CPU runs
  with torch's CPU kernels (checked for both families with torch 2.13); its speed depends on the
  CPU (AVX512-FP16/AMX), so read CPU fp16 numbers with the CPU flags recorded in the row. fp32 on
  CUDA keeps torch's default float32 matmul precision (no TF32 unless the user enabled it); the
  row records it.
- Timing: `encode()` and `decode()` synchronise the device before returning; `decode()` copies
  only the next ids to the host. Everything runs under `torch.inference_mode()`.
- Threads: `torch.set_num_threads` is process-wide; the value applied is recorded.
torch is imported inside methods so that importing the runner registry stays cheap.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slmbench.errors import InvalidOption
from slmbench.runners.base import Availability, LoadInfo, Runner

PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

# CUDA keeps one peak-memory counter per device, shared by every model loaded in the process.
# Requests run one at a time, so each request's peak belongs to the runner that reset the counter
# for it: device index -> (that runner, bytes allocated by everything else when it started).
_PEAK_OWNER: dict[int, tuple[TorchRunner, int]] = {}


@dataclass(frozen=True)
class TorchModel:
    """The torch runner's stand-in for an exported artifact: the module built from the spec, with
    a manifest shaped like an artifact's. Nothing is exported or written, so there is no path and
    no parity result (this module is the reference the exporters are checked against)."""

    module: Any
    manifest: dict
    path: Path | None = None

    @property
    def key(self) -> str:
        return self.manifest["artifact_key"]

    @property
    def family(self) -> str:
        return self.manifest["family"]

    @property
    def weight_bytes(self) -> int:
        return int(self.manifest["weight_bytes"])


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InvalidOption(f"torch precision {precision!r} is not supported; "
                            f"choose from {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


class TorchRunner(Runner):
    runtime = "torch"
    devices = ("cpu", "cuda")
    artifact_format = "torch"

    def __init__(self, device: str, threads: int | None = None, options: dict | None = None):
        super().__init__(device, threads, options)
        self.cuda = device == "cuda"
        self.index = 0
        self._peak: int | None = None
        self._resident = 0
        self.model = self._kv = self._cross = self._enc_mask = None
        self._len = self._capacity = 0

    @classmethod
    def availability(cls, device: str) -> Availability:
        try:
            import torch
        except ImportError:
            return Availability(False, "torch is not installed (pip install torch)")
        if device == "cpu":
            return Availability(True)
        if device != "cuda":
            return Availability(False, f"torch runs on {', '.join(cls.devices)}, not {device}")
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            return Availability(False, f"torch {torch.__version__} is a CPU-only build (install a CUDA build "
                                       "of torch, or use --device cpu)")
        if not torch.cuda.is_available():
            return Availability(False, f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA "
                                       "GPU (check nvidia-smi and CUDA_VISIBLE_DEVICES, or use --device cpu)")
        return Availability(True)

    def prepare(self, spec, precision, cache_dir=None, force=False):
        """Build the module (random weights from the spec's seed); no export, nothing cached."""
        import torch

        from slmbench.exporters.artifact import artifact_key, code_digest

        check_precision(precision)
        started = time.perf_counter()
        module = spec.build()
        build_s = time.perf_counter() - started
        step = module.decode if spec.config.is_encoder_decoder else module.forward
        if "cache_len" not in inspect.signature(step).parameters:
            raise InvalidOption(f"{spec.name}: its module has no preallocated-KV-cache step (cache_len), "
                                "which the torch runner needs; use --runtime onnxruntime for it")
        itemsize = torch.empty((), dtype=getattr(torch, PRECISIONS[precision])).element_size()
        cfg = spec.config
        manifest = {
            "format": "torch", "artifact_key": artifact_key(spec, "torch", {"precision": precision},
                                                            code_digest(__file__)),
            "model": spec.name, "family": spec.family.value, "parameters": spec.parameters,
            "config": cfg.to_dict(), "source": spec.source, "seed": spec.seed,
            "spec_hash": spec.content_hash(),
            "variant": {"precision": precision}, "precision": precision,
            "parity": None, "export_seconds": None, "build_seconds": build_s,
            "weight_bytes": sum(p.numel() for p in module.parameters()) * itemsize,
            "kv": {"layout": ["batch", "kv_heads", "seq", "head_dim"], "layers": cfg.decoder_layers,
                   "kv_heads": cfg.kv_heads, "head_dim": cfg.head_dim, "seq_axis": 2,
                   "cache": "preallocated"},
            "versions": {"torch": torch.__version__},
        }
        return TorchModel(module, manifest), False

    def load(self, artifact) -> LoadInfo:
        """Cast the parameters and move the module to the device (the torch runner's 'load')."""
        import torch

        from slmbench.host.cpus import default_threads

        manifest = artifact.manifest
        self.threads = self.threads or default_threads()
        torch.set_num_threads(self.threads)
        self.precision = manifest["precision"]
        self.dtype = getattr(torch, check_precision(self.precision))
        kv = manifest["kv"]
        self.layers, self.kv_heads, self.head_dim = kv["layers"], kv["kv_heads"], kv["head_dim"]
        self.encoder_decoder = manifest["config"]["encoder_layers"] > 0
        if self.cuda:
            self.index = torch.cuda.current_device()
            self.torch_device = torch.device("cuda", self.index)
            before = torch.cuda.memory_allocated(self.torch_device)
        else:
            self.torch_device = torch.device("cpu")
        model = artifact.module.to(self.torch_device)
        with torch.no_grad():
            for param in model.parameters():
                param.data = param.data.to(self.dtype)
        self.model = model.eval()
        if self.cuda:
            torch.cuda.synchronize(self.torch_device)
            self._resident = torch.cuda.memory_allocated(self.torch_device) - before
        executed = str(next(self.model.parameters()).device)
        info = {"torch_device": executed}
        options = {"precision": self.precision, "dtype": str(self.dtype).removeprefix("torch."),
                   "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
                   "kv_cache": "preallocated", "inference_mode": True,
                   "float32_matmul_precision": torch.get_float32_matmul_precision()}
        if self.cuda:
            from slmbench.runners.cuda import cuda_device_info

            info.update(cuda_device_info(self.index))
            matmul = torch.backends.cuda.matmul
            options["cuda_matmul_allow_tf32"] = matmul.allow_tf32
            options["cuda_matmul_fp32_precision"] = getattr(matmul, "fp32_precision", None)
        return LoadInfo(compile_s=None, device_executed=executed, device_info=info,
                        runtime_version=torch.__version__, options=options)

    def start(self, input_ids: np.ndarray, max_new_tokens: int) -> None:
        """Allocate this request's KV buffers: room for the prompt (or the start token) and every
        generated token; the previous request's buffers are released first."""
        import torch

        batch, prompt = input_ids.shape
        self._kv = self._cross = self._enc_mask = None
        if self.cuda:
            self._fold_peak()
            torch.cuda.reset_peak_memory_stats(self.torch_device)
            other = torch.cuda.memory_allocated(self.torch_device) - self._resident
            _PEAK_OWNER[self.index] = (self, other)
        self._capacity = (1 if self.encoder_decoder else prompt) + max_new_tokens
        shape = (batch, self.kv_heads, self._capacity, self.head_dim)
        with torch.inference_mode():
            self._kv = [(torch.empty(shape, dtype=self.dtype, device=self.torch_device),
                         torch.empty(shape, dtype=self.dtype, device=self.torch_device))
                        for _ in range(self.layers)]
        self._len = 0

    def encode(self, input_ids: np.ndarray) -> None:
        import torch

        with torch.inference_mode():
            ids = torch.as_tensor(input_ids, device=self.torch_device)
            mask = torch.ones_like(ids)
            self._cross = self.model.cross_kv(self.model.encode(ids, mask))
            self._enc_mask = mask
        if self.cuda:
            torch.cuda.synchronize(self.torch_device)

    def forward_logits(self, ids):
        """One decoder step on a device tensor of ids; the cache advances; returns the logits
        [batch, vocab] as a device tensor. decode() is this plus argmax, sync and the host copy."""
        new = ids.shape[1]
        if self._len + new > self._capacity:
            raise InvalidOption(f"the KV cache holds {self._capacity} positions and {self._len} are filled; "
                                f"start() was given fewer new tokens than are being decoded")
        if self.encoder_decoder:
            logits, _ = self.model.decode(ids, self._enc_mask, self._cross, self._kv, cache_len=self._len)
        else:
            logits, _ = self.model(ids, self._kv, cache_len=self._len)
        self._len += new
        return logits

    def decode(self, input_ids: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            logits = self.forward_logits(torch.as_tensor(input_ids, device=self.torch_device))
            next_ids = torch.argmax(logits, -1)
        if self.cuda:
            torch.cuda.synchronize(self.torch_device)
        return next_ids.cpu().numpy()

    def step_logits(self, input_ids: np.ndarray) -> np.ndarray:
        """Inspection helper (tests, parity): like decode() but returns the fp32 logits on the host."""
        import torch

        with torch.inference_mode():
            logits = self.forward_logits(torch.as_tensor(input_ids, device=self.torch_device))
            return logits.float().cpu().numpy()

    def _fold_peak(self) -> None:
        """Credit the device's peak since the last reset to the runner whose request it covered."""
        import torch

        owner = _PEAK_OWNER.get(self.index)
        if owner is not None:
            runner, other = owner
            peak = torch.cuda.max_memory_allocated(self.torch_device) - other
            runner._peak = max(runner._peak or 0, peak)

    def peak_device_memory(self) -> int | None:
        """CUDA: the most tensor bytes this model held during any of its requests (weights, KV
        cache, activations; other loaded models and the caching allocator's reserve excluded).
        CPU: None (the process RSS covers it)."""
        if not self.cuda:
            return None
        owner = _PEAK_OWNER.get(self.index)
        if owner is not None and owner[0] is self:
            self._fold_peak()
        return self._peak

    def close(self) -> None:
        if self.cuda:
            owner = _PEAK_OWNER.get(self.index)
            if owner is not None and owner[0] is self:
                del _PEAK_OWNER[self.index]
        self.model = self._kv = self._cross = self._enc_mask = None
