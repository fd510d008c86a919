"""Text inputs: prompt files, each model's own tokenizer (trained here on text the test writes), the
text as is (matched text: the key pairs on it) or fitted to --input-len tokens (cut or repeated),
the rows' token counts and per-character rates, and every bad input as one line with exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from click.testing import CliRunner  # noqa: E402

from slmbench.cli import cli  # noqa: E402
from slmbench.config import RunSettings, plan  # noqa: E402
from slmbench.core.inputs import model_inputs  # noqa: E402
from slmbench.core.metrics import same_run_pairs, text_rates  # noqa: E402
from slmbench.errors import InvalidOption  # noqa: E402
from slmbench.models import resolve_model  # noqa: E402
from slmbench.prompts import Text, read_prompts  # noqa: E402

CORPUS = ("the encoder reads the prompt once and the decoder attends to it at every step; "
          "a decoder-only model reads the prompt in its cache and attends to all of it at every token. "
          "small language models on edge hardware trade latency for memory and bandwidth. ") * 20
PROMPT = "The encoder reads the prompt once, and the decoder attends to it at every generated token."


def _tokenizer(kind: str):
    """A word-level tokenizer (few tokens per text) or a character-level BPE (many), with the special
    token each family's tokenizer adds: BOS first (Llama), EOS last (T5)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    if kind == "words":
        tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
        trainer = trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"])
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.train_from_iterator([CORPUS], trainer)
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<s>", "</s>"])
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.train_from_iterator([CORPUS], trainer)
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny T5 with a word-level tokenizer and a tiny Llama with a character-level one."""
    root = tmp_path_factory.mktemp("text")
    torch.manual_seed(0)
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=256, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4))
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, pad_token_id=0, bos_token_id=1,
        eos_token_id=2))
    out = {}
    for name, model, kind in (("t5", t5, "words"), ("llama", llama, "chars")):
        model.save_pretrained(root / name)
        _tokenizer(kind).save(str(root / name / "tokenizer.json"))
        out[name] = root / name
    (root / "bare").mkdir()
    llama.save_pretrained(root / "bare")  # a checkpoint without a tokenizer
    out["bare"] = root / "bare"
    return out


def _run(*args):
    return CliRunner().invoke(cli, ["run", "-o", "3", "--warmup", "0", "--min-reps", "2", "--min-time", "0", *args])


def test_prompt_files_plain_and_json_lines(tmp_path):
    plain = tmp_path / "p.txt"
    plain.write_text("first prompt\n\n  second prompt  \n", encoding="utf-8")
    assert read_prompts(plain) == ("first prompt", "  second prompt  ")
    lines = tmp_path / "p.jsonl"
    lines.write_text('"a string"\n{"prompt": "an object"}\n{"text": "its text"}\n', encoding="utf-8")
    assert read_prompts(lines) == ("a string", "an object", "its text")
    lines.write_text('{"prompt": 3}\n', encoding="utf-8")
    with pytest.raises(InvalidOption, match=r"p.jsonl:1: expected a non-empty string"):
        read_prompts(lines)
    lines.write_text("not json\n", encoding="utf-8")
    with pytest.raises(InvalidOption, match=r"p.jsonl:1: not JSON"):
        read_prompts(lines)


def test_text_identity_is_its_prompts_and_enters_the_key():
    a, b = Text(("one", "two")), Text(("one", "two"), fit=True)
    assert a.id == b.id and a.id != Text(("one",)).id
    as_is = RunSettings(input_len=7, text=a)
    fitted = RunSettings(input_len=16, text=b)
    assert as_is.input_key == f"in:text-{a.id}" and fitted.input_key == f"in16:text-{a.id}"
    assert RunSettings(input_len=16).input_key == "in16"
    # a text as is: models differ only in their own token counts, and still share one run
    assert as_is.shared() == RunSettings(input_len=99, text=a).shared()
    with pytest.raises(InvalidOption, match="a prompt is empty"):
        Text(("ok", "  "))


def test_settings_with_text_survive_a_trip_through_json():
    from slmbench.config import RunConfig

    config = RunConfig.create("mu-tiny", settings=RunSettings(input_len=16, text=Text(("hello world",), fit=True)))
    back = RunConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config and back.key == config.key and back.settings.text.prompts == ("hello world",)


def test_each_tokenizer_reads_the_same_text_in_its_own_tokens(folders):
    text = Text((PROMPT,))
    settings = RunSettings(output_len=3, text=text)
    configs = plan([f"hf:{folders['t5']}", f"hf:{folders['llama']}"], settings=settings, threads=1)
    t5, llama = (resolve_model(c.model) for c in configs)
    t5_in, llama_in = model_inputs(configs[0].settings, t5), model_inputs(configs[1].settings, llama)
    words = len(PROMPT.replace(",", " ,").replace(".", " .").split())
    assert t5_in.text["input_tokens"] == [words + 1]  # word level, EOS appended
    assert llama_in.text["input_tokens"][0] > words + 1  # sub-word pieces, BOS first
    assert llama_in.slots[0][0, 0] == 1 and t5_in.slots[0][0, -1] == 1
    # each config's input length is its own model's count; the key pairs them on the text
    assert [c.settings.input_len for c in configs] == [t5_in.text["input_tokens"][0], llama_in.text["input_tokens"][0]]
    assert configs[0].peer_key == configs[1].peer_key
    assert t5_in.text["input_characters"] == llama_in.text["input_characters"] == len(PROMPT)


def test_fitted_text_is_cut_or_repeated_to_input_len(folders):
    llama = resolve_model(f"hf:{folders['llama']}")
    short, long_ = "the encoder", PROMPT * 3
    given = model_inputs(RunSettings(input_len=40, output_len=3, batch=2, text=Text((short, long_), fit=True)), llama)
    assert len(given.slots) == 2 and all(s.shape == (2, 40) for s in given.slots)
    assert given.text["input"] == "cut, repeated" and given.text["input_tokens"] == [40, 40]
    # the batch rows of slot k hold prompts k and k+1; the cycle visits the slots in order
    np.testing.assert_array_equal(given.slots[0][1], given.slots[1][0])
    take = given.cycle()
    assert [take() is s for s in (given.slots[0], given.slots[1])] == [True, True] and take() is given.slots[0]


def test_prompts_of_different_lengths_need_one_length_for_a_batch(folders):
    llama = resolve_model(f"hf:{folders['llama']}")
    with pytest.raises(InvalidOption, match="a batch needs one length; give --input-len"):
        model_inputs(RunSettings(batch=2, output_len=3, text=Text(("short", PROMPT))), llama)


def test_a_preset_keeps_random_ids_and_says_so():
    given = model_inputs(RunSettings(input_len=8, output_len=3, text=Text((PROMPT,))), resolve_model("deconly-tiny"))
    assert given.slots[0].shape == (1, 8) and given.text["input"] == "random ids: deconly-tiny has no tokenizer"
    assert given.text["tokenizer"] is None


def test_run_with_a_prompt_across_tokenizers(folders, cache_dir, tmp_path):
    results = tmp_path / "rows.jsonl"
    t5, llama = f"hf:{folders['t5']}", f"hf:{folders['llama']}"
    result = _run("-m", t5, "-m", llama, "--prompt", PROMPT, "--results", str(results), "--cache-dir", str(cache_dir))
    assert result.exit_code == 0, result.output
    assert "matched text" in result.output and "token counts differ" in result.output
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    by = {r["model"]: r for r in rows}
    assert by[t5]["text"]["input_tokens"] != by[llama]["text"]["input_tokens"]
    assert by[t5]["input_len"] == by[t5]["text"]["input_tokens"][0]
    assert f"{by[t5]['input_len']} · {by[llama]['input_len']}/3" in result.output  # the pair: each model's tokens
    for row in rows:
        assert row["text"]["id"] == Text((PROMPT,)).id and row["text"]["tokenizer"]["file"] == "tokenizer.json"
        rates = text_rates(row)
        assert rates["read_chars_per_s"] == pytest.approx(len(PROMPT) / row["metrics"]["ttft_s"]["median"])
    assert len(same_run_pairs(rows)) == 1  # the pair is matched on the text, not the token count
    report = CliRunner().invoke(cli, ["report", str(results), "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    markdown = (tmp_path / "report" / "report.md").read_text()
    section = markdown.split("## Matched text")[1].split("\n## ")[0]
    assert "token counts differ between tokenizers" in section and Text((PROMPT,)).id in section
    for row in rows:  # each model's own token count beside its per-character rate
        line = next(x for x in section.splitlines() if x.startswith(f"| {row['model']} |"))
        assert f"| {row['text']['input_tokens'][0]:,} |" in line
        assert f"| {text_rates(row)['read_chars_per_s']:,.0f} |" in line


def test_run_with_a_prompt_file_fitted_to_tokens(folders, cache_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": PROMPT}) + "\n" + json.dumps("the decoder") + "\n", encoding="utf-8")
    results = tmp_path / "rows.jsonl"
    result = _run("-m", f"hf:{folders['llama']}", "--prompts", str(prompts), "-i", "24", "--results", str(results),
                  "--cache-dir", str(cache_dir))
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert row["input_len"] == 24 and row["text"]["input_tokens"] == [24, 24] and row["text"]["prompts"] == 2
    assert row["key"].split("|")[5] == f"in24:text-{row['text']['id']}"


@pytest.mark.parametrize("content, expected", [
    (b"", "holds no prompt"),
    (b"\n  \n", "holds no prompt"),
    (b"caf\xe9\n", "is not UTF-8 text"),
])
def test_bad_prompt_files_are_one_line(tmp_path, content, expected):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    result = _run("-m", "deconly-tiny", "--prompts", str(bad), "--results", str(tmp_path / "r.jsonl"))
    assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_folder_without_a_tokenizer_is_one_line(folders, tmp_path):
    result = _run("-m", f"hf:{folders['bare']}", "--prompt", PROMPT, "--results", str(tmp_path / "r.jsonl"))
    assert result.exit_code == 2 and "has no tokenizer" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r.jsonl").exists()


def test_prompt_and_prompt_file_together_are_refused(tmp_path):
    result = _run("--prompt", "x", "--prompts", str(tmp_path / "p.txt"))
    assert result.exit_code == 2 and "not both" in result.output


def test_a_sweep_feeds_its_text_as_is_and_resumes(folders, cache_dir, tmp_path):
    from slmbench.results import read_rows
    from slmbench.sweep.files import SweepFileError, load_sweep
    from slmbench.sweep.run import run_sweep

    (tmp_path / "prompts.txt").write_text(PROMPT + "\n", encoding="utf-8")
    sweep_file = tmp_path / "text.toml"
    sweep_file.write_text(f"""
