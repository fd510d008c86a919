"""What each model is fed: random ids from a fixed seed, or its own tokenizer's ids of the run's text.

Tokenizing (slmbench.prompts.Text.token_ids) happens here, before anything is timed. A run's
repetitions cycle through the prompts in order (cold run and warm-ups included), every model alike,
so a model's k-th repetition read the same prompt as its peer's. With a batch, row j of slot k holds
prompt (k + j) mod n.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slmbench.config import RunSettings
from slmbench.core.measure import make_inputs
from slmbench.errors import InvalidOption
from slmbench.models.tokenizer import folder_of


@dataclass
class ModelInput:
    """The id arrays a model's repetitions cycle through, and what its row says of them (None: random
    ids of a run without text)."""

    slots: list[np.ndarray]
    text: dict | None = None
    pixels: np.ndarray | None = None  # a vision model's image, the same every repetition (models/vision.py)

    def cycle(self):
        """A function returning the next slot's ids on each call."""
        state = {"next": 0}

        def take() -> np.ndarray:
            ids = self.slots[state["next"] % len(self.slots)]
            state["next"] += 1
            return ids

        return take


def model_inputs(settings: RunSettings, spec) -> ModelInput:
    """The ids `spec` is fed under `settings` (random ids when there is no text or no tokenizer),
    and a vision model's image (pixels from a fixed seed)."""
    given = _token_inputs(settings, spec)
    if spec.image is not None:
        from slmbench.models.vision import fixed_image

        given.pixels = fixed_image(settings.batch, spec.image, settings.seed)
    return given


def _token_inputs(settings: RunSettings, spec) -> ModelInput:
    text = settings.text
    if text is None:
        return ModelInput([make_inputs(settings, spec.config.vocab_size)])
    if folder_of(spec) is None:
        return ModelInput([make_inputs(settings, spec.config.vocab_size)],
                          {**text.summary(), "input": f"random ids: {spec.name} has no tokenizer",
                           "tokenizer": None, "input_tokens": [settings.input_len], "input_characters": None,
                           "input_words": None})
    ids, how, tokenizer = text.token_ids(spec, settings.input_len)
    cfg = spec.config
    longest = max(map(len, ids)) + spec.image_tokens
    need = longest if cfg.is_encoder_decoder else longest + settings.output_len
    if need > cfg.max_positions:
        raise InvalidOption(f"{spec.name}: a prompt is {longest} tokens, {need} positions with the output; the "
                            f"model has {cfg.max_positions}; shorten it or give --input-len to cut it")
    n, batch = len(ids), settings.batch
    if batch > 1 and len({len(x) for x in ids}) > 1:
        raise InvalidOption(f"{spec.name}: the prompts are {min(map(len, ids))}-{longest} tokens long and a batch "
                            "needs one length; give --input-len to cut or repeat them to it, or use --batch 1")
    slots = [np.array([ids[(k + j) % n] for j in range(batch)], np.int64) for k in range(n)]
    if text.fit:
        shown = [tokenizer.decode(x) for x in ids]
    else:
        shown = list(text.prompts)
    return ModelInput(slots, {
        **text.summary(), "input": ", ".join(sorted(set(how))), "tokenizer": tokenizer.describe(),
        "input_tokens": [len(x) for x in ids],
        "input_characters": sum(map(len, shown)) / n, "input_words": sum(len(s.split()) for s in shown) / n})
