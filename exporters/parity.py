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
    parity_inputs,
    teacher_forced,
    torch_step_logits,
)

__all__ = ["FP32_TOLERANCE", "ParityError", "check", "compare", "parity_inputs", "teacher_forced",
           "torch_step_logits"]

StepFn = Callable[[np.ndarray, np.ndarray], list[np.ndarray]]


def check(model, cfg, candidate_steps: StepFn, runtime: str, tolerance: float = FP32_TOLERANCE) -> dict:
    prompt, forced = parity_inputs(cfg.vocab_size)
    result = compare(torch_step_logits(model, cfg, prompt, forced), candidate_steps(prompt, forced),
                     tolerance, runtime)
    if not result["passed"]:
        raise ParityError(f"{runtime} logits differ from PyTorch by {result['max_abs_diff']:.3g} "
                          f"(tolerance {tolerance:g})")
    return result
