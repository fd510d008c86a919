"""What keeps the harness's graphs lean and its weights on huge pages (issue 10). Speed itself is
measured by `make perf`, not here: these tests check the mechanisms, exactly."""

from __future__ import annotations

import ctypes
import os

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from slmbench.exporters.fold_shapes import fold_reshape_shapes
from slmbench.host.hugepages import back_with_huge_pages, thp_mode
from slmbench.models import resolve_model
from slmbench.models.blocks import Rotary, apply_rotary


def _split_heads_graph(copy_from_other: bool):
    """Reshape(x, Concat(Unsqueeze(Gather(Shape(src), 0)), Unsqueeze(Gather(Shape(src), 1)), [4, 16])):
    what the tracer writes for x.view(*x.shape[:2], 4, 16); src is x itself or another tensor."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", 64])
    src = "y" if copy_from_other else "x"
    nodes = [helper.make_node("Shape", [src], ["s"])]
    for i in (0, 1):
        nodes += [helper.make_node("Constant", [], [f"i{i}"], value=numpy_helper.from_array(np.array(i, np.int64))),
                  helper.make_node("Gather", ["s", f"i{i}"], [f"g{i}"], axis=0),
                  helper.make_node("Unsqueeze", [f"g{i}", "zero"], [f"u{i}"])]
    nodes += [helper.make_node("Concat", ["u0", "u1", "tail"], ["shape"], axis=0),
              helper.make_node("Reshape", ["x", "shape"], ["out"])]
    inits = [numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([4, 16], np.int64), "tail")]
    graph = helper.make_graph(nodes, "g", [x, y], [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _run(model, x, y):
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x, "y": y})[0]


def test_a_reshape_that_keeps_its_own_leading_dims_folds_to_a_constant_target():
    model = _split_heads_graph(copy_from_other=False)
    x = np.random.rand(2, 3, 64).astype(np.float32)
    before = _run(model, x, x)
    assert fold_reshape_shapes(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Reshape"]  # the shape arithmetic is gone
    target = next(t for t in model.graph.initializer if t.name == model.graph.node[0].input[1])
    assert numpy_helper.to_array(target).tolist() == [0, 0, 4, 16]
    np.testing.assert_array_equal(_run(model, x, x), before)
    x5 = np.random.rand(5, 7, 64).astype(np.float32)  # still dynamic in batch and time
    assert _run(model, x5, x5).shape == (5, 7, 4, 16)


def test_a_reshape_to_another_tensors_dims_is_left_alone():
    model = _split_heads_graph(copy_from_other=True)
    nodes = list(model.graph.node)
    assert fold_reshape_shapes(model) == 0
    assert list(model.graph.node) == nodes


@pytest.mark.parametrize("name", ["deconly-tiny", "mu-tiny"])
def test_exported_decoder_has_no_per_layer_shape_arithmetic(tiny_onnx, name):
    """One fused QKV matmul per self-attention block and no Shape node inside any layer; the
    parity check against PyTorch (in the manifest) ran on this very graph."""
    artifact = tiny_onnx[name]
    graph = onnx.load(str(artifact.graph_path("decoder")), load_external_data=False).graph
    cfg = resolve_model(name).config
    in_layers = [n for n in graph.node if "/decoder." in n.name]
    assert not [n.name for n in in_layers if n.op_type == "Shape"]
    assert sum("qkv_proj" in n.name and n.op_type == "MatMul" for n in in_layers) == cfg.decoder_layers
    assert artifact.manifest["parity"]["max_abs_diff"] < 1e-4


def test_rotary_by_gather_is_exactly_rotate_half():
    rotary = Rotary(16, 10000.0)
    cos, signed_sin, swap = rotary(torch.arange(5)[None], torch.float32)
    freqs = torch.arange(5.0)[:, None] * rotary.inv_freq
    sin = torch.cat([freqs, freqs], -1).sin()[None, :, None]
    x = torch.randn(1, 5, 3, 16)
    rotate_half = torch.cat([-x[..., 8:], x[..., :8]], dim=-1)
    assert torch.equal(apply_rotary(x, (cos, signed_sin, swap)), x * cos + rotate_half * sin)


class _Mapping:
    """Fresh anonymous memory in a mapping of its own: PROT_NONE guard pages on both sides keep the
    kernel from merging it with neighbouring mappings, and a new mapping is never memory an
    earlier test already moved to huge pages (malloc can hand that back)."""

    PAGE = 4096

    def __init__(self, size: int):
        import mmap

        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self.raw = mmap.mmap(-1, size + 2 * self.PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.raw))
        assert libc.mprotect(base, self.PAGE, 0) == 0 and libc.mprotect(base + self.PAGE + size, self.PAGE, 0) == 0
        self.address, self.size = base + self.PAGE, size
        ctypes.memset(self.address, 1, size)  # every page resident, on 4 KiB pages (THP madvise)

    def head(self, n: int) -> bytes:
        return ctypes.string_at(self.address, n)


def _small_page_buffer(mb: int = 64) -> _Mapping:
    return _Mapping(mb << 20)


def _huge_bytes_in(buf: _Mapping) -> int:
    """Bytes of the buffer's own mapping on huge pages (/proc/self/smaps)."""
    inside = False
    for line in open("/proc/self/smaps"):
        head = line.split()
        if "-" in head[0] and len(head) >= 5:
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            inside = lo <= buf.address < hi
        elif inside and head[0] == "AnonHugePages:":
            return int(head[1]) * 1024
    return 0


