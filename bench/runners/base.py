"""The runner contract: one runtime on one device.

A runner prepares the artifact it needs, loads it, and offers the primitives the measurement loop
is built on. The loop (slmbench.core.measure) owns timing; a runner owns synchronisation: `encode` and
`decode` return only when their work is finished and, for `decode`, the next token ids are on
the host. A runner reports the device that really executed, and refuses a silent fallback.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from slmbench.errors import InvalidOption


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""


@dataclass
class LoadInfo:
    compile_s: float | None  # session creation / model compile alone, where the runtime separates it
    device_executed: str  # what the runtime says ran (never just the requested name)
    device_info: dict = field(default_factory=dict)
    runtime_version: str = ""
    options: dict = field(default_factory=dict)  # every setting that affects speed, as applied
    load_s: float | None = None  # wall time of runner.load(), compile included: set by whoever timed it
    compute_precision: str | None = None  # what the matrix products run in, as the runtime says (CPU: f32, bf16)


class Runner(ABC):
    runtime: ClassVar[str]
    devices: ClassVar[tuple[str, ...]]
    artifact_format: ClassVar[str]

    def __init__(self, device: str, threads: int | None = None, options: dict | None = None):
        self.device = device
        self.threads = threads
        self.options = dict(options or {})

    @classmethod
    @abstractmethod
    def availability(cls, device: str) -> Availability:
        """Whether this runtime can run on `device` here, and if not, why (one line)."""

    option_names: ClassVar[frozenset[str]] = frozenset()  # the options this runtime takes
    takes_images: ClassVar[bool] = False  # runs a vision model's tower graph (encode_image)

    @classmethod
    def check_model(cls, spec, precision: str, options: dict) -> None:
        """Refuse, in one line and before anything is exported, a model this runtime cannot run as
        configured: a vision model where its graphs do not exist."""
        if spec.image is None:
            return
        if not cls.takes_images:
            raise InvalidOption(f"{spec.name} is a vision model: {cls.runtime} has no vision graphs; use --runtime "
                                "onnxruntime or openvino")
        if precision not in ("fp32", "bf16"):
            raise InvalidOption(f"{spec.name} is a vision model: it runs at fp32 or bf16 (its tower's {precision} "
                                "conversion is not built)")

    @classmethod
    def run_options(cls, device: str, settings, options: dict | None) -> dict:
        """The options a run really uses: those of the user's that this runtime takes, plus its
        defaults for the device and shapes. One place, so `run` and sweep rows of the same thing
        share a key, and one runtime's options never enter another's key."""
        return {k: v for k, v in (options or {}).items() if k in cls.option_names}

    @abstractmethod
    def prepare(self, spec, precision: str, cache_dir=None, force: bool = False):
        """Export (or reuse) the artifact this runner needs; returns (Artifact, reused)."""

    @abstractmethod
    def load(self, artifact) -> LoadInfo: ...

    @abstractmethod
    def start(self, input_ids: np.ndarray, max_new_tokens: int) -> None:
        """Untimed per-request set-up: reset the KV cache, preallocate buffers."""

    def encode_image(self, pixels: np.ndarray) -> None:
        """Vision models only: run the tower to completion and keep its image embeddings on the
        device for the next `encode` (encoder-decoder) or the prefill `decode` (decoder-only)."""
        raise NotImplementedError(f"{self.runtime} runner has no vision tower")

    def encode(self, input_ids: np.ndarray) -> None:
        """Encoder-decoder only: run the encoder (and the cross-attention K/V) to completion."""
        raise NotImplementedError(f"{self.runtime} runner has no encoder for this model")

    @abstractmethod
    def decode(self, input_ids: np.ndarray) -> np.ndarray:
        """Feed [batch, new] ids (the prompt, or one token), return the next ids [batch] on host."""

    def peak_device_memory(self) -> int | None:
        return None

    def device_memory_in_use(self) -> int | None:
        """What this process holds on the run device now, where the device has memory of its own:
        on CUDA, NVML's reading for the process (runners/cuda.py); None on a CPU, whose memory is
        the process RSS, and on devices that report nothing per process."""
        if self.device != "cuda":
            return None
        from slmbench.runners.cuda import process_device_memory

        return process_device_memory()

    def close(self) -> None:  # noqa: B027 - optional hook, most runtimes free on garbage collection
        """Release the runtime's resources."""
