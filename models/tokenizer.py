"""A checkpoint's own tokenizer, from its folder: what turns a prompt into that model's ids.

`tokenizer.json` (the Hugging Face tokenizers format, special tokens and post-processing included)
is read with the `tokenizers` library; a SentencePiece-only folder (`tokenizer.model`,
`spiece.model`) goes through transformers' AutoTokenizer. Presets have no tokenizer: they are fed
random ids, and rows say so.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from slmbench.errors import InvalidOption

SENTENCEPIECE_FILES = ("tokenizer.model", "spiece.model")


@dataclass
class Tokenizer:
    """Encodes with the special tokens the model was trained with (BOS/EOS as its tokenizer adds them)."""

    file: Path
    _impl: object
    _fast: bool

    def encode(self, text: str) -> list[int]:
        if self._fast:
            return list(self._impl.encode(text).ids)
        return list(self._impl(text, add_special_tokens=True)["input_ids"])

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        return self._impl.decode(ids, skip_special_tokens=True)

    def describe(self) -> dict:
        return {"file": self.file.name, "sha256": hashlib.sha256(self.file.read_bytes()).hexdigest()[:16]}


def folder_of(spec) -> Path | None:
    """The checkpoint folder a model spec reads (hf:, onnx:, ov:), None for a preset."""
    path = getattr(spec, "path", None)
    return Path(path) if path else None


def load_tokenizer(folder: Path, model: str) -> Tokenizer:
    """The folder's tokenizer; one line naming what was looked for when it has none."""
    folder = Path(folder)
    fast = folder / "tokenizer.json"
    if fast.is_file():
        from tokenizers import Tokenizer as FastTokenizer

        try:
            return Tokenizer(fast, FastTokenizer.from_file(str(fast)), True)
        except Exception as exc:  # noqa: BLE001 - a corrupt file is the user's to fix, in one line
            raise InvalidOption(f"{model}: cannot read {fast}: {str(exc).splitlines()[0][:160]}") from None
    piece = next((folder / name for name in SENTENCEPIECE_FILES if (folder / name).is_file()), None)
    if piece is None:
        raise InvalidOption(f"{model} has no tokenizer in {folder} (looked for tokenizer.json, "
                            f"{', '.join(SENTENCEPIECE_FILES)}); text needs one: add it, or drop --prompt/--prompts "
                            "to feed random ids")
    try:
        from transformers import AutoTokenizer

        return Tokenizer(piece, AutoTokenizer.from_pretrained(str(folder), local_files_only=True), False)
    except ImportError:
        raise InvalidOption(f"{model}: reading {piece.name} needs transformers: pip install 'slmbench[hf]'") from None
    except Exception as exc:  # noqa: BLE001
        raise InvalidOption(f"{model}: cannot load the SentencePiece tokenizer {piece}: "
                            f"{str(exc).splitlines()[0][:160]}") from None
