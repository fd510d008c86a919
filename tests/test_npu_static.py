"""The NPU paths, tested on CPU: `static` mode (static graphs, padded prompts, KV rows written into
preallocated buffers) against PyTorch for prompt lengths 1..P, and `npuw` mode (the NPU plugin's
own LLM pipeline): its configuration, its by-name i64 feeding, its IR layout, and the pipeline
itself run by the real NPU plugin with CPU sub-devices (NPUW_DEVICES=CPU), which needs no chip."""

from __future__ import annotations

import numpy as np
import pytest

from slmbench.core.measure import generate
from slmbench.errors import InvalidOption
from slmbench.exporters import parity
from slmbench.exporters.artifact import ArtifactError
from slmbench.exporters.openvino import compile_exact
from slmbench.exporters.static import static_parity
from slmbench.models import resolve_model
from slmbench.runners.openvino import OpenVinoRunner, openvino_artifact
from slmbench.runners.openvino import npuw as npuw_runtime
from slmbench.runners.openvino import runner as ovr
from slmbench.runners.openvino.modes import Static
from slmbench.runners.openvino.npuw import NpuwSession, npuw_capacity, npuw_config, npuw_inputs
from slmbench.runners.openvino.static import StaticSession

ov = pytest.importorskip("openvino")
P, R = 8, 4
FAMILIES = ("mu-tiny", "deconly-tiny")
VISION = ("mu-vl-tiny", "deconly-vl-tiny")


@pytest.fixture(scope="module")
def static(cache_dir):
    return {
        name: openvino_artifact(
            resolve_model(name), mode="static", cache_dir=cache_dir, prompt_len=P, response_len=R
        )[0]
        for name in (*FAMILIES, *VISION)
    }


@pytest.fixture(scope="module")
def npuw_ir(cache_dir):
    return openvino_artifact(resolve_model("deconly-tiny"), mode="npuw", cache_dir=cache_dir)[0]


def _session(art, compiled=None):
    graphs = art.manifest["graphs"]
    compiled = compiled or {role: compile_exact(art.graph_path(role)) for role in graphs}
    return StaticSession(
        compiled, graphs, art.manifest["static"], art.manifest["kv"], art.family == "encoder-decoder"
    )


@pytest.mark.parametrize("name", FAMILIES)
def test_static_graphs_are_static(static, name):
    art = static[name]
    c = art.manifest["static"]["kv_capacity"]
    assert art.manifest["static"] == {"prompt_len": P, "response_len": R, "kv_capacity": c}
    assert c == (R if name == "mu-tiny" else P + R - 1)
    core = ov.Core()
    for role in art.manifest["graphs"]:
        model = core.read_model(str(art.graph_path(role)))
        assert all(p.get_partial_shape().is_static for p in model.inputs), role
    dec = core.read_model(str(art.graph_path("decoder")))
    cfg = resolve_model(name).config
    assert list(dec.input("past_key.0").get_shape()) == [1, cfg.kv_heads, c, cfg.head_dim]
    assert list(dec.input("attention_mask").get_shape()) == [1, c + 1]
    assert list(dec.output("new_key.0").get_shape()) == [1, cfg.kv_heads, 1, cfg.head_dim]  # only the new row
    first = core.read_model(str(art.graph_path("encoder" if name == "mu-tiny" else "prefill")))
    assert list(first.input("input_ids").get_shape()) == [1, P]


@pytest.mark.parametrize("name", FAMILIES)
def test_static_parity_every_prompt_length(static, name):
    """Left padding to P must change no logit: lengths 1..P against the unpadded PyTorch model."""
    art, spec = static[name], resolve_model(name)
    assert art.manifest["parity"]["passed"] and set(art.manifest["parity"]["lengths"]) == {"1", "4", "8"}
    graphs = art.manifest["graphs"]
    result = static_parity(
        spec.build(), spec.config, art.path, graphs, art.manifest["static"], lengths=[1, 2, 3, 5, 7, 8],
        session=Static.session,
    )
    assert result["passed"] and set(result["lengths"]) == {"1", "2", "3", "5", "7", "8"}
    assert max(result["lengths"].values()) <= parity.FP32_TOLERANCE


