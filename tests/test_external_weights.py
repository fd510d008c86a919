"""Weights stored beside the graphs, a tensor several graphs hold stored once (exporters/external_weights.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from slmbench.exporters.external_weights import SHARED_FILE, externalize
from slmbench.models import resolve_model


def _locations(path) -> dict[str, str]:
    model = onnx.load(str(path), load_external_data=False)
    return {t.name: {e.key: e.value for e in t.external_data}.get("location", "(in graph)")
            for t in model.graph.initializer}


def test_encoder_and_decoder_read_the_tied_embedding_from_one_file(tiny_onnx):
    artifact = tiny_onnx["mu-tiny"]
    cfg = resolve_model("mu-tiny").config
    encoder, decoder = (_locations(artifact.graph_path(role)) for role in ("encoder", "decoder"))
    assert encoder["model.embed.weight"] == decoder["model.embed.weight"] == SHARED_FILE
    weights = artifact.manifest["weights"]
    assert "model.embed.weight" in weights["shared"]
    assert weights["shared_bytes_saved"] >= cfg.vocab_size * cfg.hidden * 4
    assert (artifact.path / SHARED_FILE).exists() and SHARED_FILE in artifact.manifest["files"]
    assert artifact.manifest["parity"]["max_abs_diff"] <= 1e-4  # measured on the rewritten graphs


def test_a_decoder_only_artifact_has_nothing_to_share(tiny_onnx):
    artifact = tiny_onnx["deconly-tiny"]
    assert artifact.manifest["weights"]["shared"] == []
    assert not (artifact.path / SHARED_FILE).exists()
    assert set(_locations(artifact.graph_path("decoder")).values()) <= {"decoder.data", "(in graph)"}


def _graph(name: str, weight: np.ndarray, bias: np.ndarray, bias_first: bool = False):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weight.shape[1]])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])]
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
    graph = helper.make_graph(nodes, name, [x], [y], inits[::-1] if bias_first else inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _run(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_only_identical_tensors_are_shared_and_outputs_do_not_change(tmp_path):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((64, 300)).astype(np.float32)  # 75 KiB: packed
    big = rng.standard_normal((512, 600)).astype(np.float32)  # 1.2 MiB: aligned for memory-mapping
    onnx.save(_graph("a", weight, np.ones(300, np.float32)), str(tmp_path / "a.onnx"))
    onnx.save(_graph("b", weight, np.full(300, 2, np.float32)), str(tmp_path / "b.onnx"))  # same "b" name, other bytes
    onnx.save(_graph("c", big, np.zeros(600, np.float32), bias_first=True), str(tmp_path / "c.onnx"),
              save_as_external_data=True, location="c.onnx.data")  # as the quantizer saves large graphs
    x, xc = rng.standard_normal((1, 64)).astype(np.float32), rng.standard_normal((1, 512)).astype(np.float32)
    before = [_run(tmp_path / "a.onnx", x), _run(tmp_path / "b.onnx", x), _run(tmp_path / "c.onnx", xc)]

    stored = externalize(tmp_path, ["a.onnx", "b.onnx", "c.onnx"])

    assert stored["shared"] == ["w"] and stored["shared_bytes_saved"] == weight.nbytes
    assert _locations(tmp_path / "a.onnx") == {"w": SHARED_FILE, "b": "a.data"}
    assert _locations(tmp_path / "b.onnx") == {"w": SHARED_FILE, "b": "b.data"}
    assert _locations(tmp_path / "c.onnx")["w"] == "c.data"
    assert not (tmp_path / "c.onnx.data").exists()  # no longer referenced: removed
    assert (tmp_path / SHARED_FILE).stat().st_size == weight.nbytes  # stored once
    c = onnx.load(str(tmp_path / "c.onnx"), load_external_data=False).graph.initializer
    offset = {t.name: int({e.key: e.value for e in t.external_data}.get("offset", 0)) for t in c}
    assert offset["b"] == 0 and offset["w"] == 1 << 16  # after the bias, at the next 64 KiB
    after = [_run(tmp_path / "a.onnx", x), _run(tmp_path / "b.onnx", x), _run(tmp_path / "c.onnx", xc)]
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize("corrupt", ["truncate", "remove"])
def test_a_damaged_shared_weight_file_is_refused_with_one_line(tiny_onnx, tmp_path, corrupt):
    import shutil

    from slmbench.exporters.artifact import Artifact, ArtifactError

    copy = tmp_path / "mu"
    shutil.copytree(tiny_onnx["mu-tiny"].path, copy)
    target = copy / SHARED_FILE
    if corrupt == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    else:
        target.unlink()
    with pytest.raises(ArtifactError) as err:
        Artifact.open(copy)
    assert "\n" not in str(err.value)
