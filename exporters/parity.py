"""Teacher-forced parity: per-step logits of an exported graph against the PyTorch module
(models/reference.py defines the steps and the comparison); a graph beyond tolerance is a
ParityError and never enters the cache."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# The reference, the loop and the comparison live beside the models (models/hf_wrappers.py checks
# adapters with them); this module is the exporters' check that a graph matches them.
from slmbench.models.reference import (
    FP32_TOLERANCE,
    ParityError,
    compare,
    parity_image,
    parity_inputs,
    teacher_forced,
    torch_image_embeds,
    torch_step_logits,
)

__all__ = ["FP32_TOLERANCE", "ParityError", "check", "check_tower", "compare", "parity_image", "parity_inputs",
           "teacher_forced", "torch_step_logits"]

# (prompt, forced tokens, pixels or None) -> per-step logits; a vision tower's pixels -> embeddings
StepFn = Callable[[np.ndarray, np.ndarray, np.ndarray | None], list[np.ndarray]]
TowerFn = Callable[[np.ndarray], np.ndarray]


def check(model, cfg, candidate_steps: StepFn, runtime: str, tolerance: float = FP32_TOLERANCE,
          candidate_tower: TowerFn | None = None) -> dict:
    """The candidate's teacher-forced logits against PyTorch (the image through the tower first, for
    a vision model), and its tower's image embeddings on their own (`vision`)."""
    prompt, forced = parity_inputs(cfg.vocab_size)
    pixels = parity_image(model)
    result = compare(torch_step_logits(model, cfg, prompt, forced, pixels), candidate_steps(prompt, forced, pixels),
                     tolerance, runtime)
    if pixels is not None:
        result["vision"] = check_tower(model, pixels, candidate_tower, runtime, tolerance)
    if not result["passed"]:
        raise ParityError(f"{runtime} logits differ from PyTorch by {result['max_abs_diff']:.3g} "
                          f"(tolerance {tolerance:g})")
    return result


def check_tower(model, pixels: np.ndarray, candidate_tower: TowerFn, runtime: str,
                tolerance: float = FP32_TOLERANCE) -> dict:
    """The candidate tower's image embeddings of `pixels` against PyTorch's, on their own (a tower
    that is off is named as such, not as logits far downstream); raises beyond tolerance."""
    tower = float(np.max(np.abs(torch_image_embeds(model, pixels) - candidate_tower(pixels))))
    if tower > tolerance:
        raise ParityError(f"{runtime} vision tower's image embeddings differ from PyTorch by {tower:.3g} "
                          f"(tolerance {tolerance:g})")
    return {"max_abs_diff": tower, "image_size": int(pixels.shape[-1]), "passed": True}