def test_padding_would_matter_without_the_mask(static):
    """Control: the same prompt with its padding made real tokens gives different logits, so the
    parity above is sensitive to what the mask hides."""
    spec = resolve_model("deconly-tiny")
    model, cfg = spec.build(), spec.config
    prompt, forced = parity.parity_inputs(cfg.vocab_size, batch=1, prompt=3, steps=2, seed=5)
    padded = np.concatenate([np.zeros((1, P - 3), np.int64), prompt], 1)
    a = parity.torch_step_logits(model, cfg, prompt, forced)
    b = parity.torch_step_logits(model, cfg, padded, forced)
    assert max(np.abs(x - y).max() for x, y in zip(a, b, strict=True)) > 100 * parity.FP32_TOLERANCE


def test_kv_rows_land_in_the_bound_buffers(static):
    """The decode request reads the harness's own buffers (bound once, shared memory); each step
    writes one row into the next slot and sets its mask bit."""
    art = static["deconly-tiny"]
    session = _session(art)
    ids = np.arange(1, 4, dtype=np.int64)[None]
    session.start(ids, R)
    buffers = {name: buf for name, buf in session.past.items()}
    session.decode(ids)
    assert session.mask[0, :P].tolist() == [0] * (P - 3) + [1] * 3 and session.slot == P
    for _ in range(R - 1):
        session.decode(np.array([[7]], np.int64))
    c = art.manifest["static"]["kv_capacity"]
    assert session.mask[0, P:].tolist() == [1] * (R - 1) + [0] * (c - P - R + 1) + [1]
    for name, buf in session.past.items():
        assert buf is buffers[name] and np.shares_memory(session.dec.get_tensor(name).data, buf)
        assert np.abs(buf[0, :, P : P + R - 1]).sum() > 0  # the new rows were written
    with pytest.raises(InvalidOption, match="capacity"):
        session.decode(np.array([[7]], np.int64))


def test_static_session_limits(static):
    session = _session(static["deconly-tiny"])
    with pytest.raises(InvalidOption, match="exceeds the static prompt length"):
        session.start(np.ones((1, P + 1), np.int64), 2)
    with pytest.raises(InvalidOption, match="batch 1"):
        session.start(np.ones((2, 4), np.int64), 2)
    with pytest.raises(InvalidOption, match="response length"):
        session.start(np.ones((1, 4), np.int64), R + 1)


@pytest.mark.parametrize("name", FAMILIES)
def test_static_runner_tokens_match_stateful(static, cache_dir, name):
    spec = resolve_model(name)
    ids = np.random.default_rng(11).integers(1, spec.config.vocab_size, size=(1, 6), dtype=np.int64)
    tokens = {}
    for mode in ("static", "stateful"):
        runner = OpenVinoRunner(
            "cpu",
            1,
            {"mode": mode, "max_prompt_len": P, "min_response_len": R}
            if mode == "static"
            else {"mode": mode},
        )
        info = runner.load(runner.prepare(spec, "fp32", cache_dir)[0])
        assert info.options["mode"] == mode and info.device_executed == "CPU"
        tokens[mode] = generate(runner, ids, R, spec.config.is_encoder_decoder, 0)[1]
    assert np.array_equal(tokens["static"], tokens["stateful"])
    assert info.options["kv_cache_precision"] == "f32"


def test_static_graphs_through_the_npu_plugin_on_cpu(static):
    """The NPU plugin (NPUW partitioner, CPU sub-devices) accepts the static graphs; fp16-level
    agreement with PyTorch, and finite logits with padded prompts."""
    art, spec = static["mu-tiny"], resolve_model("mu-tiny")
    core = ov.Core()
    core.set_property("CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    compiled = {
        role: core.compile_model(
            str(art.graph_path(role)), "NPU", {"NPU_USE_NPUW": "YES", "NPUW_DEVICES": "CPU"}
        )
        for role in art.manifest["graphs"]
    }
    session = _session(art, compiled)
    model = spec.build()
    for n in (1, 5, P):
        prompt, forced = parity.parity_inputs(spec.config.vocab_size, batch=1, prompt=n, steps=R - 1, seed=n)
        got = parity.teacher_forced(session, spec.config, prompt, forced)
        result = parity.compare(
            parity.torch_step_logits(model, spec.config, prompt, forced), got, 5e-3, "npuw"
        )
        assert all(np.isfinite(x).all() for x in got) and result["passed"], result["per_step_max_abs_diff"]


# ---- npuw ----


