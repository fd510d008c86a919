"""Analytic cost (models/cost.py): hand-counted small configs, and torch's own FLOP counter."""

import pytest

from slmbench.models import get_preset
from slmbench.models.config import ArchConfig, Family
from slmbench.models.cost import (
    encoder_flops,
    generation_cost,
    generation_flops,
    kv_cache_bytes,
    prefill_flops,
    step_flops,
)

# Small enough to count by hand: hidden 4, 2 query heads and 1 KV head of 2, MLP 4 -> 8 -> 4, vocab 10.
TOY = dict(vocab_size=10, hidden=4, attn_heads=2, kv_heads=1, head_dim=2, ffn=8, max_positions=64)
DO = ArchConfig(family=Family.DECODER_ONLY, encoder_layers=0, decoder_layers=1, **TOY)
ED = ArchConfig(family=Family.ENCODER_DECODER, encoder_layers=1, decoder_layers=1, **TOY)
# Per token: Q 4x4, K 4x2, V 4x2, O 4x4 -> 2*(16+8+8+16) = 96; MLP 2*(32+32) = 128; LM head 2*40 = 80.


def test_a_decoder_only_prefill_and_step_by_hand():
    # prefill of 3: 3*(96+128) projections and MLP, attention 2 products * 2 FLOPs * 3x3 * q=4 -> 144; head 80
    assert prefill_flops(DO, 3) == 3 * (96 + 128) + 144 + 80
    # a step at position 3 attends to 4 keys: 96 + 128 + 2*2*1*4*4 = 64, head 80
    assert step_flops(DO, 3) == 96 + 128 + 64 + 80
    flops = generation_flops(DO, 3, 2)  # prefill yields token 1, one step at position 3 yields token 2
    assert flops["first_token_flops"] == prefill_flops(DO, 3) and flops["decode_flops"] == step_flops(DO, 3)


def test_an_encoder_decoder_encoder_and_step_by_hand():
    # encoder over 3: 3*(96+128) + 144; cross K/V once: 3 tokens * 2 (K, V) * 2*4*2 = 96
    assert encoder_flops(ED, 3) == 3 * (96 + 128) + 144 + 96
    # first step: self 96 + MLP 128 + self attention over 1 key (16) + cross Q, O 2*(16+16) = 64
    # + cross attention over 3 keys (48) + head 80
    assert step_flops(ED, 0, 3) == 96 + 128 + 16 + 64 + 48 + 80
    flops = generation_flops(ED, 3, 3)
    assert flops["first_token_flops"] == encoder_flops(ED, 3) + step_flops(ED, 0, 3)
    assert flops["decode_flops"] == step_flops(ED, 1, 3) + step_flops(ED, 2, 3)


def test_kv_cache_and_memory_by_hand():
    # one layer, K and V of width 2: 4 elements per position, fp32
    assert kv_cache_bytes(DO, 5) == {"self_kv_bytes": 80, "cross_kv_bytes": 0, "kv_bytes": 80}
    assert kv_cache_bytes(ED, 2, source_len=3, kv_bytes=2)["cross_kv_bytes"] == 24
    cost = generation_cost(DO, 3, 2)
    assert cost["weight_bytes"] == 4 * DO.parameter_count() and cost["self_kv_bytes"] == 4 * 4 * 4  # 4 positions
    assert cost["attention_scores_bytes"] == 4 * 2 * 3 * 3


@pytest.mark.parametrize("name", ["deconly-tiny", "mu-tiny"])
def test_the_counts_match_torch_flop_counter_on_a_tiny_model(name):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from slmbench.models import resolve_model

    spec = resolve_model(name)
    cfg, model = spec.config, spec.build()
    ids = torch.randint(1, cfg.vocab_size, (1, 12))

    def counted(fn):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = fn()
        return counter.get_total_flops(), out

    if cfg.is_encoder_decoder:
        mask = torch.ones_like(ids)
        encoder, cross = counted(lambda: model.cross_kv(model.encode(ids, mask)))
        assert encoder == encoder_flops(cfg, 12)
        start = torch.zeros((1, 1), dtype=torch.int64)
        first, (_, past) = counted(lambda: model.decode(start, mask, cross, model.empty_past(1)))
        assert first == step_flops(cfg, 0, 12)
        second, _ = counted(lambda: model.decode(start, mask, cross, past))
        assert second == step_flops(cfg, 1, 12)
    else:
        prefill, (_, past) = counted(lambda: model(ids, model.empty_past(1)))
        assert prefill == prefill_flops(cfg, 12)
        step, _ = counted(lambda: model(ids[:, :1], past))
        assert step == step_flops(cfg, 12)


def test_the_paper_pair_costs_are_consistent():
    mu, deconly = get_preset("mu-330m"), get_preset("deconly-330m")
    a, b = generation_cost(mu, 512, 128), generation_cost(deconly, 512, 128)
    assert 0 < a["generation_flops"] < b["generation_flops"]  # fewer decoder layers per generated token
    assert a["kv_bytes"] < b["kv_bytes"] and a["cross_kv_bytes"] > 0


def test_models_cost_on_the_command_line():
    import json

    from click.testing import CliRunner

    from slmbench.cli import cli

    result = CliRunner().invoke(cli, ["models", "--cost", "-i", "512", "-o", "128", "-m", "mu-330m", "-m",
                                      "deconly-330m", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [m["model"] for m in out["models"]] == ["mu-330m", "deconly-330m"] and len(out["pairs"]) == 1
    expected = generation_cost(get_preset("mu-330m"), 512, 128)["generation_flops"]
    assert out["models"][0]["generation_flops"] == expected
    table = CliRunner().invoke(cli, ["models", "--cost"])
    assert table.exit_code == 0 and "paper: 22% fewer generation FLOPs" in table.output and "mu-1b" in table.output
    bad = CliRunner().invoke(cli, ["models", "--cost", "-o", "0"])
    assert bad.exit_code == 2 and bad.output.startswith("error:")
