"""Bring your own export: `-m onnx:DIR` (optimum-onnx) and `-m ov:DIR` (optimum-intel) measured in
slmbench's own loop, with the layout read from the graphs, parity against the folder's weights,
every file's SHA-256 in the row, and the user's folder left exactly as it was.

The folders are tiny optimum exports committed under tests/fixtures/optimum (made once by its
make.py in a throwaway environment); each test copies what it uses into its own tmp folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from click.testing import CliRunner  # noqa: E402

from slmbench.cli import cli  # noqa: E402
from slmbench.config import RunConfig, RunSettings  # noqa: E402
from slmbench.models import resolve_model  # noqa: E402
from slmbench.report.markdown import accuracy_rows  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "optimum"
# (fixture folder, prefix, runtime, family, layout)
CASES = {
    "llama-onnx": ("llama/onnx", "onnx", "onnxruntime", "decoder-only", "decoder-only"),
    "t5-onnx": ("t5/onnx", "onnx", "onnxruntime", "encoder-decoder", "encoder-decoder, merged decoder"),
    "llama-ov": ("llama/ov", "ov", "openvino", "decoder-only", "decoder-only, stateful"),
    "t5-ov": ("t5/ov", "ov", "openvino", "encoder-decoder", "encoder-decoder, decoder + decoder with past"),
}
RUN = ["run", "-i", "8", "-o", "4", "--warmup", "0", "--min-reps", "2", "--min-time", "0"]


def _copy(tmp_path: Path, fixture: str, name: str = "model") -> Path:
    return Path(shutil.copytree(FIXTURES / fixture, tmp_path / "user" / name))


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The fixtures copied once for the tests that leave them as they are: their check records (layout,
    parity) are made by the first run and reused by the next, as a user's second run would."""
    root = tmp_path_factory.mktemp("shared")
    return lambda fixture: (Path(shutil.copytree(FIXTURES / fixture, root / "user" / fixture))
                            if not (root / "user" / fixture).exists() else root / "user" / fixture)


