"""Weights beside the graphs, each stored once.

torch.onnx.export embeds every initializer in its graph file. Two costs follow: an encoder-decoder's
encoder.onnx and decoder.onnx each carry the tied embedding table (82 MB for mu-100m, 132 MB for
mu-330m), and ONNX Runtime parses the whole protobuf into the heap before it takes the weights out
of it (mu-100m's two sessions: 0.72 GB resident with embedded weights, 0.48 GB with external ones,
measured here). So every large initializer moves to external data, each large one at a 64 KiB-aligned
offset ONNX Runtime can memory-map: tensors identical in several graphs of one artifact (same name, type,
shape and bytes) go once into `shared.data`, the others into `<graph>.data`. A table that is only
gathered from (the embedding) then costs the pages a request touches, and the encoder's and the
decoder's sessions map the same file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SHARED_FILE = "shared.data"
_ALIGN = 1 << 16  # a weight starts at a memory-mapping granularity (64 KiB covers every OS's)
_ALIGN_FROM = 1 << 20  # smaller tensors are packed (8-byte aligned): padding would outweigh them
_MIN_BYTES = 1024  # smaller constants (shapes, norms' eps) stay in the graph


def _raw(tensor) -> bytes:
    from onnx import numpy_helper

    return tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()


def _identity(tensor, raw: bytes) -> tuple:
    return tensor.name, tensor.data_type, tuple(tensor.dims), hashlib.sha256(raw).hexdigest()


class _DataFile:
    """One external data file being written: each distinct tensor once, at aligned offsets."""

    def __init__(self, path: Path):
        self.path, self.handle, self.at = path, open(path, "wb"), {}

    def place(self, key: tuple, raw: bytes) -> tuple[int, int]:
        if key not in self.at:
            end = self.handle.tell()
            offset = end + -end % (_ALIGN if len(raw) >= _ALIGN_FROM else 8)
            self.handle.seek(offset)
            self.handle.write(raw)
            self.at[key] = offset
        return self.at[key], len(raw)

    def close(self) -> None:
        self.handle.close()


def externalize(folder: Path, files: list[str]) -> dict:
    """Rewrite the graphs `files` in `folder` with their weights as external data, tensors shared
    between graphs stored once in SHARED_FILE; data files no graph references any more are removed.
    Returns what the manifest records: the shared tensors and the bytes they would have repeated."""
    import onnx
    from onnx.external_data_helper import set_external_data

    folder = Path(folder)
    before = {p.name for p in folder.glob("*.data")}
    models = {name: onnx.load(str(folder / name)) for name in files}  # external data loaded in
    seen: dict[tuple, set[str]] = {}  # a tensor's identity -> the graphs that hold it
    sizes: dict[tuple, int] = {}
    for name, model in models.items():
        for tensor in model.graph.initializer:
            raw = _raw(tensor)
            if len(raw) >= _MIN_BYTES:
                key = _identity(tensor, raw)
                seen.setdefault(key, set()).add(name)
                sizes[key] = len(raw)
    shared_keys = {key for key, owners in seen.items() if len(owners) > 1}
    writers = {SHARED_FILE: _DataFile(folder / SHARED_FILE)} if shared_keys else {}
    try:
        for name, model in models.items():
            own = Path(name).stem + ".data"
            for tensor in model.graph.initializer:
                raw = _raw(tensor)
                if len(raw) < _MIN_BYTES:
                    continue
                key = _identity(tensor, raw)
                target = SHARED_FILE if key in shared_keys else own
                if target not in writers:
                    writers[target] = _DataFile(folder / target)
                offset, length = writers[target].place(key, raw)
                for field in ("float_data", "int32_data", "int64_data", "double_data"):
                    tensor.ClearField(field)
                tensor.raw_data = raw  # the helper insists on it, then the bytes leave the graph
                set_external_data(tensor, target, offset, length)
                tensor.data_location = onnx.TensorProto.EXTERNAL
                tensor.ClearField("raw_data")
    finally:
        for writer in writers.values():
            writer.close()
    for name, model in models.items():
        onnx.save(model, str(folder / name))
    for stale in before - set(writers):
        (folder / stale).unlink()
    return {"external_data": sorted(writers),
            "shared": sorted(key[0] for key in shared_keys),
            "shared_bytes_saved": sum((len(seen[k]) - 1) * sizes[k] for k in shared_keys)}