name = "text"
[grid]
models = ["hf:{folders['t5']}", "hf:{folders['llama']}"]
output_lens = [3]
[text]
prompts = "prompts.txt"
[repetitions]
warmup = 0
min_reps = 2
min_time_s = 0
""", encoding="utf-8")
    sweep = load_sweep(sweep_file)
    configs, _ = sweep.configurations()
    assert sweep.text.prompts == (PROMPT,) and not sweep.text.fit
    assert sorted(c.settings.input_len for c in configs) == sorted(
        model_inputs(c.settings, resolve_model(c.models[0])).text["input_tokens"][0] for c in configs)
    results = tmp_path / "rows.jsonl"
    first = run_sweep(sweep, results, cache_dir=cache_dir)
    assert first.measured == 2 and first.failed == 0
    rows = read_rows([results])
    assert {r["text"]["id"] for r in rows} == {Text((PROMPT,)).id} and {r["status"] for r in rows} == {"ok"}
    assert run_sweep(sweep, results, cache_dir=cache_dir).measured == 0  # resume: the text's keys are done
    sweep_file.write_text(sweep_file.read_text().replace('prompts = "prompts.txt"', 'prompts = "missing.txt"'))
    with pytest.raises(SweepFileError, match="cannot read the prompt file"):
        load_sweep(sweep_file)