def test_npuw_config():
    assert npuw_config(256, 64) == {
        "NPU_USE_NPUW": "YES",
        "NPUW_LLM": "YES",
        "NPUW_LLM_BATCH_DIM": "0",
        "NPUW_LLM_SEQ_LEN_DIM": "2",
        "NPUW_LLM_MAX_PROMPT_LEN": "256",
        "NPUW_LLM_MIN_RESPONSE_LEN": "64",
    }
    assert npuw_config(100, 10, "static")["NPUW_LLM_PREFILL_HINT"] == "STATIC"
    with pytest.raises(InvalidOption, match="prefill hint"):
        npuw_config(100, 10, "chunky")
    with pytest.raises(InvalidOption, match="positive"):
        npuw_config(0, 10)
    assert npuw_capacity(256, 64) == 320 and npuw_capacity(100, 10) == 128 + 64


TYPES = {"input_ids": np.int64, "attention_mask": np.int64, "position_ids": np.int64, "beam_idx": np.int32}


def test_npuw_feeding_by_name():
    feed = npuw_inputs(TYPES, np.array([[5, 6, 7]]), 0)
    assert set(feed) == set(TYPES)
    assert feed["attention_mask"].tolist() == [[1, 1, 1]] and feed["position_ids"].tolist() == [[0, 1, 2]]
    assert all(feed[n].dtype == np.int64 for n in ("input_ids", "attention_mask", "position_ids"))
    assert feed["beam_idx"].dtype == np.int32 and feed["beam_idx"].tolist() == [0]
    step = npuw_inputs(TYPES, np.array([[9]]), 3)
    assert step["attention_mask"].shape == (1, 4) and step["position_ids"].tolist() == [[3]]
    no_beam = {k: v for k, v in TYPES.items() if k != "beam_idx"}
    assert "beam_idx" not in npuw_inputs(no_beam, np.array([[1, 2]]), 0)
    with pytest.raises(ArtifactError, match="needs i64"):
        npuw_inputs({**TYPES, "position_ids": np.int32}, np.array([[1, 2]]), 0)
    with pytest.raises(ArtifactError, match="no position_ids"):
        npuw_inputs({"input_ids": np.int64, "attention_mask": np.int64}, np.array([[1, 2]]), 0)
    with pytest.raises(ArtifactError, match="token_type_ids"):
        npuw_inputs({**TYPES, "token_type_ids": np.int64}, np.array([[1, 2]]), 0)


def test_npuw_ir_layout(npuw_ir):
    """The names the NPU plugin matches on: after its stateful-to-stateless pass the KV inputs are
    past_key_values.* and the outputs present.*; beam_idx exists (that pass requires it)."""
    from openvino._offline_transformations import stateful_to_stateless_transformation

    assert npuw_ir.manifest["parity"]["passed"]
    model = ov.Core().read_model(str(npuw_ir.graph_path("decoder")))
    assert [next(iter(p.get_names())) for p in model.inputs] == [
        "input_ids",
        "attention_mask",
        "position_ids",
        "beam_idx",
    ]
    assert [p.get_names() for p in model.outputs] == [{"logits"}]
    stateless = model.clone()
    stateful_to_stateless_transformation(stateless)
    names = {n for p in stateless.inputs for n in p.get_names()}
    layers = resolve_model("deconly-tiny").config.decoder_layers
    assert {f"past_key_values.{i}.{k}" for i in range(layers) for k in ("key", "value")} <= names
    assert {f"present.{i}.key" for i in range(layers)} <= {
        n for p in stateless.outputs for n in p.get_names()
    }


def test_npuw_feeding_on_cpu_matches_pytorch(npuw_ir):
    spec = resolve_model("deconly-tiny")
    session = NpuwSession(
        compile_exact(npuw_ir.graph_path("decoder")),
        npuw_ir.manifest["kv"],
        npuw_ir.manifest["graphs"]["decoder"]["inputs"],
    )
    prompt, forced = parity.parity_inputs(spec.config.vocab_size, batch=2, prompt=6, steps=3, seed=2)
    result = parity.compare(
        parity.torch_step_logits(spec.build(), spec.config, prompt, forced),
        parity.teacher_forced(session, spec.config, prompt, forced),
        parity.FP32_TOLERANCE,
        "ov",
    )
    assert result["passed"]


def _npuw_on_cpu(monkeypatch):
    """The NPU plugin's LLM pipeline with CPU sub-devices: real NPUW code, no chip."""
    real = npuw_runtime.npuw_config
    monkeypatch.setattr(npuw_runtime, "npuw_config", lambda *a, **k: {**real(*a, **k), "NPUW_DEVICES": "CPU"})
    monkeypatch.setattr(ovr, "_availability", lambda device: ovr.Availability(True))


