"""Vision input (models/vision.py): the tower and projector, its graphs on both runtimes checked
against PyTorch, the image in the timed path with its own timestamp, and every refusal in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from slmbench.cli import cli
from slmbench.config import RunSettings, plan
from slmbench.models import resolve_model

PAIR = ("mu-vl-tiny", "deconly-vl-tiny")


def test_the_tower_counts_its_parameters_exactly_and_has_the_papers_clip_shape():
    from slmbench.models.presets import CLIP_VIT_L14_336

    for name in PAIR:
        spec = resolve_model(name)
        model = spec.build()
        assert sum(p.numel() for p in model.parameters()) == spec.parameters
        assert sum(p.numel() for p in model.vision.parameters()) == spec.config.vision.parameter_count(128)
    assert CLIP_VIT_L14_336.image_tokens() == 576  # 336 px in 14-px patches: 24 x 24
    assert resolve_model("mu-vl-330m").config.language_parameters() == resolve_model("mu-330m").parameters


def test_vision_flops_match_torch_flop_counter():
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from slmbench.models.cost import generation_flops, prefill_flops, vision_flops

    spec = resolve_model("deconly-vl-tiny").with_image_size(48)
    model, cfg = spec.build(), spec.config
    pixels = torch.from_numpy(np.zeros((1, 3, 48, 48), np.float32))
    # the math backend: the counter has no formula for CPU's fused attention kernel, it counts its matmuls
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.vision(pixels)
    assert counter.get_total_flops() == vision_flops(cfg, 48)
    first = generation_flops(cfg, 12, 4, 48)["first_token_flops"]
    assert first == vision_flops(cfg, 48) + prefill_flops(cfg, 12 + 36)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_the_exported_tower_matches_pytorch_within_1e_4(runtime, cache_dir):
    from slmbench.runners import RUNNERS

    for name in PAIR:
        for size in (None, 48):  # the native grid, and positions resampled to a 6 x 6 one
            spec = resolve_model(name).with_image_size(size)
            artifact, _ = RUNNERS[runtime]("cpu", 1).prepare(spec, "fp32", cache_dir)
            parity = artifact.manifest["parity"]
            assert parity["vision"]["passed"] and parity["vision"]["max_abs_diff"] <= 1e-4
            assert parity["vision"]["image_size"] == spec.image
            assert parity["max_abs_diff"] <= 1e-4  # logits with the image in, every step after it
            assert artifact.manifest["vision"]["image_tokens"] == spec.image_tokens
            assert artifact.manifest["variant"]["image_size"] == spec.image
            assert "vision" in artifact.manifest["graphs"]


def test_the_image_changes_what_the_model_computes(cache_dir):
    """A tower whose output never reached the language model would pass a parity check that fed it
    nothing: two different images must give different logits."""
    from slmbench.models.reference import TorchSteps, teacher_forced
    from slmbench.models.vision import fixed_image

    for name in PAIR:
        spec = resolve_model(name)
        model, cfg = spec.build(), spec.config
        prompt, forced = np.ones((1, 5), np.int64), np.ones((1, 2), np.int64)
        a = teacher_forced(TorchSteps(model, cfg), cfg, prompt, forced, fixed_image(1, 32, seed=0) * 50)
        b = teacher_forced(TorchSteps(model, cfg), cfg, prompt, forced, fixed_image(1, 32, seed=1) * 50)
        assert np.max(np.abs(a[0] - b[0])) > 1e-6


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_a_run_times_the_tower_apart_and_pairs_the_families(runtime, cache_dir, tmp_path):
    from slmbench.core.benchmark import run_benchmark
    from slmbench.report.terminal import pair_ratios

    settings = RunSettings(input_len=12, output_len=5, warmup=1, min_reps=3, min_time_s=0.0)
    configs = plan(PAIR, "cpu", [runtime], "fp32", settings, 1)
    rows = run_benchmark(configs, tmp_path / "rows.jsonl", cache_dir, log=lambda m: None)
    for row in rows:
        assert "|in12+img32|" in row["key"]  # the native size, stated
        assert row["vision"]["image_tokens"] == 16 and row["vision"]["image_size"] == 32
        assert row["vision"]["kv_bytes_per_token"] > row["vision"]["kv_bytes_per_token_text_only"]
        for rep in row["repetitions"]:
            stamps = rep["timestamps_ns"]
            assert 0 < rep["vision_end_ns"] < stamps[1]
            if rep["encoder_end_ns"] is not None:
                assert rep["vision_end_ns"] < rep["encoder_end_ns"] < stamps[1]
        m = {k: v["median"] for k, v in row["metrics"].items() if v and "median" in v}
        assert m["vision_s"] > 0 and m["prefill_s"] > 0
        if row["family"] == "encoder-decoder":
            assert m["encoder_s"] > 0
        # the compute ceiling counts the tower's work too
        from slmbench.models.cost import generation_flops

        flops = generation_flops(resolve_model(row["model"]).config, 12, 5, 32)["first_token_flops"]
        assert row["compute_roofline"]["first_token_flops"] == flops
    assert len(pair_ratios(rows)) == 1
    stored = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [r["key"] for r in stored] == [r["key"] for r in rows]


@pytest.mark.parametrize(("args", "message"), [
    (["-m", "mu-vl-tiny", "--image-size", "30"], "whole number of 8-pixel patches"),
    (["-m", "mu-vl-tiny", "--image-size", "0"], "image_size must be a positive integer"),
    (["-m", "mu-tiny", "--image-size", "32"], "mu-tiny is a text model and takes no image"),
    (["-m", "mu-vl-tiny", "-m", "deconly-tiny"], "all take an image or none does"),
    (["-m", "mu-vl-tiny", "-r", "torch"], "torch has no vision graphs"),
    (["-m", "mu-vl-tiny", "-r", "openvino", "--ov-mode", "npuw"], "takes input_ids only"),
    (["-m", "mu-vl-tiny", "-p", "int8"], "runs at fp32 or bf16"),
])
def test_bad_vision_input_is_one_line_exit_2_and_writes_nothing(args, message, tmp_path):
    results = tmp_path / "rows.jsonl"
    result = CliRunner().invoke(cli, ["run", *args, "-i", "8", "-o", "3", "--results", str(results)])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert not results.exists()


def _sweep(tmp_path, grid: str):
    from slmbench.sweep.files import SweepFileError, expand, load_sweep

    path = tmp_path / "s.toml"
    path.write_text(f'name = "v"\n[grid]\n{grid}\noutput_lens = [4]\ninput_lens = [8]\n')
    return SweepFileError, lambda: expand(load_sweep(path))


def test_a_sweep_feeds_image_sizes_to_vision_models_only(tmp_path):
    _, run = _sweep(tmp_path, 'models = ["mu-vl-tiny", "deconly-vl-tiny"]\nimage_sizes = [32, 48]')
    configs, _ = run()
    keys = sorted(r.key for c in configs for r in c.runs)
    assert len(keys) == 4 and all("+img32|" in k or "+img48|" in k for k in keys)
    for bad, message in (('models = ["mu-vl-tiny"]\nimage_sizes = [30]', "image_sizes[0]"),
                         ('models = ["mu-tiny"]\nimage_sizes = [32]', "none of the models takes an image")):
        error, run = _sweep(tmp_path, bad)
        with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
            run()
