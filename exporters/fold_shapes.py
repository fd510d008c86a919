"""Fold the tracer's shape arithmetic into constant Reshape targets.

The TorchScript exporter turns `x.view(*x.shape[:2], h, d)` on dynamic batch and sequence axes
into Shape -> Gather -> Unsqueeze -> Concat -> Reshape per use: nodes that ONNX Runtime executes
on every decode step, several times per layer (models/blocks.py writes every head reshape this
way). A Reshape whose target copies dimensions of its own input at the same
positions needs none of that: ONNX Reshape's 0 means "keep this dimension of the input" (with
allowzero=0, the default the exporter writes), and one remaining dimension can be -1. The rewrite
is exact (the parity check runs after it) and leaves any shape it cannot prove alone.
"""

from __future__ import annotations

import numpy as np


def _constants(graph) -> dict:
    from onnx import numpy_helper

    known = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.data_type == 7}  # int64
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            known[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return known


def _evaluate(name: str, producers: dict, known: dict):
    """The value of a small int64 tensor computed from constants only (the tracer reshapes and
    unsqueezes its literal indices before slicing with them), or None."""
    if name in known:
        return known[name]
    node = producers.get(name)
    if node is None or node.op_type not in ("Reshape", "Unsqueeze", "Squeeze", "Identity"):
        return None
    value = _evaluate(node.input[0], producers, known)
    if value is None:
        return None
    if node.op_type == "Identity":
        return value
    if node.op_type == "Reshape":
        shape = _evaluate(node.input[1], producers, known)
        return None if shape is None else value.reshape(shape)
    return value.reshape(-1) if value.size == 1 else None  # (un)squeeze of a scalar index


def _shape_of(name: str, data: str, producers: dict) -> bool:
    node = producers.get(name)
    return node is not None and node.op_type == "Shape" and node.input[0] == data and not node.attribute


def _copied_dim(part: str, data: str, producers: dict, known: dict) -> int | None:
    """i when `part` is the tracer's Unsqueeze(Gather(Shape(data), i)) for `data.shape[i]`."""
    node = producers.get(part)
    if node is None or node.op_type != "Unsqueeze":
        return None
    gather = producers.get(node.input[0])
    if gather is None or gather.op_type != "Gather" or not _shape_of(gather.input[0], data, producers):
        return None
    index = _evaluate(gather.input[1], producers, known)
    if index is None or index.ndim != 0 or any(a.i for a in gather.attribute if a.name == "axis"):
        return None
    return int(index) if int(index) >= 0 else None


def _target(reshape, producers: dict, known: dict) -> list[int] | None:
    concat = producers.get(reshape.input[1])
    if concat is None or concat.op_type != "Concat" or any(a.i for a in reshape.attribute if a.name == "allowzero"):
        return None
    target: list[int] = []
    for part in concat.input:
        value = _evaluate(part, producers, known)
        if value is not None:
            if (value == 0).any():
                return None  # a literal 0 would change meaning under allowzero=0
            target += value.reshape(-1).tolist()
            continue
        dim = _copied_dim(part, reshape.input[0], producers, known)
        if dim is None:
            return None
        if dim == len(target):
            target.append(0)  # the input's own dim, same position
        elif -1 not in target:
            target.append(-1)
        else:
            return None
    return target


def fold_reshape_shapes(model) -> int:
    """Rewrite in place every Reshape whose computed target folds; drop the nodes left unused.
    Returns how many Reshapes were folded."""
    from onnx import numpy_helper

    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    known = _constants(graph)
    folded = 0
    for node in graph.node:
        if node.op_type != "Reshape":
            continue
        target = _target(node, producers, known)
        if target is None:
            continue
        name = f"{node.name or node.output[0]}/folded_shape"
        graph.initializer.append(numpy_helper.from_array(np.array(target, np.int64), name))
        node.input[1] = name
        folded += 1
    _drop_dead_nodes(graph)
    return folded


def _drop_dead_nodes(graph) -> None:
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
            for attr in node.attribute:  # subgraphs (If/Loop) read outer names too
                for sub in [attr.g, *attr.graphs]:
                    needed.update(i for n in sub.node for i in n.input)
    kept = list(reversed(keep))
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for index in reversed(range(len(graph.initializer))):  # by index: no copy or compare of weights
        if graph.initializer[index].name not in used:
            del graph.initializer[index]
