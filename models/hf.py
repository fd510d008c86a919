"""Hugging Face checkpoints as a model source: `hf:PATH_OR_ID`.

PATH is a folder written by `save_pretrained` (config.json plus safetensors or .bin weights); an
ID (`org/name`) is fetched from the hub where the network allows, safetensors only. The family
comes from `config.model_type`; the weights are the checkpoint's own, so the spec's hash covers
the SHA-256 of config.json and of every weight file transformers would load.

Resolving reads the config through transformers (its defaults are not written to config.json)
and counts parameters on the meta device, but never loads weights; `spec.build()` does, through
the adapter in `slmbench.models.hf_wrappers` that gives the checkpoint the same step
interface as our own architectures, always in float32 with eager attention. Remote code stays
off unless asked for (`--trust-remote-code`, SLMBENCH_TRUST_REMOTE_CODE=1); pickled weights are
only ever loaded with `weights_only=True`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from slmbench.models.config import ArchConfig, CheckpointError, Family
from slmbench.models.spec import ModelSpec

PREFIX = "hf:"
TRUST_ENV = "SLMBENCH_TRUST_REMOTE_CODE"
# Relative-position models (T5) have no hard maximum; the run's own length limits apply.
UNBOUNDED_POSITIONS = 1 << 17

ED, DO = Family.ENCODER_DECODER, Family.DECODER_ONLY
SUPPORTED: dict[str, Family] = {
    "t5": ED, "mt5": ED, "bart": ED, "t5gemma": ED,
    "llama": DO, "qwen2": DO, "qwen3": DO, "mistral": DO, "gemma": DO, "phi3": DO,
}
_ACTIVATIONS = {"relu": "relu", "silu": "silu", "swish": "silu", "gelu_new": "gelu_tanh",
                "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu_tanh"}
_ADAPTER_CODE = (Path(__file__).parent / "hf.py",
                 Path(__file__).parent / "hf_wrappers.py")


def supported_text() -> str:
    by_family = {f: [t for t, fam in SUPPORTED.items() if fam is f] for f in (ED, DO)}
    return "; ".join(f"{', '.join(types)} ({f.value})" for f, types in by_family.items())


def trust_remote_code_default() -> bool:
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


# ---- locating the checkpoint -------------------------------------------------------------------

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def _is_hub_id(ref: str) -> bool:
    """`name` or `org/name`; anything else (./x, /x, ~/x, a/b/c) can only be a local path."""
    return bool(_HUB_ID.fullmatch(ref)) and ".." not in ref


def locate(ref: str, trust_remote_code: bool = False) -> Path:
    """The local folder for `ref`: the folder itself, or the hub snapshot of an ID."""
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise CheckpointError(f"{PREFIX}{ref}: {path} is not a folder written by save_pretrained "
                                  "(it has no config.json)")
        return path.resolve()
    if not _is_hub_id(ref):
        raise CheckpointError(f"{PREFIX}{ref}: no such folder; pass hf:PATH to a folder written by "
                              "save_pretrained")
    return _download(ref, trust_remote_code)


def _download(repo_id: str, trust_remote_code: bool) -> Path:
    """A hub snapshot, safetensors only (never pickled weights from the network)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    patterns = ["config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json"]
    if trust_remote_code:
        patterns.append("*.py")
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=patterns))
    except GatedRepoError:
        raise CheckpointError(f"{PREFIX}{repo_id} is gated on the hub: accept its licence and log in "
                              "(hf auth login), or download it elsewhere and pass hf:DIR") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{PREFIX}{repo_id}: no such model on the Hugging Face hub, and no such local "
                              "folder") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{PREFIX}{repo_id}: the Hugging Face hub is unreachable from here ({reason[:120]}) and the "
            f"model is not in the local hub cache; download it where the network allows "
            f"(hf download {repo_id} --local-dir DIR, or save_pretrained(DIR)), copy DIR here and pass "
            "hf:DIR") from None
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{PREFIX}{repo_id}: the hub snapshot has no config.json")
    return folder


