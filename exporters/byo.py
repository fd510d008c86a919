"""The user's own export as an artifact: its I/O layout read from the graphs, checked, never copied.

An `onnx:DIR` / `ov:DIR` folder (slmbench.models.byo) is not exported: the artifact's path is the
user's folder and its files are the user's. What this module adds is the manifest the runners need:
which graph plays which role, and what each of its inputs is fed (`layout`), read from the graphs'
input and output names, ranks and element types and checked against config.json (layers, KV heads,
head dim, vocabulary). Recognised (what optimum-onnx 0.1 and optimum-intel 1.27 write):

- ONNX decoder-only `model.onnx`: input_ids, attention_mask, position_ids (optional),
  past_key_values.{i}.{key,value} -> logits [batch, seq, vocab], present.{i}.{key,value};
- ONNX encoder-decoder `encoder_model.onnx` (input_ids, attention_mask -> last_hidden_state) with
  `decoder_model_merged.onnx` (use_cache_branch; the first step computes the cross-attention K/V,
  present.{i}.encoder.*, fed back as past_key_values.{i}.encoder.*), or with `decoder_model.onnx`
  (first step) + `decoder_with_past_model.onnx` (later steps);
- OpenVINO decoder-only stateful `openvino_model.xml` (+ .bin): input_ids, attention_mask,
  position_ids, beam_idx, the KV cache as 2 x layers states;
- OpenVINO encoder-decoder without states (`--disable-stateful`): `openvino_encoder_model.xml`,
  `openvino_decoder_model.xml` (first step) + `openvino_decoder_with_past_model.xml`.
Anything else is one line naming what was found and what is supported.

The check record (layout, parity, the user's file digests) is cached like any artifact, keyed by
the spec (whose hash covers every file's SHA-256), so it is made once, in a fresh process, and a
changed file is checked again; the cache folder holds only that record.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slmbench.errors import InvalidOption
from slmbench.exporters import parity
from slmbench.exporters.artifact import Artifact, ArtifactError, code_digest, ensure_artifact

ONNX_LAYOUTS = {
    "decoder-only": {"decoder": "model.onnx"},
    "encoder-decoder, merged decoder": {"encoder": "encoder_model.onnx", "decoder": "decoder_model_merged.onnx"},
    "encoder-decoder, decoder + decoder with past": {"encoder": "encoder_model.onnx", "first": "decoder_model.onnx",
                                                     "decoder": "decoder_with_past_model.onnx"},
}
OV_LAYOUTS = {
    "decoder-only": {"decoder": "openvino_model.xml"},
    "encoder-decoder, decoder + decoder with past": {"encoder": "openvino_encoder_model.xml",
                                                     "first": "openvino_decoder_model.xml",
                                                     "decoder": "openvino_decoder_with_past_model.xml"},
}
LAYOUTS = {"onnx": ONNX_LAYOUTS, "openvino": OV_LAYOUTS}
# What a decoder input that is not the KV cache is fed, by its name in optimum's exports.
STEP_INPUTS = {"input_ids": "ids", "attention_mask": "mask", "position_ids": "positions", "beam_idx": "beam",
               "encoder_hidden_states": "encoder_hidden", "encoder_attention_mask": "encoder_mask",
               "use_cache_branch": "cache_branch"}
_KV = re.compile(r"(past_key_values|present)\.(\d+)\.(?:(decoder|encoder)\.)?(key|value)")
FLOATS = {"float32": "fp32", "float16": "fp16"}


@dataclass(frozen=True)
class Port:
    name: str
    dtype: str  # numpy's name: int64, float32, bool
    rank: int | None


def supported_text(fmt: str) -> str:
    return "; ".join(f"{kind}: {' + '.join(files.values())}" for kind, files in LAYOUTS[fmt].items())


# ---- reading the graphs --------------------------------------------------------------------------

def onnx_ports(path: Path) -> tuple[list[Port], list[Port], int]:
    """Inputs and outputs of an ONNX graph (its weights stay on disk); no states."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for a file that is not a graph
        raise ArtifactError(f"{path} is not a readable ONNX graph ({type(exc).__name__})") from None

    def port(value) -> Port:
        t = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name if t.elem_type else "unknown"
        return Port(value.name, dtype, len(t.shape.dim) if t.HasField("shape") else None)

    initializers = {i.name for i in model.graph.initializer}
    inputs = [port(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [port(v) for v in model.graph.output], 0


def ov_ports(path: Path) -> tuple[list[Port], list[Port], int]:
    """Inputs, outputs and the number of states of an OpenVINO IR; its .bin must be beside it."""
    import openvino as ov

    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise ArtifactError(f"{path.name} has no {weights.name} beside it in {path.parent} (an IR is the .xml "
                            "and its .bin weights; copy both)")
    try:
        model = ov.Core().read_model(str(path), str(weights))
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:200]
        raise ArtifactError(f"OpenVINO cannot read {path.name} with {weights.name} ({first})") from None

    def port(p) -> Port:
        shape = p.get_partial_shape()
        names = p.get_names()
        name = sorted(names)[0] if names else ""
        return Port(name, np.dtype(p.get_element_type().to_dtype()).name, None if shape.rank.is_dynamic else
                    shape.rank.get_length())

    return [port(p) for p in model.inputs], [port(p) for p in model.outputs], len(model.get_variables())


def _found(folder: Path, fmt: str) -> str:
    ext = ".onnx" if fmt == "onnx" else ".xml"
    names = sorted(p.name for p in folder.iterdir() if p.suffix == ext)
    return ", ".join(names) if names else f"no {ext} file"


def _choose(folder: Path, fmt: str, cfg) -> tuple[str, dict]:
    """The first layout of the config's family (in LAYOUTS order) whose files are all in the folder."""
    family = cfg.family.value
    for kind, files in LAYOUTS[fmt].items():
        if kind.startswith(family) and all((folder / f).is_file() for f in files.values()):
            return kind, files
    raise ArtifactError(f"{folder}: found {_found(folder, fmt)} for a model that config.json says is {family}; "
                        f"supported {fmt} layouts (optimum exports): {supported_text(fmt)}")


# ---- recognising the layout ----------------------------------------------------------------------

def _kv(ports: list[Port], prefix: str) -> dict[tuple[int, str, str], Port]:
    """KV ports by (layer, "self" | "cross", "key" | "value")."""
    out = {}
    for p in ports:
        m = _KV.fullmatch(p.name)
        if m and m.group(1) == prefix:
            out[(int(m.group(2)), "cross" if m.group(3) == "encoder" else "self", m.group(4))] = p
    return out


def _refuse(folder: Path, file: str, cfg, why: str, fmt: str) -> None:
    raise ArtifactError(f"{folder / file}: {why}; supported {fmt} layouts (optimum exports): {supported_text(fmt)}")


def _decoder_graph(folder, fmt, file, cfg, inputs, outputs, states, role) -> dict:
    """One decoder graph's feeds and KV plumbing, checked against the config."""
    layers = cfg.decoder_layers
    past, present = _kv(inputs, "past_key_values"), _kv(outputs, "present")
    others = [p for p in inputs if p.name not in {q.name for q in past.values()}]
    unknown = [p.name for p in others if p.name not in STEP_INPUTS]
    if unknown:
        _refuse(folder, file, cfg, f"inputs {unknown} are not ones slmbench can feed (found inputs "
                f"{[p.name for p in inputs]})", fmt)
    names = {p.name for p in others}
    if "input_ids" not in names or "logits" not in {p.name for p in outputs}:
        _refuse(folder, file, cfg, f"found inputs {[p.name for p in inputs]} and outputs "
                f"{[p.name for p in outputs]}; a decoder graph takes input_ids and gives logits", fmt)
    logits = next(p for p in outputs if p.name == "logits")
    if logits.rank not in (None, 3):
        _refuse(folder, file, cfg, f"logits has rank {logits.rank}; expected [batch, sequence, vocab]", fmt)
    for ports, what in ((past, "past_key_values"), (present, "present")):
        for p in ports.values():
            if p.rank not in (None, 4):
                _refuse(folder, file, cfg, f"{p.name} has rank {p.rank}; expected [batch, heads, sequence, "
                        "head_dim]", fmt)
        seen = sorted({k[0] for k in ports})
        if ports and seen != list(range(layers)):
            _refuse(folder, file, cfg, f"{what} covers layers {seen}; config.json says {layers} decoder layers",
                    fmt)
    # [past input or None, present output]; the cache is keyed by the present name, which the first-step
    # and later-step graphs share, and a past input is fed the present of the same name
    self_kv = [[past[k].name if k in past else None, present[k].name]
               for k in sorted(present) if k[1] == "self"]
    cross_in = [[past[k].name, past[k].name.replace("past_key_values", "present", 1)]
                for k in sorted(past) if k[1] == "cross"]
    cross_out = [present[k].name for k in sorted(present) if k[1] == "cross"]
    graph = {"file": file, "role": role, "feeds": {p.name: STEP_INPUTS[p.name] for p in others},
             "self_kv": self_kv, "cross_in": cross_in, "cross_out": cross_out, "logits": "logits",
             "states": states, "inputs": [p.name for p in inputs], "outputs": [p.name for p in outputs]}
    if states:
        if past or present or states != 2 * layers:
            _refuse(folder, file, cfg, f"{states} states and {len(past)} past inputs; a stateful decoder keeps "
                    f"its KV cache as 2 x {layers} states and takes none as inputs", fmt)
    elif not self_kv or len(self_kv) != 2 * layers:
        _refuse(folder, file, cfg, f"found outputs {[p.name for p in outputs]}: no present.* KV cache for each "
                f"of the {layers} layers (export with a -with-past task)", fmt)
    if not cfg.is_encoder_decoder and {"encoder_hidden", "encoder_mask"} & set(graph["feeds"].values()):
        _refuse(folder, file, cfg, "a decoder-only config.json with an encoder-decoder graph", fmt)
    return graph


def read_layout(folder: Path, fmt: str, cfg) -> dict:
    """The folder's layout: graphs by role, each with what its inputs are fed. Raises ArtifactError
    (one line) naming what was found and what is supported."""
    kind, files = _choose(folder, fmt, cfg)
    read = onnx_ports if fmt == "onnx" else ov_ports
    graphs, dtypes = {}, set()
    for role, file in files.items():
        inputs, outputs, states = read(folder / file)
        if role == "encoder":
            names = sorted(p.name for p in inputs)
            if names != ["attention_mask", "input_ids"] or "last_hidden_state" not in {p.name for p in outputs}:
                _refuse(folder, file, cfg, f"found inputs {names}, outputs {[p.name for p in outputs]}; an encoder "
                        "takes input_ids and attention_mask and gives last_hidden_state", fmt)
            graphs[role] = {"file": file, "role": role, "inputs": names, "outputs": [p.name for p in outputs],
                            "hidden": "last_hidden_state"}
            continue
        graph = _decoder_graph(folder, fmt, file, cfg, inputs, outputs, states, role)
        if role == "first" and (graph["self_kv"] and any(p for p, _ in graph["self_kv"])):
            _refuse(folder, file, cfg, "the first-step decoder takes a past KV cache", fmt)
        if role == "decoder" and "first" in files and not graph["cross_in"]:
            _refuse(folder, file, cfg, "the decoder with past takes no past_key_values.*.encoder.* inputs", fmt)
        dtypes |= {p.dtype for p in outputs if p.name == "logits"}
        graphs[role] = graph
    if len(dtypes) != 1 or next(iter(dtypes)) not in FLOATS:
        raise ArtifactError(f"{folder}: logits of type {sorted(dtypes)}; supported: {', '.join(FLOATS)}")
    if fmt == "openvino" and not cfg.is_encoder_decoder:
        kind += ", stateful" if graphs["decoder"]["states"] else ", without states"
    return {"kind": kind, "format": fmt, "graphs": graphs, "precision": FLOATS[dtypes.pop()],
            "cross_kv": "first decoder step" if cfg.is_encoder_decoder else None}


# ---- what each step is fed ----------------------------------------------------------------------

def step_feeds(graph: dict, batch: int, past_len: int, new: int) -> dict[str, np.ndarray]:
    """The inputs of a decoder step other than the ids, the KV cache and the encoder's outputs: the
    attention mask (ones over past + new: no padding), the positions of the new tokens, the beam
    order (unchanged), and the merged decoder's branch flag. One rule for every runtime."""
    out = {}
    for name, role in graph["feeds"].items():
        if role == "mask":
            out[name] = np.ones((batch, past_len + new), np.int64)
        elif role == "positions":
            out[name] = np.broadcast_to(np.arange(past_len, past_len + new, dtype=np.int64), (batch, new)).copy()
        elif role == "beam":
            out[name] = np.arange(batch, dtype=np.int32)
        elif role == "cache_branch":
            out[name] = np.array([past_len > 0])
    return out


def step_graph(layout: dict, past_len: int) -> str:
    """The decoder graph that runs a step: the first-step graph where there is one, for the first step."""
    return "first" if past_len == 0 and "first" in layout["graphs"] else "decoder"


def last_token(logits: np.ndarray) -> np.ndarray:
    """Greedy: the arg-max of the last position's logits, [batch] int64."""
    return np.argmax(logits[:, -1, :], axis=-1).astype(np.int64)


def graph_bytes(folder: Path, layout: dict) -> int:
    """What the graphs that run hold on disk: each graph file, its IR .bin or ONNX external data."""
    total = 0
    for graph in layout["graphs"].values():
        file = graph["file"]
        for name in (file, Path(file).with_suffix(".bin").name if file.endswith(".xml") else None,
                     f"{Path(file).stem}.onnx_data", f"{file}.data", f"{file}_data"):
            if name and (folder / name).is_file():
                total += (folder / name).stat().st_size
    return total


# ---- the artifact -------------------------------------------------------------------------------

Steps = Callable[[Artifact], object]  # the runner's own session over the folder (start/encode/decode/logits)


def _check(spec, steps: Steps, precision: str) -> Callable:
    def check(_, out: Path, variant: dict) -> dict:
        folder = Path(spec.path)
        layout = read_layout(folder, spec.artifact_format, spec.config)
        if layout["precision"] != precision:
            raise InvalidOption(f"{spec.name} holds {layout['precision']} graphs; run it with --precision "
                                f"{layout['precision']}")
        cfg = spec.config
        manifest = {"graphs": layout["graphs"], "layout": layout, "precision": precision,
                    "kv": {"layers": cfg.decoder_layers, "kv_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
                           "seq_axis": 2, "layout": ["batch", "kv_heads", "seq", "head_dim"]},
                    "exporter": f"none: the user's own {layout['kind']} export, read in place",
                    "source_files": spec.files, "weight_bytes": graph_bytes(folder, layout),
                    "parity_status": "unchecked", "parity": None,
                    "precision_recipe": {"precision": precision, "format": spec.artifact_format,
                                         "tool": "the user's own export", "weights": "as exported",
                                         "note": f"{precision} read from the graphs' logits type"}}
        if spec.has_weights:
            artifact = Artifact(folder, {**manifest, "variant": variant, "family": cfg.family.value})
            session = steps(artifact)
            model = spec.build()
            runtime = {"onnx": "onnxruntime", "openvino": "openvino"}[spec.artifact_format]
            result = parity.check(model, cfg, lambda p, f, _image: parity.teacher_forced(session, cfg, p, f),
                                  runtime)
            manifest.update(parity=result, parity_status="ok")
        return manifest

    return check


def byo_artifact(spec, precision: str, steps: Steps, cache_dir=None, force: bool = False,
                 mode: str | None = None) -> tuple[Artifact, bool]:
    """The user's folder as an Artifact with a checked layout (and parity, where it holds weights).
    Returns (artifact, reused); the artifact's path is the user's folder, untouched. `mode`: the
    OpenVINO mode that runs it, recorded in the variant as for our own IRs."""
    if precision not in FLOATS.values():
        raise InvalidOption(f"{spec.name} is run as exported; --precision {precision} would need a new export "
                            f"(quantize it yourself); give the graphs' own precision ({', '.join(FLOATS.values())})")
    variant = {"precision": precision, "byo": spec.artifact_format, **({"mode": mode} if mode else {})}
    record, reused = ensure_artifact(spec, f"byo-{spec.artifact_format}", variant, _check(spec, steps, precision),
                                     code_digest(__file__, parity.__file__), cache_dir, force)
    folder = Path(spec.path)
    for name, info in record.manifest["source_files"].items():  # the spec hashed them just now
        if spec.files.get(name, {}).get("sha256") != info["sha256"]:
            raise ArtifactError(f"{folder / name} changed while it was being checked; run again")
    manifest = {**record.manifest, "format": spec.artifact_format, "record": str(record.path)}
    return Artifact(folder, manifest), reused
