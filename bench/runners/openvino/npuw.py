"""The npuw mode's runtime side: the NPU plugin's own LLM pipeline (decoder-only, NPU only).

`compile_model(ir, "NPU", npuw_config(P, R))` turns the npuw-layout stateful IR
(slmbench.exporters.static) into the plugin's prefill and generate models; the session feeds it
every input by name, as i64 where the pipeline needs it.
"""

from __future__ import annotations

import numpy as np

from slmbench.errors import InvalidOption
from slmbench.exporters.artifact import ArtifactError
from slmbench.runners.openvino.ports import match_ports, run

NPUW_PREFILL_HINTS = ("STATIC", "DYNAMIC")


def align64(n: int) -> int:
    return (n + 63) // 64 * 64


def npuw_config(
    max_prompt_len: int,
    min_response_len: int,
    prefill_hint: str | None = None,
    seq_len_dim: int = 2,
    batch_dim: int = 0,
) -> dict[str, str]:
    """`compile_model(ir, "NPU", config)` splits a stateful decoder-only IR into a static prefill
    [1, align64(P)] and a static generate model [1,1] with KV capacity align64(P) + align64(R)."""
    for name, value in (("max prompt length", max_prompt_len), ("min response length", min_response_len)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidOption(f"npuw {name} must be a positive integer, got {value!r}")
    config = {
        "NPU_USE_NPUW": "YES",
        "NPUW_LLM": "YES",
        "NPUW_LLM_BATCH_DIM": str(batch_dim),
        "NPUW_LLM_SEQ_LEN_DIM": str(seq_len_dim),
        "NPUW_LLM_MAX_PROMPT_LEN": str(max_prompt_len),
        "NPUW_LLM_MIN_RESPONSE_LEN": str(min_response_len),
    }
    if prefill_hint is not None:
        hint = str(prefill_hint).upper()
        if hint not in NPUW_PREFILL_HINTS:
            raise InvalidOption(
                f"npuw prefill hint must be one of {', '.join(NPUW_PREFILL_HINTS)}, got {prefill_hint!r}"
            )
        config["NPUW_LLM_PREFILL_HINT"] = hint
    return config


def npuw_capacity(max_prompt_len: int, min_response_len: int) -> int:
    return align64(max_prompt_len) + align64(min_response_len)


_I64_INPUTS = ("input_ids", "attention_mask", "position_ids")


def npuw_inputs(
    input_types: dict[str, np.dtype], input_ids: np.ndarray, past_len: int
) -> dict[str, np.ndarray]:
    """Every input of a npuw-layout model, by name: ids, a mask of ones over past + current,
    positions past..past+T-1 (all i64) and beam_idx (identity) where the model has it."""
    batch, new = input_ids.shape
    feed = {
        "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
        "attention_mask": np.ones((batch, past_len + new), np.int64),
        "position_ids": np.ascontiguousarray(
            np.broadcast_to(np.arange(past_len, past_len + new, dtype=np.int64), (batch, new))
        ),
    }
    for name in _I64_INPUTS:
        if name not in input_types:
            raise ArtifactError(f"npuw model has no {name} input (inputs: {sorted(input_types)})")
        if np.dtype(input_types[name]) != np.int64:
            raise ArtifactError(
                f"npuw model input {name} is {np.dtype(input_types[name])}; the NPU pipeline needs i64"
            )
    if "beam_idx" in input_types:
        feed["beam_idx"] = np.arange(batch, dtype=input_types["beam_idx"])
    unknown = sorted(set(input_types) - set(feed))
    if unknown:
        raise ArtifactError(
            f"npuw model inputs {unknown} have no feeding rule (they would get empty tensors)"
        )
    return feed


class NpuwSession:
    """Generation over a npuw-layout stateful IR: compiled for NPU with `npuw_config`, or on CPU
    as a plain stateful model (how the parity check exercises the same IR and feeding)."""

    def __init__(self, compiled, kv: dict, inputs: list[str]):
        import openvino as ov

        self._ov = ov
        self.request = compiled.create_infer_request()
        self.types = {
            name: port.get_element_type().to_dtype()
            for name, port in zip(
                match_ports(compiled.inputs, inputs, "npuw model"), compiled.inputs, strict=True
            )
        }
        self._logits = compiled.output("logits")
        self.kv = kv

    def start(self, input_ids: np.ndarray, max_new_tokens: int) -> None:
        batch = input_ids.shape[0]
        self.request.reset_state()
        empty = self._ov.Tensor(np.zeros((batch, self.kv["kv_heads"], 0, self.kv["head_dim"]), np.float32))
        for state in self.request.query_state():
            if state.name.startswith("past_key_values"):
                state.state = empty
        self.past_len = 0

    def decode(self, input_ids: np.ndarray) -> np.ndarray:
        for name, array in npuw_inputs(self.types, input_ids, self.past_len).items():
            self.request.set_tensor(name, self._ov.Tensor(array))
        run(self.request)
        self.past_len += input_ids.shape[1]
        return np.argmax(self.request.get_tensor(self._logits).data[:, -1], -1)

    def logits(self) -> np.ndarray:
        return self.request.get_tensor(self._logits).data[:, -1].copy()