def weight_files(folder: Path) -> tuple[list[Path], str]:
    """The files transformers will load, as it chooses them: safetensors first, then .bin."""
    for fmt, single, index in (("safetensors", "model.safetensors", "model.safetensors.index.json"),
                               ("bin", "pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / index).is_file():
            try:
                shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as exc:
                raise CheckpointError(f"{folder / index} is not a valid weight index ({exc})") from None
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise CheckpointError(f"{folder}: weight shards listed in {index} are missing: "
                                      f"{', '.join(missing)}")
            return [folder / index, *(folder / s for s in shards)], fmt
        if (folder / single).is_file():
            return [folder / single], fmt
    raise CheckpointError(f"{folder} has no weights (model.safetensors, pytorch_model.bin or a sharded "
                          "index); save it with save_pretrained")


# ---- hashing and counting ----------------------------------------------------------------------

_DIGESTS: dict[tuple, str] = {}


def _file_sha256(path: Path) -> str:
    """SHA-256 of a file, remembered for this process while its size, mtime and inode are unchanged."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def checkpoint_digest(folder: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for path in [folder / "config.json", *files]:
        h.update(f"{path.name}:{_file_sha256(path)}\n".encode())
    return h.hexdigest()


def _meta_parameters(hf_config, family: Family, trust_remote_code: bool) -> int:
    """Parameter count of the architecture, instantiated on the meta device (no memory, no weights).
    Not from the weight files: they also hold buffers (BART's final_logits_bias) and may omit tied copies."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if family is ED else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(hf_config, trust_remote_code=trust_remote_code)
    return sum(p.numel() for p in model.parameters())


# ---- the architecture, described -------------------------------------------------------------

def _rope_theta(c) -> float:
    theta = getattr(c, "rope_theta", None)
    params = getattr(c, "rope_parameters", None)
    if theta is None and isinstance(params, dict):
        theta = params.get("rope_theta")
    return float(theta or 10000.0)


def _start_token(c, generation: dict, vocab: int) -> int:
    """What generate() starts the decoder with: generation_config.json first, then the config."""
    candidates = [generation.get("decoder_start_token_id")]
    candidates += [getattr(c, n, None) for n in ("decoder_start_token_id", "bos_token_id", "pad_token_id")]
    for value in candidates:
        if isinstance(value, int) and 0 <= value < vocab:
            return value
    return 0


def arch_config(c, generation: dict | None = None) -> tuple[ArchConfig, dict]:
    """The ArchConfig that describes an HF config, plus what it cannot express (kept in `extra`).

    Where encoder and decoder differ (BART heads and widths, T5Gemma), the decoder is described:
    its KV cache is what the graphs carry. `activation` is the nearest of ours; the exact one and
    the position scheme go into `extra`."""
    mt = c.model_type
    if mt in ("t5", "mt5"):
        act = c.dense_act_fn
        fields = dict(family=ED, vocab_size=c.vocab_size, hidden=c.d_model, encoder_layers=c.num_layers,
                      decoder_layers=c.num_decoder_layers, attn_heads=c.num_heads, kv_heads=c.num_heads,
                      head_dim=c.d_kv, ffn=c.d_ff, gated_mlp=bool(c.is_gated_act), mlp_bias=False,
                      norm_eps=c.layer_norm_epsilon, max_positions=UNBOUNDED_POSITIONS)
        positions = "relative position buckets"
    elif mt == "bart":
        act = c.activation_function
        fields = dict(family=ED, vocab_size=c.vocab_size, hidden=c.d_model, encoder_layers=c.encoder_layers,
                      decoder_layers=c.decoder_layers, attn_heads=c.decoder_attention_heads,
                      kv_heads=c.decoder_attention_heads, head_dim=c.d_model // c.decoder_attention_heads,
                      ffn=c.decoder_ffn_dim, gated_mlp=False, mlp_bias=True, norm_eps=1e-5,
                      max_positions=c.max_position_embeddings)
        positions = "learned absolute"
    elif mt == "t5gemma":
        enc, dec = c.encoder, c.decoder
        act = dec.hidden_activation
        fields = dict(family=ED, vocab_size=dec.vocab_size, hidden=dec.hidden_size,
                      encoder_layers=enc.num_hidden_layers, decoder_layers=dec.num_hidden_layers,
                      attn_heads=dec.num_attention_heads, kv_heads=dec.num_key_value_heads,
                      head_dim=dec.head_dim, ffn=dec.intermediate_size, gated_mlp=True, mlp_bias=False,
                      norm_eps=dec.rms_norm_eps,
                      rope_theta=_rope_theta(dec), max_positions=dec.max_position_embeddings)
        positions = "rotary"
    else:
        act = getattr(c, "hidden_act", None) or getattr(c, "hidden_activation", None) or "silu"
        heads = c.num_attention_heads
        fields = dict(family=DO, vocab_size=c.vocab_size, hidden=c.hidden_size, encoder_layers=0,
                      decoder_layers=c.num_hidden_layers, attn_heads=heads,
                      kv_heads=getattr(c, "num_key_value_heads", None) or heads,
                      head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads,
                      ffn=c.intermediate_size, gated_mlp=True, mlp_bias=bool(getattr(c, "mlp_bias", False)),
                      norm_eps=c.rms_norm_eps,
                      rope_theta=_rope_theta(c), max_positions=c.max_position_embeddings)
        positions = "rotary"
    fields["activation"] = _ACTIVATIONS.get(act, "gelu_tanh")
    fields["tie_embeddings"] = bool(getattr(c, "tie_word_embeddings", True))
    ed = fields["family"] is ED
    fields["decoder_start_token"] = _start_token(c, generation or {}, fields["vocab_size"]) if ed else 0
    extra = {"model_type": mt, "architectures": list(getattr(c, "architectures", None) or []),
             "activation": act, "positions": positions, "checkpoint_dtype": str(getattr(c, "dtype", None)),
             "sliding_window": getattr(c.decoder if mt == "t5gemma" else c, "sliding_window", None)}
    return ArchConfig(**fields), extra


# ---- the spec --------------------------------------------------------------------------------

@dataclass(frozen=True)
class HFModelSpec(ModelSpec):
    """A checkpoint folder. `source` is "hf:<absolute folder>"; the hash covers its files' digests."""

    path: str = ""
    weights_format: str = "safetensors"
    checkpoint_sha256: str = ""
    parameter_total: int = 0
    trust_remote_code: bool = False

    @property
    def parameters(self) -> int:
        return self.parameter_total

    @property
    def model_type(self) -> str:
        return self.extra["model_type"]

    def content_hash(self) -> str:
        from importlib.metadata import version

        h = hashlib.sha256()
        for path in _ADAPTER_CODE:
            h.update(path.read_bytes())
        payload = {"config": self.config.to_dict(), "source": self.source,
                   "checkpoint": self.checkpoint_sha256, "transformers": version("transformers"),
                   "trust_remote_code": self.trust_remote_code,
                   "adapter": h.hexdigest(), "load": {"dtype": "float32", "attn_implementation": "eager"}}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def build(self):
        """The checkpoint in float32 behind the step interface, checked against its own forward."""
        from slmbench.models.hf_wrappers import load_adapter

        return load_adapter(self)

    def describe(self) -> dict:
        return {**super().describe(), "model_type": self.model_type, "weights": self.weights_format,
                "activation": self.extra["activation"], "positions": self.extra["positions"]}


def resolve_hf(name: str, trust_remote_code: bool | None = None) -> HFModelSpec:
    """`hf:PATH_OR_ID` -> a spec; one-line CheckpointError naming the problem and the fix."""
    if trust_remote_code is None:
        trust_remote_code = trust_remote_code_default()
    ref = name[len(PREFIX):] if name.startswith(PREFIX) else name
    folder = locate(ref, trust_remote_code)
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{folder / 'config.json'} is not valid JSON ({exc})") from None
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED:
        raise CheckpointError(f"{name}: architecture {model_type!r} is not supported; supported model types: "
                              f"{supported_text()}")
    files, fmt = weight_files(folder)
    hf_config = _load_config(folder, trust_remote_code, name)
    config, extra = arch_config(hf_config, _generation_config(folder))
    total = _meta_parameters(hf_config, config.family, trust_remote_code)
    return HFModelSpec(name=name, config=config, source=f"{PREFIX}{folder}", extra=extra, path=str(folder),
                       weights_format=fmt, checkpoint_sha256=checkpoint_digest(folder, files),
                       parameter_total=total, trust_remote_code=trust_remote_code)


def _generation_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "generation_config.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return {}


def _load_config(folder: Path, trust_remote_code: bool, name: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code,
                                          local_files_only=True)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise CheckpointError(f"{name}: this checkpoint needs its own Python code; rerun with "
                                  "--trust-remote-code only if you trust it") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{name}: config.json cannot be read by transformers ({first})") from None