def test_npuw_pipeline_matches_pytorch(npuw_ir):
    """Through `compile_model(ir, "NPU", npuw_config(...))`: prompts of 2, 7 and P tokens, padded
    by the pipeline to align64(P); fp16-level agreement (finite: fully masked rows stay finite)."""
    spec = resolve_model("deconly-tiny")
    core = ov.Core()
    core.set_property("CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    compiled = core.compile_model(
        str(npuw_ir.graph_path("decoder")), "NPU", {**npuw_config(16, 8), "NPUW_DEVICES": "CPU"}
    )
    session = NpuwSession(compiled, npuw_ir.manifest["kv"], npuw_ir.manifest["graphs"]["decoder"]["inputs"])
    model = spec.build()
    for n in (2, 7, 16):
        prompt, forced = parity.parity_inputs(spec.config.vocab_size, batch=1, prompt=n, steps=5, seed=n)
        result = parity.compare(
            parity.torch_step_logits(model, spec.config, prompt, forced),
            parity.teacher_forced(session, spec.config, prompt, forced),
            5e-3,
            "npuw",
        )
        assert result["passed"] and result["token_agreement"] == 1.0, result["per_step_max_abs_diff"]


def test_npuw_runner(monkeypatch, cache_dir):
    _npuw_on_cpu(monkeypatch)
    spec = resolve_model("deconly-tiny")
    runner = OpenVinoRunner("npu", options={"mode": "npuw", "max_prompt_len": 16, "min_response_len": 8})
    info = runner.load(runner.prepare(spec, "fp32", cache_dir)[0])
    assert info.device_executed == "NPU" and info.options["mode"] == "npuw"
    assert info.options["config"]["NPUW_LLM_MAX_PROMPT_LEN"] == "16"
    assert info.options["kv_cache_precision"] == "f16 (NPUW default)"
    ids = np.arange(1, 11, dtype=np.int64)[None]
    rep, tokens = generate(runner, ids, 8, False, 0)
    assert tokens.shape == (1, 8) and rep.tokens == 8
    with pytest.raises(InvalidOption, match="at least 2 tokens"):
        runner.start(ids[:, :1], 4)
    with pytest.raises(InvalidOption, match="KV capacity"):
        runner.start(np.ones((1, 16), np.int64), 200)


