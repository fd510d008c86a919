"""The static session: batch-1 generation over the static graphs (slmbench.exporters.static).

One preallocated buffer per KV tensor, bound to the decode request once; each step writes the
graph's one new KV row into the next slot and sets its mask bit: no per-step full-cache copy and
no tensor that changes shape. Prompts are left-padded to P, as the graphs were checked.

A vision model's tower writes its image embeddings straight into a buffer bound, once, as the
encoder's (or the prefill's) `image_embeds`: the static shapes let the stateful session's per-request
binding (stateful.py) become a binding made at load.
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
        self.i = shapes.get("image_tokens", 0)
        self.s = self.i + self.p  # the encoder's / prefill's slots: the image's, then the padded prompt
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
        image = self._tower(compiled.get("vision"))
        if encoder_decoder:
            self.enc = compiled["encoder"].create_infer_request()
            self.src, self.src_mask = np.zeros((1, self.p), np.int64), np.zeros((1, self.s), np.int64)
            enc_bound: set[str] = set()
            self._bind(self.enc, {"input_ids": self.src, "attention_mask": self.src_mask, **image}, enc_bound)
            require_inputs(compiled["encoder"], enc_bound, "static encoder")
            self._bind(self.dec, {"encoder_attention_mask": self.src_mask}, self._bound)
            self.cross = kv_names(layers, "cross")
        else:
            self.pre = compiled["prefill"].create_infer_request()
            self.pre_ids = np.zeros((1, self.p), np.int64)
            self.pre_mask, self.pre_pos = np.zeros((1, self.s), np.int64), np.zeros((1, self.s), np.int64)
            pre_bound: set[str] = set()
            self._bind(
                self.pre,
                {"input_ids": self.pre_ids, "attention_mask": self.pre_mask, "position_ids": self.pre_pos, **image},
                pre_bound,
            )
            require_inputs(compiled["prefill"], pre_bound, "static prefill")
            self.present = [
                (name, compiled["prefill"].output(name.replace("past_", "present_", 1))) for name in self.past
            ]
            self.pre_out = compiled["prefill"].output("next_token"), compiled["prefill"].output("logits")

    def _tower(self, compiled) -> dict:
        """A vision model's tower request with its pixels and image-embeddings buffers bound; returns
        the embeddings to bind as the first graph's input ({} for a text model)."""
        if not self.i:
            return {}
        if compiled is None:
            raise ArtifactError(f"static graphs for {self.i} image tokens have no vision graph")
        pixels, embeds = (list(compiled.input("pixel_values").get_shape()),
                          list(compiled.output("image_embeds").get_shape()))
        if embeds[:2] != [1, self.i]:
            raise ArtifactError(f"static vision graph outputs {embeds}, the language graphs take [1, {self.i}, ...]")
        require_inputs(compiled, ["pixel_values"], "static vision")
        self.vis = compiled.create_infer_request()
        self.pixels, self.image = np.zeros(pixels, np.float32), np.zeros(embeds, np.float32)
        self._bind(self.vis, {"pixel_values": self.pixels, "image_embeds": self.image}, set())
        return {"image_embeds": self.image}

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
        self.slot = 0 if self.encoder_decoder else self.s
        self.position = 0
        self.prefilled = self.encoder_decoder
        self._checked = False
        self._last = None
        self._image_in = False  # whether this request's image fills the I image slots

    def encode_image(self, pixels: np.ndarray) -> None:
        """The tower into the bound embeddings buffer, which the next encode / prefill reads."""
        if not self.i:
            raise InvalidOption("these static graphs are a text model's: they take no image")
        if pixels.shape != self.pixels.shape:
            raise InvalidOption(f"the static vision graph takes pixels {list(self.pixels.shape)}, "
                                f"got {list(pixels.shape)}")
        self.pixels[...] = pixels
        run(self.vis)
        self._image_in = True

    def _lay_out(self, input_ids: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> None:
        """The first graph's I + P slots: the image's I, then the padding, then the n prompt tokens
        (the ids [1,P] are the text's slots alone). The image keeps slots 0..I-1 whatever n is, and
        the prompt ends in the last slot, whose logits the prefill reads as without an image; the
        masked padding between them changes no logit. A request without an image (the runner's
        priming) masks the image slots too: the graphs then compute the text alone."""
        n = input_ids.shape[1]
        ids[...] = 0
        ids[0, self.p - n :] = input_ids[0]
        mask[...] = 0
        mask[0, : self.i] = self._image_in
        mask[0, self.s - n :] = 1

    def encode(self, input_ids: np.ndarray) -> None:
        self._lay_out(input_ids, self.src, self.src_mask)
        run(self.enc)
        for name in self.cross:  # the encoder's own output tensors, bound once per request
            self.dec.set_tensor(name, self.enc.get_tensor(name))
        self._bound.update(self.cross)

    def _prefill(self, input_ids: np.ndarray) -> np.ndarray:
        s = self.s
        self._lay_out(input_ids, self.pre_ids, self.pre_mask)
        real = np.cumsum(self.pre_mask[0])
        self.pre_pos[0] = np.maximum(real - 1, 0)  # the real slots numbered in order: image 0..I-1, text after
        self.position = int(real[-1])
        run(self.pre)
        for name, port in self.present:
            self.past[name][:, :, :s] = self.pre.get_tensor(port).data
        self.mask[0, :s] = self.pre_mask[0]
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