def _snapshot(root: Path) -> dict:
    """Every file under `root`: its bytes' SHA-256 and its mtime (nothing may be written there)."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _run(args, cache_dir, results=None):
    extra = ["--cache-dir", str(cache_dir)] + (["--results", str(results)] if results else [])
    return CliRunner().invoke(cli, [*RUN, *args, *extra])


def _one_line_error(result, *expected):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_the_spec_comes_from_config_json_and_hashes_every_file(tmp_path):
    folder = _copy(tmp_path, "t5/onnx")
    spec = resolve_model(f"onnx:{folder}")
    assert spec.family.value == "encoder-decoder" and spec.config.decoder_layers == 2 and spec.config.vocab_size == 256
    assert spec.config.head_dim == 8 and spec.config.kv_heads == 4 and spec.has_weights
    assert spec.model_type == "t5" and spec.source == f"onnx:{folder}"
    for name, info in spec.files.items():
        assert info["sha256"] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
    assert set(spec.files) == {p.name for p in folder.iterdir()}
    before = spec.content_hash()
    (folder / "generation_config.json").write_text("{}")
    assert resolve_model(f"onnx:{folder}").content_hash() != before  # any file's change is a new spec


@pytest.mark.parametrize("case", list(CASES))
def test_run_measures_the_users_export_in_place(case, cache_dir, shared, tmp_path):
    fixture, prefix, runtime, family, layout = CASES[case]
    folder = shared(fixture)
    user = folder.parents[1]
    before = _snapshot(user)
    results = tmp_path / "rows.jsonl"
    name = f"{prefix}:{folder}"
    result = _run(["-m", name], cache_dir, results)
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert row["model"] == name and row["runtime"] == runtime and row["family"] == family
    assert row["tokens_generated"] == 4 and row["device_executed"]
    for metric in ("ttft_s", "tpot_s", "decode_tps"):
        assert np.isfinite(row["metrics"][metric]["median"]) and row["metrics"][metric]["median"] > 0
    if family == "encoder-decoder":
        assert row["metrics"]["encoder_s"]["median"] > 0
    artifact = row["artifact"]
    assert artifact["parity"] == "ok" and artifact["layout"] == layout and artifact["path"] == str(folder)
    assert row["accuracy"]["passed"] and row["accuracy"]["max_abs_diff"] < 1e-4
    assert {f"{fixture}/{n}": f["sha256"] for n, f in artifact["files"].items()} == {
        n: h for n, (h, _) in before.items() if n.startswith(f"{fixture}/")}
    assert _snapshot(user) == before  # nothing copied into, written beside or changed in the folders
    assert {p.name for p in user.iterdir()} <= {"llama", "t5"}


def test_an_onnx_export_and_its_checkpoint_pair_as_the_same_configuration(cache_dir, shared, tmp_path):
    """The folder optimum wrote beside the weights is also an hf: checkpoint: both measured in one run
    (interleaved), their rows share every key field but the model, and carry the same fields."""
    folder = shared("llama/onnx")
    results = tmp_path / "rows.jsonl"
    result = _run(["-m", f"hf:{folder}", "-m", f"onnx:{folder}"], cache_dir, results)
    assert result.exit_code == 0, result.output
    hf_row, byo_row = [json.loads(line) for line in results.read_text().splitlines()]
    peer = lambda key: key.partition("|")[2]
    assert peer(hf_row["key"]) == peer(byo_row["key"]) and hf_row["group"] == byo_row["group"]
    assert set(hf_row) == set(byo_row)
    assert hf_row["parameters"] == byo_row["parameters"] and hf_row["family"] == byo_row["family"]
    assert set(byo_row["artifact"]) - set(hf_row["artifact"]) == {"layout", "files", "check_record"}


def test_without_weights_parity_is_unchecked_and_the_report_says_so(cache_dir, tmp_path):
    folder = _copy(tmp_path, "llama/onnx")
    (folder / "model.safetensors").unlink()
    results = tmp_path / "rows.jsonl"
    result = _run(["-m", f"onnx:{folder}"], cache_dir, results)
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert row["artifact"]["parity"] == "unchecked" and row["accuracy"] is None
    table = accuracy_rows(SimpleNamespace(rows=[row]))
    assert list(table["parity"]) == ["unchecked"]


def test_a_split_seq2seq_onnx_folder_runs_both_decoders(cache_dir, tmp_path):
    folder = _copy(tmp_path, "t5/onnx")
    (folder / "decoder_model_merged.onnx").unlink()
    results = tmp_path / "rows.jsonl"
    assert _run(["-m", f"onnx:{folder}"], cache_dir, results).exit_code == 0
    (row,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert row["artifact"]["layout"] == "encoder-decoder, decoder + decoder with past"
    assert row["artifact"]["parity"] == "ok"


def test_the_runtime_follows_the_format():
    settings = RunSettings(input_len=8, output_len=4)
    assert RunConfig.create(f"ov:{FIXTURES / 'llama/ov'}", "cpu", None, "fp32", settings).runtime == "openvino"
    assert RunConfig.create(f"onnx:{FIXTURES / 'llama/onnx'}", "cpu", None, "fp32", settings).runtime == "onnxruntime"


def _retype_inputs(path: Path, rename: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    for value in model.graph.input:
        if value.name in rename:
            old, value.name = value.name, rename[value.name]
            for node in model.graph.node:
                node.input[:] = [value.name if i == old else i for i in node.input]
    onnx.save(model, str(path))


def _config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


BAD = {
    "IR without its .bin": ("llama/ov", "ov", lambda f: (f / "openvino_model.bin").unlink(),
                            ["openvino_model.xml has no openvino_model.bin"]),
    "ONNX folder of another layout": ("llama/onnx", "onnx", lambda f: (f / "model.onnx").rename(f / "decoder.onnx"),
                                      ["found decoder.onnx", "supported onnx layouts", "model.onnx"]),
    "ONNX graph with inputs we cannot feed": (
        "llama/onnx", "onnx", lambda f: _retype_inputs(f / "model.onnx", {"position_ids": "pixel_values"}),
        ["['pixel_values'] are not ones slmbench can feed", "supported onnx layouts"]),
    "no config.json": ("llama/onnx", "onnx", lambda f: (f / "config.json").unlink(), ["has no config.json"]),
    "config of another family": ("llama/onnx", "onnx",
                                 lambda f: shutil.copy(FIXTURES / "t5/onnx/config.json", f / "config.json"),
                                 ["found model.onnx for a model that config.json says is encoder-decoder",
                                  "encoder_model.onnx + decoder_model_merged.onnx"]),
    "layers disagree with config.json": ("llama/ov", "onnx", None, None),  # replaced below
    "unsupported model type": ("llama/onnx", "onnx", lambda f: _config(f, model_type="gpt2"),
                               ["architecture 'gpt2' is not supported"]),
}
BAD["layers disagree with config.json"] = ("llama/onnx", "onnx", lambda f: _config(f, num_hidden_layers=3),
                                           ["covers layers [0, 1]", "config.json says 3 decoder layers"])


@pytest.mark.parametrize("case", list(BAD))
def test_bad_folders_are_one_line(case, cache_dir, tmp_path):
    fixture, prefix, damage, expected = BAD[case]
    folder = _copy(tmp_path, fixture)
    damage(folder)
    _one_line_error(_run(["-m", f"{prefix}:{folder}"], cache_dir), *expected)


@pytest.mark.parametrize(("args", "expected"), [
    (["-m", "onnx:/no/such/folder"], ["no such folder"]),
    (["-m", f"onnx:{FIXTURES / 'llama/onnx'}", "-r", "openvino"], ["is an onnx export", "--runtime onnxruntime"]),
    (["-m", f"ov:{FIXTURES / 'llama/ov'}", "-r", "onnxruntime"], ["is an openvino export", "--runtime openvino"]),
    (["-m", f"onnx:{FIXTURES / 'llama/onnx'}", "-p", "int8"], ["is run as exported", "fp32"]),
    (["-m", f"ov:{FIXTURES / 'llama/ov'}", "-r", "openvino", "--ov-mode", "static"], ["in mode stateful"]),
])
def test_bad_options_for_an_own_export_are_one_line(args, expected, cache_dir):
    _one_line_error(_run(args, cache_dir), *expected)


def test_a_prompt_goes_through_the_folders_own_tokenizer(cache_dir, tmp_path):
    """optimum copies the tokenizer into the export; `--prompt` reads it from there, as for hf:."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    folder = _copy(tmp_path, "llama/onnx")
    text = "the encoder reads the prompt once and the decoder attends to it"
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([text], trainers.WordLevelTrainer(special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    tok.save(str(folder / "tokenizer.json"))
    results = tmp_path / "rows.jsonl"
    result = CliRunner().invoke(cli, [*RUN[:1], "-o", "3", "--warmup", "0", "--min-reps", "2", "--min-time", "0",
                                      "-m", f"onnx:{folder}", "--prompt", text, "--cache-dir", str(cache_dir),
                                      "--results", str(results)])
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert row["text"]["characters"] == len(text) and row["artifact"]["parity"] == "ok"
    assert "tokenizer.json" in row["artifact"]["files"]


def test_the_committed_comparison_pairs_each_export_with_its_own_checkpoint():
    """bench/tools/byo_check.py on results/byo: each export beside the hf: row of its own checkpoint,
    same run and runtime, and nothing else."""
    from pathlib import Path

    from slmbench.results import read_rows
    from slmbench.tools.byo_check import export_ratios

    rows = read_rows([Path(__file__).parents[1] / "results" / "byo" / "results.jsonl"])
    ratios = export_ratios(rows)
    assert sorted((r["export"].split("/")[-2], r["runtime"]) for r in ratios) == [
        ("llama", "onnxruntime"), ("llama", "openvino"), ("t5", "onnxruntime"), ("t5", "openvino")]
    assert all(0.5 < r[m] < 2 for r in ratios for m in ("ttft_s", "tpot_s", "decode_tps"))