def test_loaded_memory_is_moved_to_huge_pages_or_the_reason_is_recorded():
    buf = _small_page_buffer()
    before = _huge_bytes_in(buf)
    result = back_with_huge_pages()
    assert result["thp_mode"] == thp_mode()
    if result["status"] != "collapsed" and "Invalid argument" in result.get("errors", ["Invalid argument"]):
        pytest.skip(f"no MADV_COLLAPSE here: {result}")
    assert result["status"] == "collapsed", result
    gained = _huge_bytes_in(buf) - before
    # Most of the 64 MiB buffer at least, unless the kernel had no free huge pages (a fragmented
    # machine): then the refusal and its reason are what the row records.
    assert gained >= 32 << 20 or (result["refused_bytes"] > 0 and result["errors"]), (gained, result)
    assert buf.head(4) == b"\x01" * 4  # contents survive the move
    again = back_with_huge_pages()
    assert again["collapsed_bytes"] < result["collapsed_bytes"]  # only new small-page memory is touched


def test_huge_pages_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("SLMBENCH_HUGE_PAGES", "0")
    _small_page_buffer(16)
    assert back_with_huge_pages()["status"].startswith("disabled")


def test_every_row_says_what_happened_to_huge_pages(tmp_path, quick_settings):
    from slmbench.config import plan
    from slmbench.core.benchmark import run_benchmark

    row = run_benchmark(plan(["deconly-tiny"], "cpu", ["onnxruntime"], settings=quick_settings),
                        results=tmp_path / "r.jsonl", log=lambda m: None)[0]
    assert row["huge_pages"]["status"] and "thp_mode" in row["huge_pages"]
    assert row["environment"]["transparent_hugepages"] == thp_mode()
    assert os.path.exists(tmp_path / "r.jsonl")


def test_a_read_only_mapping_of_a_weights_file_is_released_and_still_reads_the_same(tmp_path):
    """release_mapped_files drops the resident pages of read-only mappings of the files named (what
    the OpenVINO runner does with its IR after priming), never those of a writable mapping."""
    import mmap

    from slmbench.host.memory import release_mapped_files

    data = np.random.default_rng(0).integers(0, 255, 32 << 20, dtype=np.uint8)
    (tmp_path / "w.bin").write_bytes(data.tobytes())
    (tmp_path / "rw.bin").write_bytes(data.tobytes())
    with open(tmp_path / "w.bin", "rb") as ro, open(tmp_path / "rw.bin", "r+b") as rw:
        read_only = mmap.mmap(ro.fileno(), 0, access=mmap.ACCESS_READ)
        writable = mmap.mmap(rw.fileno(), 0, access=mmap.ACCESS_COPY)  # private, written: dropping would lose it
        writable[:4] = b"\x00\x01\x02\x03"
        assert np.frombuffer(read_only, np.uint8).sum() == data.sum()  # every page resident
        released = release_mapped_files([tmp_path / "w.bin", tmp_path / "rw.bin"])
        assert released >= 24 << 20, released
        assert np.frombuffer(read_only, np.uint8).sum() == data.sum()  # faults back from the file
        assert writable[:4] == b"\x00\x01\x02\x03"
        assert release_mapped_files([tmp_path / "elsewhere.bin"]) == 0
        del writable  # close() refuses while a buffer is exported; the maps close with the process's GC
