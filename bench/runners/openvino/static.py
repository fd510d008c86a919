"""The static session: batch-1 generation over the static graphs (slmbench.exporters.static).

One preallocated buffer per KV tensor, bound to the decode request once; each step writes the
graph's one new KV row into the next slot and sets its mask bit: no per-step full-cache copy and
no tensor that changes shape. Prompts are left-padded to P, as the graphs were checked.
"""

from __future__ import annotations

import numpy as np

from slmbench.errors import InvalidOption
from slmbench.exporters.artifact import ArtifactError
from slmbench.exporters.onnx import kv_names
from slmbench.runners.openvino.ports import require_inputs, run


class StaticSession:
    """Batch-1 generation over the static graphs with preallocated, once-bound buffers."""

    def __init__(self, compiled: dict, graphs: dict, shapes: dict, kv: dict, encoder_decoder: bool):
        import openvino as ov

        self._ov = ov
        self.encoder_decoder = encoder_decoder
        self.p, self.r, self.c = shapes["prompt_len"], shapes["response_len"], shapes["kv_capacity"]
        layers, h, d = kv["layers"], kv["kv_heads"], kv["head_dim"]
        self._tensors = []  # keeps every shared buffer's ov.Tensor alive
        self.past = {name: np.zeros((1, h, self.c, d), np.float32) for name in kv_names(layers, "past")}
        self.ids, self.pos = np.zeros((1, 1), np.int64), np.zeros((1, 1), np.int64)
        self.mask = np.zeros((1, self.c + 1), np.int64)
        self.dec = compiled["decoder"].create_infer_request()
        require_inputs(compiled["decoder"], graphs["decoder"]["inputs"], "static decoder")
        self._dec_inputs = set(graphs["decoder"]["inputs"])
        self._bound: set[str] = set()
        self._bind(
            self.dec,
            {"input_ids": self.ids, "attention_mask": self.mask, "position_ids": self.pos, **self.past},
            self._bound,
        )
        self.new_rows = [
            (name, compiled["decoder"].output(name.replace("past_", "new_", 1))) for name in self.past
        ]
        self.dec_out = compiled["decoder"].output("next_token"), compiled["decoder"].output("logits")
        if encoder_decoder:
            self.enc = compiled["encoder"].create_infer_request()
            self.src, self.src_mask = np.zeros((1, self.p), np.int64), np.zeros((1, self.p), np.int64)
            enc_bound: set[str] = set()
            self._bind(self.enc, {"input_ids": self.src, "attention_mask": self.src_mask}, enc_bound)
            require_inputs(compiled["encoder"], enc_bound, "static encoder")
            self._bind(self.dec, {"encoder_attention_mask": self.src_mask}, self._bound)
            self.cross = kv_names(layers, "cross")
        else:
            self.pre = compiled["prefill"].create_infer_request()
            self.pre_ids, self.pre_mask, self.pre_pos = (np.zeros((1, self.p), np.int64) for _ in range(3))
            pre_bound: set[str] = set()
            self._bind(
                self.pre,
                {"input_ids": self.pre_ids, "attention_mask": self.pre_mask, "position_ids": self.pre_pos},
                pre_bound,
            )
            require_inputs(compiled["prefill"], pre_bound, "static prefill")
            self.present = [
                (name, compiled["prefill"].output(name.replace("past_", "present_", 1))) for name in self.past
            ]
            self.pre_out = compiled["prefill"].output("next_token"), compiled["prefill"].output("logits")

    def _bind(self, request, arrays: dict, bound: set) -> None:
        for name, array in arrays.items():
            tensor = self._ov.Tensor(array, shared_memory=True)
            self._tensors.append(tensor)
            request.set_tensor(name, tensor)
            bound.add(name)

    def start(self, input_ids: np.ndarray, max_new_tokens: int) -> None:
        batch, n = input_ids.shape
        if batch != 1:
            raise InvalidOption(f"static mode runs batch 1, got batch {batch}")
        if n > self.p:
            raise InvalidOption(
                f"a prompt of {n} tokens exceeds the static prompt length {self.p}; export for a longer input"
            )
        if max_new_tokens > self.r:
            raise InvalidOption(f"{max_new_tokens} new tokens exceed the static response length {self.r}")
        # Slots of an earlier request keep finite values and are masked out: no need to zero them.
        self.mask[...] = 0
        self.mask[0, self.c] = 1  # the current token's own key (the graph appends it last)
        self.slot = 0 if self.encoder_decoder else self.p
        self.position = 0 if self.encoder_decoder else n
        self.prefilled = self.encoder_decoder
        self._checked = False
        self._last = None

    def encode(self, input_ids: np.ndarray) -> None:
        n = input_ids.shape[1]
        self.src[...] = 0
        self.src[0, self.p - n :] = input_ids[0]
        self.src_mask[...] = 0
        self.src_mask[0, self.p - n :] = 1
        run(self.enc)
        for name in self.cross:  # the encoder's own output tensors, bound once per request
            self.dec.set_tensor(name, self.enc.get_tensor(name))
        self._bound.update(self.cross)

    def _prefill(self, input_ids: np.ndarray) -> np.ndarray:
        n, p = input_ids.shape[1], self.p
        self.pre_ids[...] = 0
        self.pre_ids[0, p - n :] = input_ids[0]
        self.pre_mask[...] = 0
        self.pre_mask[0, p - n :] = 1
        self.pre_pos[...] = 0
        self.pre_pos[0, p - n :] = np.arange(n)
        run(self.pre)
        for name, port in self.present:
            self.past[name][:, :, :p] = self.pre.get_tensor(port).data
        self.mask[0, :p] = self.pre_mask[0]
        self.prefilled = True
        self._last = self.pre, self.pre_out[1]
        return self.pre.get_tensor(self.pre_out[0]).data.copy()

    def decode(self, input_ids: np.ndarray) -> np.ndarray:
        if not self.prefilled:
            return self._prefill(input_ids)
        if not self._checked:
            if self._bound != self._dec_inputs:
                raise ArtifactError(
                    f"static decoder inputs {sorted(self._dec_inputs - self._bound)} were not fed"
                )
            self._checked = True
        if self.slot >= self.c:
            raise InvalidOption(f"the static KV capacity ({self.c}) is full")
        self.ids[0, 0] = input_ids[0, 0]
        self.pos[0, 0] = self.position
        run(self.dec)
        slot = self.slot
        for name, port in self.new_rows:
            self.past[name][:, :, slot] = self.dec.get_tensor(port).data[:, :, 0]
        self.mask[0, slot] = 1
        self.slot += 1
        self.position += 1
        self._last = self.dec, self.dec_out[1]
        return self.dec.get_tensor(self.dec_out[0]).data.copy()

    def logits(self) -> np.ndarray:
        request, port = self._last
        return request.get_tensor(port).data.copy()