def test_padded_rows_stay_finite_at_low_precision(static, npuw_ir):
    """Regression guard: without each query seeing its own slot, a padded query has every key
    masked; through the NPU plugin at reduced precision (bf16 sub-devices here) that row's softmax
    was NaN and the NaN reached every logit. Both NPU modes, decoder-only (left-padded prompt)."""
    spec = resolve_model("deconly-tiny")
    core = ov.Core()
    core.set_property("CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    art = static["deconly-tiny"]
    compiled = {
        role: core.compile_model(
            str(art.graph_path(role)), "NPU", {"NPU_USE_NPUW": "YES", "NPUW_DEVICES": "CPU"}
        )
        for role in art.manifest["graphs"]
    }
    npuw = core.compile_model(
        str(npuw_ir.graph_path("decoder")), "NPU", {**npuw_config(16, 8), "NPUW_DEVICES": "CPU"}
    )
    sessions = [
        _session(art, compiled),
        NpuwSession(npuw, npuw_ir.manifest["kv"], npuw_ir.manifest["graphs"]["decoder"]["inputs"]),
    ]
    model = spec.build()
    prompt, forced = parity.parity_inputs(spec.config.vocab_size, batch=1, prompt=3, steps=3, seed=3)
    reference = parity.torch_step_logits(model, spec.config, prompt, forced)
    for session in sessions:
        got = parity.teacher_forced(session, spec.config, prompt, forced)
        assert all(np.isfinite(x).all() for x in got)
        assert parity.compare(reference, got, 3e-2, "bf16")["passed"]


# ---- static with an image (vision models) ----


@pytest.mark.parametrize("name", VISION)
def test_static_vision_graphs_record_the_image_and_pass_parity(static, name):
    """The tower is a static graph of its own, checked on its own (1e-4); the first graph's
    sequence and the decoder-only KV capacity count the I image tokens; logits with the image
    match the unpadded PyTorch model for prompt lengths 1..P."""
    art, spec = static[name], resolve_model(name)
    cfg, i = spec.config, spec.image_tokens
    c = R if cfg.is_encoder_decoder else i + P + R - 1
    assert art.manifest["static"] == {"prompt_len": P, "response_len": R, "kv_capacity": c, "image_tokens": i}
    assert art.manifest["variant"]["image_size"] == spec.image and art.manifest["vision"]["image_tokens"] == i
    vision = art.manifest["parity"]["vision"]
    assert vision["passed"] and vision["max_abs_diff"] <= parity.FP32_TOLERANCE and vision["image_size"] == spec.image
    core = ov.Core()
    tower = core.read_model(str(art.graph_path("vision")))
    assert list(tower.input("pixel_values").get_shape()) == [1, 3, spec.image, spec.image]
    assert list(tower.output("image_embeds").get_shape()) == [1, i, cfg.hidden]
    first = core.read_model(str(art.graph_path("encoder" if cfg.is_encoder_decoder else "prefill")))
    assert list(first.input("image_embeds").get_shape()) == [1, i, cfg.hidden]
    assert list(first.input("attention_mask").get_shape()) == [1, i + P]
    dec = core.read_model(str(art.graph_path("decoder")))
    assert list(dec.input("past_key.0").get_shape()) == [1, cfg.kv_heads, c, cfg.head_dim]
    if cfg.is_encoder_decoder:  # the cross-attention K/V cover the image and the padded prompt
        assert list(dec.input("cross_key.0").get_shape()) == [1, cfg.kv_heads, i + P, cfg.head_dim]
    result = static_parity(spec.build(), cfg, art.path, art.manifest["graphs"], art.manifest["static"],
                           lengths=[1, 2, 3, 5, 7, 8], session=Static.session)
    assert result["passed"] and max(result["lengths"].values()) <= parity.FP32_TOLERANCE
    assert result["vision"]["max_abs_diff"] <= parity.FP32_TOLERANCE


@pytest.mark.parametrize("name", VISION)
def test_static_two_images_give_different_logits_each_as_pytorch(static, name):
    """The image reaches the language graphs: two images differ, and each matches PyTorch with the
    same image; without an image (the runner's priming request) the image slots are masked and
    the graphs match the text-only PyTorch model."""
    from slmbench.models.vision import fixed_image

    art, spec = static[name], resolve_model(name)
    model, cfg = spec.build(), spec.config
    session = _session(art)
    prompt, forced = parity.parity_inputs(cfg.vocab_size, batch=1, prompt=5, steps=R - 1, seed=9)
    logits = []
    for pixels in (fixed_image(1, spec.image, seed=0) * 50, fixed_image(1, spec.image, seed=1) * 50, None):
        got = parity.teacher_forced(session, cfg, prompt, forced, pixels)
        reference = parity.torch_step_logits(model, cfg, prompt, forced, pixels)
        assert parity.compare(reference, got, parity.FP32_TOLERANCE, "static")["passed"]
        logits.append(got)
    assert np.max(np.abs(logits[0][0] - logits[1][0])) > 1e-3
    with pytest.raises(InvalidOption, match="takes pixels"):
        session.encode_image(fixed_image(1, spec.image + 8))


def test_static_text_graphs_take_no_image(static):
    from slmbench.models.vision import fixed_image

    session = _session(static["mu-tiny"])
    session.start(np.ones((1, 3), np.int64), 2)
    with pytest.raises(InvalidOption, match="take no image"):
        session.encode_image(fixed_image(1, 32))


def test_static_vision_cli_run_times_the_tower(tmp_path):
    """`slmbench run --ov-mode static` on CPU with the tiny vision pair: rows in mode static with
    the tower timed apart (vision_s > 0) and the static shapes counting the image."""
    import json

    from click.testing import CliRunner

    from slmbench.cli import cli

    results = tmp_path / "rows.jsonl"
    args = ["run", "-m", "mu-vl-tiny", "-m", "deconly-vl-tiny", "-r", "openvino", "-d", "cpu", "--ov-mode", "static",
            "-i", "8", "-o", "4", "--warmup", "1", "--min-reps", "3", "--min-time", "0", "--results", str(results)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["model"] for r in rows) == sorted(VISION)
    for row in rows:
        assert row["status"] == "ok" and row["runtime_options"]["mode"] == "static"
        assert row["runtime_options"]["static"]["image_tokens"] == 16 and row["vision"]["image_tokens"] == 16
        assert row["metrics"]["vision_s"]["median"] > 0 and row["metrics"]["prefill_s"]["median"] > 0
