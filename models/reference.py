"""The PyTorch reference of every parity check: teacher-forced logits of a model, and the rule
for comparing them with a candidate's.

Step 0 is the prompt (decoder-only: the whole prompt; encoder-decoder: encoder + start token),
after the image through the vision tower for a vision-language model;
steps 1..K feed fixed tokens one at a time through the KV cache, exactly as generation does.
Logits are compared, not tokens: random-weight models emit near-identical tokens every step.
Exporters check their graphs with it (exporters/parity.py); checkpoint adapters check their
cached steps against the model's own forward with it (models/hf_wrappers.py).
"""

from __future__ import annotations

import numpy as np

FP32_TOLERANCE = 1e-4


def parity_inputs(vocab: int, batch: int = 2, prompt: int = 7, steps: int = 4, seed: int = 1234):
    rng = np.random.default_rng(seed)
    return (rng.integers(1, vocab, size=(batch, prompt), dtype=np.int64),
            rng.integers(1, vocab, size=(batch, steps), dtype=np.int64))


def parity_image(model, batch: int = 2) -> np.ndarray | None:
    """The image a vision model's checks feed (at the size its tower takes), None without a tower."""
    from slmbench.models.vision import fixed_image

    tower = getattr(model, "vision", None)
    return None if tower is None else fixed_image(batch, tower.image_size, seed=1234)


def teacher_forced(session, cfg, prompt: np.ndarray, forced: np.ndarray,
                   pixels: np.ndarray | None = None) -> list[np.ndarray]:
    """Per-step logits through any session with the runner's primitives (`start`, `encode_image`,
    `encode`, `decode`) and `logits()`: the image (if any), the prompt (or encoder + start token),
    then each forced token. The one teacher-forced loop: the PyTorch reference and every candidate
    side run it."""
    session.start(prompt, forced.shape[1] + 1)
    if pixels is not None:
        session.encode_image(pixels)
    if cfg.is_encoder_decoder:
        session.encode(prompt)
        tokens = np.full((prompt.shape[0], 1), cfg.decoder_start_token, np.int64)
    else:
        tokens = prompt
    out = []
    for i in range(forced.shape[1] + 1):
        session.decode(tokens)
        out.append(session.logits())
        if i < forced.shape[1]:
            tokens = np.ascontiguousarray(forced[:, i : i + 1])
    return out


class TorchSteps:
    """A module with the step interface (models/families.py, models/hf_wrappers.py) as a session:
    the reference side of every check. No gradients; logits come back as float32."""

    def __init__(self, model, cfg):
        self.model, self.cfg = model, cfg

    def start(self, input_ids: np.ndarray, max_new_tokens: int) -> None:
        self.past, self.cross, self.mask = self.model.empty_past(input_ids.shape[0]), None, None
        self.image = None

    def encode_image(self, pixels: np.ndarray) -> None:
        import torch

        with torch.no_grad():
            self.image = self.model.vision(torch.from_numpy(pixels))

    def image_embeds(self) -> np.ndarray:
        return self.image.float().numpy()

    def encode(self, input_ids: np.ndarray) -> None:
        import torch

        ids = torch.from_numpy(input_ids)
        image = 0 if self.image is None else self.image.shape[1]
        self.mask = torch.ones((ids.shape[0], image + ids.shape[1]), dtype=ids.dtype)
        with torch.no_grad():
            image = () if self.image is None else (self.image,)  # checkpoint adapters take no image
            self.cross = self.model.cross_kv(self.model.encode(ids, self.mask, *image))

    def decode(self, input_ids: np.ndarray) -> np.ndarray:
        import torch

        ids = torch.from_numpy(input_ids)
        with torch.no_grad():
            if self.cross is not None:
                self._logits, self.past = self.model.decode(ids, self.mask, self.cross, self.past)
            else:  # the image goes before the prompt, once
                image = {} if self.image is None else {"image_embeds": self.image}
                self._logits, self.past = self.model(ids, self.past, **image)
                self.image = None
        return self._logits.argmax(-1).numpy()

    def logits(self) -> np.ndarray:
        return self._logits.float().numpy()


def torch_step_logits(model, cfg, prompt: np.ndarray, forced: np.ndarray,
                      pixels: np.ndarray | None = None) -> list[np.ndarray]:
    """The PyTorch reference: teacher-forced logits of `model` at every step."""
    return teacher_forced(TorchSteps(model, cfg), cfg, prompt, forced, pixels)


def torch_image_embeds(model, pixels: np.ndarray) -> np.ndarray:
    """The PyTorch reference of a vision tower: its image embeddings."""
    session = TorchSteps(model, None)
    session.encode_image(pixels)
    return session.image_embeds()


def compare(reference: list[np.ndarray], candidate: list[np.ndarray], tolerance: float,
            runtime: str) -> dict:
    """Max abs logit difference over all steps, and greedy-token agreement (for low precision)."""
    diffs = [float(np.max(np.abs(r - c))) for r, c in zip(reference, candidate, strict=True)]
    agree = [float(np.mean(np.argmax(r, -1) == np.argmax(c, -1))) for r, c in zip(reference, candidate,
                                                                                 strict=True)]
    worst = max(diffs)
    return {"runtime": runtime, "steps": len(diffs), "batch": int(reference[0].shape[0]),
            "max_abs_diff": worst, "per_step_max_abs_diff": diffs, "token_agreement": float(np.mean(agree)),
            "tolerance": tolerance, "passed": bool(worst <= tolerance)}


class ParityError(RuntimeError):
    """An exported graph whose logits disagree with PyTorch beyond tolerance."""
