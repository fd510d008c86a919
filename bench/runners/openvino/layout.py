"""The session over a user's own optimum-intel IR (`ov:DIR`; slmbench.exporters.byo reads its layout).

The manifest's `layout` names each graph's role and what each input is fed; the rule for the step
inputs (attention mask, positions, beam order) is exporters.byo.step_feeds, the one ONNX Runtime
follows too. A stateful decoder keeps its KV cache as OpenVINO state (reset per request: its states
start empty at the request's batch); a decoder without states gets the cache as explicit tensors,
present outputs fed back as past inputs. Every input is fed by name and checked before each step
(OpenVINO would silently use an empty tensor for one that is not).
"""

from __future__ import annotations

import numpy as np

from slmbench.exporters.byo import last_token, step_feeds, step_graph
from slmbench.runners.openvino.ports import require_fed, require_inputs, run


class LayoutSession:
    """start/encode/decode/logits over the compiled graphs (by role) of a user's IR."""

    def __init__(self, compiled: dict, manifest: dict):
        import openvino as ov

        self._ov = ov
        self.layout = manifest["layout"]
        self.graphs = self.layout["graphs"]
        self.kv = manifest["kv"]
        for role, graph in self.graphs.items():
            require_inputs(compiled[role], graph["inputs"], f"{role} graph {graph['file']}")
        self.requests = {role: compiled[role].create_infer_request() for role in self.graphs}

    def start(self, input_ids: np.ndarray, max_new_tokens: int) -> None:
        batch = input_ids.shape[0]
        for role, request in self.requests.items():
            if self.graphs[role].get("states"):
                request.reset_state()  # optimum-intel's states start empty at the batch of input_ids
        self._empty = self._ov.Tensor(np.zeros((batch, self.kv["kv_heads"], 0, self.kv["head_dim"]), np.float32))
        self._cache, self._cross, self._fixed, self._past_len = {}, {}, {}, 0

    def encode(self, input_ids: np.ndarray) -> None:
        ov, enc = self._ov, self.requests["encoder"]
        mask = np.ones_like(input_ids)
        enc.set_tensor("input_ids", ov.Tensor(np.ascontiguousarray(input_ids)))
        enc.set_tensor("attention_mask", ov.Tensor(mask))
        run(enc)
        self._fixed = {"encoder_hidden": enc.get_tensor(self.graphs["encoder"]["hidden"]),
                       "encoder_mask": ov.Tensor(mask)}

    def decode(self, input_ids: np.ndarray) -> np.ndarray:
        ov = self._ov
        role = step_graph(self.layout, self._past_len)
        graph, request = self.graphs[role], self.requests[role]
        fed: set[str] = set()

        def feed(name, tensor):
            request.set_tensor(name, tensor)
            fed.add(name)

        batch, new = input_ids.shape
        feed("input_ids", ov.Tensor(np.ascontiguousarray(input_ids)))
        for name, array in step_feeds(graph, batch, self._past_len, new).items():
            feed(name, ov.Tensor(array))
        for name, what in graph["feeds"].items():
            if what in self._fixed:
                feed(name, self._fixed[what])
        for past, present in graph["self_kv"]:
            if past:
                feed(past, self._cache.get(present, self._empty))
        for past, present in graph["cross_in"]:
            feed(past, self._cross.get(present, self._empty))
        require_fed(fed, set(graph["inputs"]))
        run(request)
        first = self._past_len == 0
        for _, present in graph["self_kv"]:
            tensor = request.get_tensor(present)
            # a request's outputs are overwritten by its next run, which reads them as its past: copy
            self._cache[present] = ov.Tensor(tensor.data.copy()) if role == "decoder" else tensor
        if first:
            self._cross = {name: request.get_tensor(name) for name in graph["cross_out"]}
        self._past_len += new
        self._logits = request.get_tensor(graph["logits"]).data
        return last_token(self._logits)

    def logits(self) -> np.ndarray:
        return np.array(self._logits[:, -1, :], np.float32)
