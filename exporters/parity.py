"""Teacher-forced parity: per-step logits of an exported graph against the PyTorch module.

Step 0 is the prompt (decoder-only: the whole prompt; encoder-decoder: encoder + start token);
steps 1..K feed fixed tokens one at a time through the KV cache, exactly as generation does.
Logits are compared, not tokens: random-weight models emit near-identical tokens every step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

FP32_TOLERANCE = 1e-4


def parity_inputs(vocab: int, batch: int = 2, prompt: int = 7, steps: int = 4, seed: int = 1234):
    rng = np.random.default_rng(seed)
    return (rng.integers(1, vocab, size=(batch, prompt), dtype=np.int64),
            rng.integers(1, vocab, size=(batch, steps), dtype=np.int64))


def torch_step_logits(model, cfg, prompt: np.ndarray, forced: np.ndarray) -> list[np.ndarray]:
    import torch

    ids = torch.from_numpy(prompt)
    out = []
    with torch.no_grad():
        if cfg.is_encoder_decoder:
            mask = torch.ones_like(ids)
            cross = model.cross_kv(model.encode(ids, mask))
            past = model.empty_past(ids.shape[0])
            tokens = torch.full((ids.shape[0], 1), cfg.decoder_start_token, dtype=torch.int64)
            step = lambda t, p: model.decode(t, mask, cross, p)
        else:
            past = model.empty_past(ids.shape[0])
            tokens = ids
            step = model
        for i in range(forced.shape[1] + 1):
            logits, past = step(tokens, past)
            out.append(logits.float().numpy())
            if i < forced.shape[1]:
                tokens = torch.from_numpy(forced[:, i:i + 1])
    return out


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


StepFn = Callable[[np.ndarray, np.ndarray], list[np.ndarray]]


def teacher_forced(session, cfg, prompt: np.ndarray, forced: np.ndarray) -> list[np.ndarray]:
    """Per-step logits through any session with the runner's primitives (`start`, `encode`,
    `decode`) and `logits()`: the prompt (or encoder + start token), then each forced token. The
    one teacher-forced loop: every candidate side of a parity or accuracy check runs it."""
    session.start(prompt, forced.shape[1] + 1)
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


class ParityError(RuntimeError):
    """An exported graph whose logits disagree with PyTorch beyond tolerance."""


def check(model, cfg, candidate_steps: StepFn, runtime: str, tolerance: float = FP32_TOLERANCE) -> dict:
    prompt, forced = parity_inputs(cfg.vocab_size)
    result = compare(torch_step_logits(model, cfg, prompt, forced), candidate_steps(prompt, forced),
                     tolerance, runtime)
    if not result["passed"]:
        raise ParityError(f"{runtime} logits differ from PyTorch by {result['max_abs_diff']:.3g} "
                          f"(tolerance {tolerance:g})")
    return result
