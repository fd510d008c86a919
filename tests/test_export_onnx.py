import json
import time

import numpy as np
import onnx
import pytest

from slmbench.exporters.artifact import Artifact, ArtifactError
from slmbench.exporters.onnx import onnx_artifact
from slmbench.models import resolve_model


@pytest.mark.parametrize("name", ["mu-tiny", "deconly-tiny"])
def test_manifest_records_everything(tiny_onnx, name):
    m = tiny_onnx[name].manifest
    for key in ("graphs", "kv", "opset", "versions", "precision", "spec_hash", "parity", "files", "artifact_key"):
        assert key in m, key
    assert m["parity"]["passed"] and m["parity"]["max_abs_diff"] <= 1e-4
    assert m["parity"]["steps"] >= 4 and m["versions"]["torch"] and m["versions"]["onnx"]
    assert m["spec_hash"] == resolve_model(name).content_hash()
    expected = {"decoder", "encoder"} if name == "mu-tiny" else {"decoder"}
    assert set(m["graphs"]) == expected
    for role, graph in m["graphs"].items():
        model = onnx.load(tiny_onnx[name].graph_path(role), load_external_data=False)
        assert [i.name for i in model.graph.input] == graph["inputs"]
        assert [o.name for o in model.graph.output] == graph["outputs"]


def test_encoder_outputs_cross_kv_once(tiny_onnx):
    """Cross-attention K/V come out of the encoder graph, so no decoder step recomputes them."""
    m = tiny_onnx["mu-tiny"].manifest
    layers = m["kv"]["layers"]
    assert sum(o.startswith("cross_") for o in m["graphs"]["encoder"]["outputs"]) == 2 * layers
    assert sum(i.startswith("cross_") for i in m["graphs"]["decoder"]["inputs"]) == 2 * layers
    decoder = onnx.load(tiny_onnx["mu-tiny"].graph_path("decoder"), load_external_data=False)
    ops = {n.op_type for n in decoder.graph.node}
    # the decoder's cross-attention has no projection of the encoder states: it never sees them
    assert "encoder_hidden_states" not in {i.name for i in decoder.graph.input}
    assert "MatMul" in ops


def test_one_decoder_graph_serves_prefill_and_decode(tiny_onnx):
    import onnxruntime as ort

    art = tiny_onnx["deconly-tiny"]
    session = ort.InferenceSession(str(art.graph_path("decoder")), providers=["CPUExecutionProvider"])
    kv = art.manifest["kv"]
    empty = np.zeros((1, kv["kv_heads"], 0, kv["head_dim"]), np.float32)
    feeds = {n: empty for n in art.graph("decoder")["inputs"] if n.startswith("past_")}
    out = session.run(None, {"input_ids": np.arange(1, 8, dtype=np.int64)[None], **feeds})
    assert out[0].shape == (1, 8192) and out[1].shape == (1,) and out[2].shape[2] == 7
    past = dict(zip(feeds, out[2:]))
    out = session.run(None, {"input_ids": out[1][:, None], **past})
    assert out[2].shape[2] == 8
    assert out[1][0] == np.argmax(out[0][0])


def test_second_export_is_a_cache_hit(tiny_onnx, cache_dir):
    started = time.perf_counter()
    artifact, reused = onnx_artifact(resolve_model("deconly-tiny"), cache_dir=cache_dir)
    assert reused and artifact.path == tiny_onnx["deconly-tiny"].path
    assert time.perf_counter() - started < 1.0


def test_different_seed_is_a_different_artifact(tmp_path):
    a, _ = onnx_artifact(resolve_model("deconly-tiny"), cache_dir=tmp_path)
    b, _ = onnx_artifact(resolve_model("deconly-tiny", seed=7), cache_dir=tmp_path)
    assert a.path != b.path


def test_truncated_graph_is_detected_and_reexported(tmp_path):
    artifact, _ = onnx_artifact(resolve_model("deconly-tiny"), cache_dir=tmp_path)
    graph = artifact.graph_path("decoder")
    graph.write_bytes(graph.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="truncated or altered"):
        Artifact.open(artifact.path)
    with pytest.warns(UserWarning, match="re-exporting"):
        again, reused = onnx_artifact(resolve_model("deconly-tiny"), cache_dir=tmp_path)
    assert not reused and Artifact.open(again.path)


def test_altered_bytes_of_same_size_are_detected(tmp_path):
    artifact, _ = onnx_artifact(resolve_model("deconly-tiny"), cache_dir=tmp_path)
    graph = artifact.graph_path("decoder")
    data = bytearray(graph.read_bytes())
    data[-10] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match its manifest digest"):
        Artifact.open(artifact.path)


def test_an_in_place_edit_with_its_mtime_restored_is_detected(tmp_path):
    import os

    artifact, _ = onnx_artifact(resolve_model("deconly-tiny"), cache_dir=tmp_path)
    Artifact.open(artifact.path)  # stamped: the next open would not re-hash an untouched file
    graph = artifact.graph_path("decoder")
    before = graph.stat()
    with open(graph, "r+b") as f:  # same inode, same size
        f.seek(-10, os.SEEK_END)
        byte = f.read(1)
        f.seek(-10, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(graph, ns=(before.st_atime_ns, before.st_mtime_ns))  # what `touch -d` does
    assert graph.stat().st_mtime_ns == before.st_mtime_ns and graph.stat().st_ino == before.st_ino
    with pytest.raises(ArtifactError, match="does not match its manifest digest"):
        Artifact.open(artifact.path)


def test_corrupt_manifest_is_a_clear_error(tmp_path):
    artifact, _ = onnx_artifact(resolve_model("deconly-tiny"), cache_dir=tmp_path)
    (artifact.path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="manifest.json is corrupt"):
        Artifact.open(artifact.path)


def test_interrupted_export_leaves_no_artifact(tmp_path, monkeypatch):
    import slmbench.exporters.onnx as exporter

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(exporter.parity, "check", boom)
    with pytest.raises(KeyboardInterrupt):
        onnx_artifact(resolve_model("deconly-tiny"), cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_manifest_is_json_with_sorted_keys(tiny_onnx):
    text = (tiny_onnx["mu-tiny"].path / "manifest.json").read_text()
    assert json.loads(text)["format"] == "onnx"


def test_a_verified_artifact_reopens_fast_but_a_later_write_is_still_caught(tmp_path):
    artifact, _ = onnx_artifact(resolve_model("deconly-tiny"), cache_dir=tmp_path)
    Artifact.open(artifact.path)  # hashes in full and records the files' size, mtime and inode
    assert (artifact.path / ".verified.json").exists()
    graph = artifact.graph_path("decoder")
    data = bytearray(graph.read_bytes())
    data[-10] ^= 0xFF
    graph.write_bytes(bytes(data))  # same size, new mtime: hashed again
    with pytest.raises(ArtifactError, match="does not match its manifest digest"):
        Artifact.open(artifact.path)
