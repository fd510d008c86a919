"""Fold the tracer's shape arithmetic into constant Reshape targets.

The TorchScript exporter turns `x.view(*x.shape[:2], h, d)` on dynamic batch and sequence axes
into Shape -> Gather -> Unsqueeze -> Concat -> Reshape per use (and `unflatten`/`flatten` into
Shape -> Slice -> Concat -> Reshape): nodes that ONNX Runtime executes on every decode step, several
times per layer. A Reshape whose target copies dimensions of its own input at the same
positions needs none of that: ONNX Reshape's 0 means "keep this dimension of the input" (with
allowzero=0, the default the exporter writes), and one remaining dimension can be -1. The rewrite
is exact (the parity check runs after it) and leaves any shape it cannot prove alone.
"""

from __future__ import annotations

import numpy as np

_INT64_MAX = np.iinfo(np.int64).max


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


def _copied_dims(part: str, data: str, producers: dict, known: dict) -> tuple[int, int] | None:
    """(start, end) when `part` reads dims start..end-1 of `data`'s own shape: the tracer's
    Unsqueeze(Gather(Shape(data), i)) for `x.shape[i]`, or Slice(Shape(data), start, end)."""
    node = producers.get(part)
    if node is not None and node.op_type == "Unsqueeze":
        gather = producers.get(node.input[0])
        if gather is None or gather.op_type != "Gather" or not _shape_of(gather.input[0], data, producers):
            return None
        index = _evaluate(gather.input[1], producers, known)
        if index is None or index.ndim != 0 or any(a.i for a in gather.attribute if a.name == "axis"):
            return None
        return (int(index), int(index) + 1) if int(index) >= 0 else None
    if node is None or node.op_type != "Slice" or not _shape_of(node.input[0], data, producers):
        return None
    if len(node.input) > 4 and node.input[4]:
        return None  # a step
    bounds = [_evaluate(n, producers, known) for n in node.input[1:]]
    if any(b is None or b.size != 1 for b in bounds) or (len(bounds) == 3 and int(bounds[2].reshape(-1)[0]) != 0):
        return None
    start, end = int(bounds[0].reshape(-1)[0]), int(bounds[1].reshape(-1)[0])
    return (start, end) if 0 <= start else None


def _target(reshape, producers: dict, known: dict, rank: int | None) -> list[int] | None:
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
        dims = _copied_dims(part, reshape.input[0], producers, known)
        if dims is None:
            return None
        start, end = dims
        if end == _INT64_MAX:
            if rank is None:
                return None
            end = rank
        end = min(end, rank) if rank is not None else end
        if end <= start:
            continue  # an empty slice of the shape
        if start == len(target):
            target += [0] * (end - start)
        elif end - start == 1 and -1 not in target:
            target.append(-1)
        else:
            return None
    return target if target.count(-1) <= 1 else None


def _ranks(model) -> dict:
    """Known tensor ranks, from ONNX shape inference on the weightless graph."""
    import onnx

    graph = onnx.GraphProto(node=model.graph.node, input=model.graph.input, output=model.graph.output)
    graph.initializer.extend(onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims)
                             for t in model.graph.initializer)  # dims without bytes: all inference needs
    bare = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    inferred = onnx.shape_inference.infer_shapes(bare)
    ranks = {}
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if info.type.tensor_type.HasField("shape"):
            ranks[info.name] = len(info.type.tensor_type.shape.dim)
    return ranks


def fold_reshape_shapes(model) -> int:
    """Rewrite in place every Reshape whose computed target folds; drop the nodes left unused.
    Returns how many Reshapes were folded."""
    from onnx import numpy_helper

    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    known = _constants(graph)
    ranks = _ranks(model)
    folded = 0
    for node in graph.node:
        if node.op_type != "Reshape":
            continue
        target = _target(node, producers, known, ranks.get(node.input[0]))
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
    used = {i for n in graph.node for i in n.input}
    unused = [t for t in graph.initializer if t.name not in used and t.name not in {o.name for o in graph.output}]
    for t in unused:
        graph.initializer.remove(t)
