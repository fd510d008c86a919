"""The stateful session: OpenVINO keeps the KV cache as state inside the compiled decoder."""

from __future__ import annotations

import time

import numpy as np

from slmbench.exporters.artifact import ArtifactError
from slmbench.runners.openvino.ports import require_fed, require_inputs


class StatefulSession:
    """One request at a time over a compiled stateful decoder (and encoder).

    The prompt's ids go in once; each later step writes its one token id into a preallocated
    buffer already bound to the request, so a step sets no tensor. Only `next_token` (in-graph
    argmax) is read back. A vision model's tower (`vision`) writes the image embeddings into its
    own output tensor, which is bound as the encoder's (or the prefill's) `image_embeds` as it is:
    no copy; a decoder-only model's later steps see an empty image.
    """

    def __init__(self, decoder, encoder, kv: dict, inputs: list[str], vision=None, hidden: int | None = None):
        import openvino as ov

        self._ov = ov
        require_inputs(decoder, inputs, "stateful decoder")
        self.request = decoder.create_infer_request()
        self.encoder = encoder.create_infer_request() if encoder is not None else None
        self.inputs = set(inputs)
        self.cross = sorted(n for n in self.inputs if n.startswith("cross_"))
        self.states = list(self.request.query_state())
        if len(self.states) != 2 * kv["layers"]:
            raise ArtifactError(
                f"stateful decoder has {len(self.states)} states, expected {2 * kv['layers']}"
            )
        self.kv = kv
        self._next = decoder.output("next_token")
        self._logits = decoder.output("logits")
        if encoder is not None:
            require_inputs(encoder, ["input_ids", "attention_mask", *(["image_embeds"] if vision else [])],
                           "encoder")
        self.vision = vision.create_infer_request() if vision is not None else None
        self.hidden = hidden

    def _set(self, name: str, tensor) -> None:
        self.request.set_tensor(name, tensor)
        self._fed.add(name)

    def start(self, input_ids: np.ndarray, max_new_tokens: int) -> None:
        """Reset the cache: empty [batch, kv_heads, 0, head_dim] states (after reset_state alone
        a state has batch 0 and the first concat fails)."""
        batch = input_ids.shape[0]
        self.request.reset_state()
        empty = self._ov.Tensor(np.zeros((batch, self.kv["kv_heads"], 0, self.kv["head_dim"]), np.float32))
        for state in self.states:
            state.state = empty
        self._step = np.zeros((batch, 1), np.int64)
        self._step_tensor = self._ov.Tensor(self._step, shared_memory=True)
        self._step_bound = False
        self._fed: set[str] = set()
        self._checked = False
        if "beam_idx" in self.inputs:  # the cache's batch order (exporters/openvino.add_beam_idx): unchanged
            self._set("beam_idx", self._ov.Tensor(np.arange(batch, dtype=np.int32)))
        self._image = None  # the image embeddings the next encode / prefill reads
        if self.vision is not None:
            self._no_image = self._ov.Tensor(np.zeros((batch, 0, self.hidden), np.float32))
            if "image_embeds" in self.inputs:
                self._set("image_embeds", self._no_image)

    def encode_image(self, pixels: np.ndarray) -> None:
        """The vision tower to completion; its output stays where it is, bound for the next graph."""
        self.vision.set_tensor("pixel_values", self._ov.Tensor(np.ascontiguousarray(pixels)))
        self.vision.start_async()
        self.vision.wait()
        self._image = self.vision.get_tensor("image_embeds")
        if "image_embeds" in self.inputs:  # decoder-only: the prefill reads it
            self._set("image_embeds", self._image)

    def encode(self, input_ids: np.ndarray) -> None:
        ov, enc = self._ov, self.encoder
        image = 0 if self._image is None else self._image.shape[1]
        mask = ov.Tensor(np.ones((input_ids.shape[0], image + input_ids.shape[1]), np.int64))
        enc.set_tensor("input_ids", ov.Tensor(np.ascontiguousarray(input_ids)))
        enc.set_tensor("attention_mask", mask)
        if self.vision is not None:
            enc.set_tensor("image_embeds", self._no_image if self._image is None else self._image)
        enc.start_async()
        enc.wait()
        for name in self.cross:  # bound once per request: the decoder reads the encoder's own outputs
            self._set(name, enc.get_tensor(name))
        self._set("encoder_attention_mask", mask)

    def decode(self, input_ids: np.ndarray) -> np.ndarray:
        if input_ids.shape[1] == 1:
            self._step[...] = input_ids
            if not self._step_bound:
                self._set("input_ids", self._step_tensor)
                self._step_bound = True
        else:
            self._set("input_ids", self._ov.Tensor(np.ascontiguousarray(input_ids)))
            self._step_bound = False
        if not self._checked:
            require_fed(self._fed, self.inputs)
            self._checked = True
        elif self._image is not None and "image_embeds" in self.inputs:  # after the prefill: no image
            self.request.set_tensor("image_embeds", self._no_image)
            self._image = None
        self.request.start_async()
        self.request.wait()
        return self.request.get_tensor(self._next).data.copy()

    def logits(self) -> np.ndarray:
        return self.request.get_tensor(self._logits).data.copy()

    def bare_generate(self, input_ids: np.ndarray, output_len: int, start_token: int):
        """The floor for harness overhead (slmbench.tools.overhead): the same requests, tensors and
        buffers as encode/decode, driven by a plain loop of OpenVINO's own calls. Keep in step
        with decode(). Returns (timestamps_ns from t_0, encoder end or None, tokens)."""
        if self.vision is not None:
            from slmbench.errors import InvalidOption

            raise InvalidOption("the bare loop for harness overhead exists for text models only")
        self.start(input_ids, output_len)
        request, clock, step = self.request, time.perf_counter_ns, self._step
        first = np.full((input_ids.shape[0], 1), start_token, np.int64) if self.encoder is not None else input_ids
        tokens = np.empty((input_ids.shape[0], output_len), np.int64)
        stamps = [0] * (output_len + 1)
        encoder_end = None
        t0 = stamps[0] = clock()
        if self.encoder is not None:
            self.encode(input_ids)
            encoder_end = clock()
        request.set_tensor("input_ids", self._ov.Tensor(np.ascontiguousarray(first)))
        self._fed.add("input_ids")
        require_fed(self._fed, self.inputs)
        next_token = self._next
        for i in range(output_len):
            request.start_async()
            request.wait()
            step[:, 0] = tokens[:, i] = request.get_tensor(next_token).data
            stamps[i + 1] = clock()
            if i == 0:
                request.set_tensor("input_ids", self._step_tensor)
        return [s - t0 for s in stamps], None if encoder_end is None else encoder_end - t0, tokens
