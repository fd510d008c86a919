"""Hugging Face checkpoints (`hf:PATH`): a tiny random model of every supported type, written by
save_pretrained, resolved, checked against its own forward, exported to ONNX and OpenVINO (stateful)
with parity, and run through ONNX Runtime, OpenVINO and the eager torch runner; plus hashing,
sharded and pickled weights, trust_remote_code, and every one-line error."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

from slmbench.cli import cli  # noqa: E402
from slmbench.exporters.onnx import io_names, onnx_artifact  # noqa: E402
from slmbench.exporters.parity import ParityError  # noqa: E402
from slmbench.models import resolve_model  # noqa: E402
from slmbench.models.hf import SUPPORTED, TRUST_ENV, CheckpointError, HFModelSpec  # noqa: E402

_DEC = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
            pad_token_id=0, bos_token_id=1, eos_token_id=2)
_T5 = dict(vocab_size=1000, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4)


def _t5gemma():
    module = {k: v for k, v in _DEC.items() if not k.endswith("token_id")}
    module["sliding_window"] = 4  # shorter than the parity prompt: the sliding mask is exercised
    return transformers.T5GemmaForConditionalGeneration(transformers.T5GemmaConfig(
        encoder=dict(module), decoder=dict(module), vocab_size=1000, pad_token_id=0, bos_token_id=2,
        eos_token_id=1))


# One tiny model per supported model_type: hidden 64, 2 layers, vocabulary 1000.
FACTORY = {
    # flan-t5 style: gated GELU, untied head (no output scaling)
    "t5": lambda: transformers.T5ForConditionalGeneration(
        transformers.T5Config(feed_forward_proj="gated-gelu", tie_word_embeddings=False, **_T5)),
    "mt5": lambda: transformers.MT5ForConditionalGeneration(transformers.MT5Config(**_T5)),
    "bart": lambda: transformers.BartForConditionalGeneration(transformers.BartConfig(
        vocab_size=1000, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=256)),
    "t5gemma": _t5gemma,
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**_DEC)),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**_DEC)),
    "qwen3": lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**_DEC)),
    "mistral": lambda: transformers.MistralForCausalLM(transformers.MistralConfig(sliding_window=4, **_DEC)),
    "gemma": lambda: transformers.GemmaForCausalLM(transformers.GemmaConfig(**_DEC)),
    "phi3": lambda: transformers.Phi3ForCausalLM(transformers.Phi3Config(**_DEC)),
}


def _save(kind, folder, seed=0):
    torch.manual_seed(seed)
    FACTORY[kind]().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """kind -> folder of a saved tiny checkpoint, written once per module on first use."""
    root, made = tmp_path_factory.mktemp("hf"), {}

    def get(kind):
        if kind not in made:
            made[kind] = _save(kind, root / kind)
        return made[kind]

    return get


@pytest.fixture(scope="module")
def built(checkpoint):
    """kind -> (spec, adapter); building runs the adapter's check against the model's own forward."""
    made = {}

    def get(kind):
        if kind not in made:
            spec = resolve_model(f"hf:{checkpoint(kind)}")
            made[kind] = (spec, spec.build())
        return made[kind]

    return get


def test_every_supported_type_is_tested():
    assert set(FACTORY) == set(SUPPORTED)


@pytest.mark.parametrize("kind", sorted(SUPPORTED))
def test_resolve_describes_the_checkpoint(built, checkpoint, kind):
    spec, adapter = built(kind)
    hf_config = adapter.hf.config
    assert isinstance(spec, HFModelSpec) and spec.model_type == kind
    assert spec.source == f"hf:{checkpoint(kind).resolve()}"
    assert spec.family is SUPPORTED[kind] and spec.config.is_encoder_decoder == hf_config.is_encoder_decoder
    assert spec.config.vocab_size == 1000 and spec.config.decoder_layers == 2 and spec.config.hidden == 64
    assert spec.config.encoder_layers == (2 if spec.config.is_encoder_decoder else 0)
    assert spec.config.head_dim == 16
    assert spec.config.kv_heads == (4 if kind in ("t5", "mt5", "bart") else 2)
    # counted on the meta device at resolve time == the loaded model's unique parameters
    assert spec.parameters == sum(p.numel() for p in adapter.hf.parameters())
    # what generate() would start the decoder with (T5: pad 0, BART: eos 2, T5Gemma: bos 2)
    assert spec.config.decoder_start_token == {"t5": 0, "mt5": 0, "bart": 2, "t5gemma": 2}.get(kind, 0)
    assert spec.describe()["model_type"] == kind


@pytest.mark.parametrize("kind", sorted(SUPPORTED))
def test_cached_steps_match_the_models_own_forward(built, kind):
    """The adapter's explicit-KV steps reproduce the model's uncached forward logits."""
    _, adapter = built(kind)
    result = adapter.reference_parity
    assert result["passed"] and result["max_abs_diff"] <= 1e-4 and result["steps"] == 5
    assert not adapter.training and not adapter.hf.training


@pytest.mark.parametrize("kind", sorted(SUPPORTED))
def test_export_parity_and_run(built, cache_dir, kind):
    from slmbench.config import RunSettings, plan
    from slmbench.core.benchmark import run_benchmark

    spec, _ = built(kind)
    artifact, _ = onnx_artifact(spec, cache_dir=cache_dir)
    m = artifact.manifest
    assert m["parity"]["passed"] and m["parity"]["max_abs_diff"] <= 1e-4
    assert m["source"] == spec.source and m["spec_hash"] == spec.content_hash()
    assert m["graphs"] == io_names(spec.config)
    for role, graph in m["graphs"].items():
        model = onnx.load(artifact.graph_path(role), load_external_data=False)
        assert [i.name for i in model.graph.input] == graph["inputs"]
        assert [o.name for o in model.graph.output] == graph["outputs"]
    settings = RunSettings(input_len=8, output_len=4, warmup=0, min_reps=1, min_time_s=0.0)
    (row,) = run_benchmark(plan([spec.name], "cpu", ["onnxruntime"], "fp32", settings, threads=1),
                           cache_dir=cache_dir, log=lambda msg: None, specs=[spec])
    assert row["model"] == spec.name and row["family"] == spec.family.value
    assert row["artifact"]["reused"] and row["artifact"]["spec_hash"] == spec.content_hash()
    assert row["tokens_generated"] == 4 and row["metrics"]["ttft_s"]["median"] > 0
    if spec.config.is_encoder_decoder:
        assert row["metrics"]["encoder_s"]["median"] > 0


@pytest.mark.parametrize("kind", sorted(SUPPORTED))
def test_openvino_stateful_parity_and_run(built, cache_dir, kind):
    """The OpenVINO IR is made from the same ONNX artifact, stateful, with its own parity check."""
    pytest.importorskip("openvino")
    from slmbench.config import RunSettings, plan
    from slmbench.core.benchmark import run_benchmark
    from slmbench.runners.openvino import openvino_artifact

    spec, _ = built(kind)
    artifact, _ = openvino_artifact(spec, cache_dir=cache_dir)
    m = artifact.manifest
    assert m["format"] == "openvino" and m["variant"]["mode"] == "stateful"
    assert m["parity"]["passed"] and m["parity"]["max_abs_diff"] <= 1e-4
    assert m["spec_hash"] == spec.content_hash()
    settings = RunSettings(input_len=8, output_len=4, warmup=0, min_reps=1, min_time_s=0.0)
    (row,) = run_benchmark(plan([spec.name], "cpu", ["openvino"], "fp32", settings, threads=1),
                           cache_dir=cache_dir, log=lambda msg: None, specs=[spec])
    assert row["runtime"] == "openvino" and row["device_executed"].upper().startswith("CPU")
    assert row["artifact"]["reused"] and row["tokens_generated"] == 4
    assert row["metrics"]["ttft_s"]["median"] > 0


@pytest.mark.parametrize("kind", sorted(SUPPORTED))
def test_torch_runner_fills_a_preallocated_cache(built, kind):
    """The eager torch runner (the CUDA path) writes K/V in place (cache_len) and matches the model."""
    from slmbench.exporters.parity import FP32_TOLERANCE, compare, parity_inputs
    from slmbench.runners import RUNNERS

    spec, adapter = built(kind)
    prompt, forced = parity_inputs(spec.config.vocab_size)
    with torch.no_grad():
        reference = [t.numpy() for t in adapter.full_forward_logits(torch.from_numpy(prompt),
                                                                   torch.from_numpy(forced))]
    runner = RUNNERS["torch"]("cpu")
    artifact, _ = runner.prepare(spec, "fp32")
    runner.load(artifact)
    runner.start(prompt, forced.shape[1] + 1)
    if spec.config.is_encoder_decoder:
        runner.encode(prompt)
        tokens = np.full((prompt.shape[0], 1), spec.config.decoder_start_token, np.int64)
    else:
        tokens = prompt
    steps = []
    for i in range(forced.shape[1] + 1):
        steps.append(runner.step_logits(tokens))
        tokens = forced[:, i:i + 1]
    buffer = runner._kv[0][0]
    assert buffer.shape[2] == runner._capacity and runner._len == tokens_total(prompt, forced, spec)
    runner.close()
    assert compare(reference, steps, FP32_TOLERANCE, "torch runner")["passed"]


def tokens_total(prompt, forced, spec):
    return (1 if spec.config.is_encoder_decoder else prompt.shape[1]) + forced.shape[1]


@pytest.mark.parametrize("mode", ["static", "npuw"])
def test_modes_needing_our_own_layers_refuse_in_one_line(built, tmp_path, mode):
    pytest.importorskip("openvino")
    from slmbench.errors import BenchError
    from slmbench.runners.openvino import openvino_artifact

    spec, _ = built("qwen2")
    with pytest.raises(BenchError) as info:
        openvino_artifact(spec, mode=mode, cache_dir=tmp_path, prompt_len=8, response_len=4)
    assert "\n" not in str(info.value) and "hf:" in str(info.value)
    assert not list(tmp_path.iterdir())  # nothing half-written is left behind


def test_reference_check_catches_a_broken_cache(built):
    from slmbench.models.hf_wrappers import check_against_forward

    _, adapter = built("llama")
    real = adapter.forward
    adapter.forward = lambda ids, past, **kw: real(ids, adapter.empty_past(ids.shape[0]))  # forgets the past
    try:
        with pytest.raises(ParityError, match="own forward"):
            check_against_forward(adapter)
    finally:
        del adapter.forward


def test_reference_check_catches_wrong_cross_kv(built):
    from slmbench.models.hf_wrappers import check_against_forward

    _, adapter = built("t5")
    real = adapter.cross_kv
    adapter.cross_kv = lambda hidden: [(v, k) for k, v in real(hidden)]  # keys and values swapped
    try:
        with pytest.raises(ParityError):
            check_against_forward(adapter)
    finally:
        del adapter.cross_kv


def test_content_hash_covers_weights_and_config(checkpoint, tmp_path):
    folder = shutil.copytree(checkpoint("llama"), tmp_path / "llama")
    first = resolve_model(f"hf:{folder}")
    assert resolve_model(f"hf:{folder}").content_hash() == first.content_hash()
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        digest.update(f"{name}:{hashlib.sha256((folder / name).read_bytes()).hexdigest()}\n".encode())
    assert first.checkpoint_sha256 == digest.hexdigest()

    _save("llama", folder, seed=1)  # same shapes and config, other weights
    second = resolve_model(f"hf:{folder}")
    assert second.config == first.config and second.content_hash() != first.content_hash()

    config = json.loads((folder / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (folder / "config.json").write_text(json.dumps(config))
    assert resolve_model(f"hf:{folder}").content_hash() != second.content_hash()


def test_sharded_checkpoint_hashes_every_shard(checkpoint, tmp_path):
    folder = tmp_path / "sharded"
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint("llama"))
    model.save_pretrained(folder, max_shard_size="200KB")
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1 and (folder / "model.safetensors.index.json").is_file()
    spec = resolve_model(f"hf:{folder}")
    assert spec.parameters == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        adapter = spec.build()  # loads every shard and passes its check against its own forward
    assert adapter.reference_parity["passed"]
    data = bytearray(shards[-1].read_bytes())
    data[-1] ^= 1  # one bit in the last shard's last weight
    shards[-1].write_bytes(bytes(data))
    assert resolve_model(f"hf:{folder}").content_hash() != spec.content_hash()
    shards[-1].unlink()
    with pytest.raises(CheckpointError, match="missing"):
        resolve_model(f"hf:{folder}")


def test_pickled_weights_load_only_with_weights_only(checkpoint, tmp_path, monkeypatch):
    """Only pytorch_model.bin: loaded through torch.load(weights_only=True), never plain pickle."""
    import transformers as tf

    folder = tmp_path / "bin"
    model = tf.AutoModelForCausalLM.from_pretrained(checkpoint("qwen2"))
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    spec = resolve_model(f"hf:{folder}")
    assert spec.weights_format == "bin" and spec.parameters == sum(p.numel() for p in model.parameters())
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    adapter = spec.build()
    assert calls and all(w is True for w in calls)
    assert adapter.reference_parity["passed"]


def test_unsupported_architecture_is_one_line(tmp_path):
    transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=1000).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError) as info:
        resolve_model(f"hf:{tmp_path}")
    message = str(info.value)
    assert "\n" not in message and "'gpt2' is not supported" in message
    for kind in SUPPORTED:
        assert kind in message
    result = CliRunner().invoke(cli, ["run", "-m", f"hf:{tmp_path}"])
    assert result.exit_code == 2 and "not supported" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("setup, expected", [
    (lambda p: p / "nowhere", "no such folder"),
    (lambda p: p, "has no config.json"),
    (lambda p: (p / "config.json").write_text('{"model_type": "llama"}') and p, "has no weights"),
])
def test_bad_folders_are_one_line(tmp_path, setup, expected):
    folder = setup(tmp_path)
    with pytest.raises(CheckpointError, match=expected) as info:
        resolve_model(f"hf:{folder}")
    assert "\n" not in str(info.value)


def test_hub_id_offline_says_how_to_pass_a_folder(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError) as info:
        resolve_model("hf:slmbench-tests/no-such-model")
    message = str(info.value)
    assert "\n" not in message and "unreachable" in message and "hf:DIR" in message


def test_trust_remote_code_is_off_unless_asked(checkpoint, monkeypatch, tmp_path):
    folder = checkpoint("llama")
    monkeypatch.delenv(TRUST_ENV, raising=False)
    off = resolve_model(f"hf:{folder}")
    assert off.trust_remote_code is False
    assert resolve_model(f"hf:{folder}", trust_remote_code=True).content_hash() != off.content_hash()
    monkeypatch.setenv(TRUST_ENV, "0")  # restored after the test, whatever the CLI sets
    bad = tmp_path / "bad"
    bad.mkdir()
    CliRunner().invoke(cli, ["run", "-m", f"hf:{bad}"])
    assert resolve_model(f"hf:{folder}").trust_remote_code is False
    result = CliRunner().invoke(cli, ["run", "--trust-remote-code", "-m", f"hf:{bad}"])
    assert result.exit_code == 2
    assert resolve_model(f"hf:{folder}").trust_remote_code is False  # the flag does not outlive its command


def test_cli_run_accepts_hf_models(checkpoint, cache_dir, tmp_path):
    results = tmp_path / "rows.jsonl"
    name = f"hf:{checkpoint('bart')}"
    args = ["run", "-m", name, "-i", "8", "-o", "4", "--warmup", "0", "--min-reps", "1", "--min-time", "0",
            "--results", str(results), "--cache-dir", str(cache_dir)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert row["model"] == name and row["family"] == "encoder-decoder" and row["tokens_generated"] == 4
    assert np.isfinite(row["metrics"]["ttft_s"]["median"])


def test_a_damaged_safetensors_file_is_one_line(checkpoint, tmp_path):
    folder = shutil.copytree(checkpoint("llama"), tmp_path / "damaged")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[:8] = b"\xff" * 8  # the header length: now absurd
    weights.write_bytes(bytes(data))
    result = CliRunner().invoke(cli, ["export", "-m", f"hf:{folder}", "--cache-dir", str(tmp_path / "c")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "cannot load the weights" in lines[0] and "SafetensorError" in lines[0]
