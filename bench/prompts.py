"""`Text`: the prompts a run feeds its models instead of random token ids, and reading them.

The text is part of the configuration (slmbench.config.RunSettings.text), so it travels with a
configuration into a sweep's worker and a row says what it measured. Its identity is a hash of the
prompts: two runs of the same text pair, whatever file it came from. Each model's tokenizer turns
it into ids outside the timed path (slmbench.core.inputs).

Two ways to size it (`fit`):
- the text as it is: each model gets its own tokenizer's ids of it, so models with different
  tokenizers read the same text in different numbers of tokens (matched text);
- `--input-len N`: each prompt's ids cut or repeated to exactly N tokens (matched tokens).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slmbench.errors import InvalidOption
from slmbench.models.tokenizer import folder_of, load_tokenizer

MAX_TEXT_CHARS = 1 << 20  # the prompts travel in every configuration and row: 1 Mi characters at most
JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class Text:
    """One or more prompts; the repetitions of a run cycle through them in order, every model alike."""

    prompts: tuple[str, ...]
    fit: bool = False  # True: each prompt's ids cut or repeated to the run's input_len

    def __post_init__(self) -> None:
        prompts = tuple(self.prompts) if isinstance(self.prompts, list | tuple) else self.prompts
        if not isinstance(prompts, tuple) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise InvalidOption("text must be one or more prompts (strings)")
        if not all(p.strip() for p in prompts):
            raise InvalidOption("a prompt is empty; every prompt needs some text")
        if sum(map(len, prompts)) > MAX_TEXT_CHARS:
            raise InvalidOption(f"the prompts hold more than {MAX_TEXT_CHARS} characters; use fewer or shorter ones")
        if not isinstance(self.fit, bool):
            raise InvalidOption(f"text fit must be true or false, got {self.fit!r}")
        object.__setattr__(self, "prompts", prompts)

    @property
    def id(self) -> str:
        """The prompts' identity (not the file's name): 12 hex digits of their SHA-256."""
        return hashlib.sha256(json.dumps(self.prompts, ensure_ascii=False).encode()).hexdigest()[:12]

    @property
    def characters(self) -> int:
        return sum(map(len, self.prompts))

    @property
    def words(self) -> int:
        return sum(len(p.split()) for p in self.prompts)

    def summary(self) -> dict:
        """What a row says of the text it measured (the prompts themselves are in its config)."""
        return {"id": self.id, "prompts": len(self.prompts), "characters": self.characters, "words": self.words,
                "fit": "cut or repeated to input_len tokens" if self.fit else "as is"}

    def token_ids(self, spec, input_len: int) -> tuple[list[list[int]], list[str], object]:
        """Each prompt's ids from `spec`'s own tokenizer, how each was sized (as is, exact, cut,
        repeated: to `input_len` when fitted), and the tokenizer."""
        tokenizer = load_tokenizer(folder_of(spec), spec.name)
        ids = [tokenizer.encode(p) for p in self.prompts]
        if not all(ids):
            raise InvalidOption(f"{spec.name}'s tokenizer turns a prompt into no tokens at all")
        if not self.fit:
            return ids, ["as is"] * len(ids), tokenizer
        fitted = [_fitted(x, input_len) for x in ids]
        return [f for f, _ in fitted], [how for _, how in fitted], tokenizer

    def token_length(self, spec, input_len: int) -> int:
        """`spec`'s input length for this text: its mean token count over the prompts as is (exact for
        one prompt); `input_len` when fitted or when the model has no tokenizer (random ids)."""
        if self.fit or folder_of(spec) is None:
            return input_len
        ids, _, _ = self.token_ids(spec, input_len)
        return max(1, round(sum(map(len, ids)) / len(ids)))

    @classmethod
    def from_value(cls, value) -> Text | None:
        """A Text from itself or its dict (a configuration read back from JSON); None stays None."""
        if value is None or isinstance(value, Text):
            return value
        if isinstance(value, dict) and set(value) <= {"prompts", "fit"} and "prompts" in value:
            return cls(tuple(value["prompts"]), value.get("fit", False))
        raise InvalidOption(f"not a text: {value!r:.80}")


def _fitted(ids: list[int], length: int) -> tuple[list[int], str]:
    if len(ids) >= length:
        return ids[:length], "cut" if len(ids) > length else "exact"
    return list(np.resize(np.asarray(ids, np.int64), length)), "repeated"


def read_prompts(path: Path | str) -> tuple[str, ...]:
    """Prompts from a file: plain text, one prompt a line, or JSON Lines (.jsonl / .ndjson), each line
    a string or an object with a "prompt" or "text" field. Blank lines are skipped."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidOption(f"cannot read the prompt file {path}: {exc.strerror or exc}") from None
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidOption(f"the prompt file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    lines = [(n, line) for n, line in enumerate(content.splitlines(), 1) if line.strip()]
    if not lines:
        raise InvalidOption(f"the prompt file {path} holds no prompt; write one prompt a line")
    if path.suffix.lower() not in JSONL_SUFFIXES:
        return tuple(line for _, line in lines)
    prompts = []
    for n, line in lines:
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidOption(f"{path}:{n}: not JSON ({exc.msg}); a JSON Lines prompt file has one JSON string "
                                "or object a line") from None
        if isinstance(item, dict):
            item = item.get("prompt", item.get("text"))
        if not isinstance(item, str) or not item.strip():
            raise InvalidOption(f'{path}:{n}: expected a non-empty string or an object with a "prompt" or "text" '
                                "string")
        prompts.append(item)
    return tuple(prompts)


def text_of(prompt: str | None, prompts_file: Path | str | None, fit: bool) -> Text | None:
    """The run's text from `--prompt` / `--prompts` (at most one of them), or None for random ids."""
    if prompt is not None and prompts_file is not None:
        raise InvalidOption("give --prompt or --prompts, not both")
    if prompt is not None:
        return Text((prompt,), fit)
    if prompts_file is not None:
        return Text(read_prompts(prompts_file), fit)
    return None
