import pytest
import torch

from slmbench.models import PRESETS, resolve_model
from slmbench.models.config import ArchConfig, ConfigError
from slmbench.models.presets import PAIRS


def test_mu_330m_matches_the_paper():
    spec = resolve_model("mu-330m")
    c = spec.config
    assert (c.encoder_layers, c.decoder_layers, c.hidden) == (20, 10, 1024)
    assert (c.attn_heads, c.kv_heads, c.head_dim, c.ffn) == (6, 3, 64, 4096)
    assert (c.vocab_size, c.tie_embeddings, c.gated_mlp, c.activation) == (32128, True, False, "gelu_tanh")
    assert abs(spec.parameters - 332e6) / 332e6 < 0.01


@pytest.mark.parametrize("decoder_only", sorted(set(PAIRS) - {"deconly-tiny", "deconly-vl-tiny"}))
def test_pairs_share_the_budget(decoder_only):
    """Tiny test models are excluded: their vocabulary dominates and they exist for speed."""
    do, ed = resolve_model(decoder_only).parameters, resolve_model(PAIRS[decoder_only]).parameters
    assert abs(do - ed) / ed < 0.02


def test_budget_presets_scale():
    sizes = [resolve_model(f"mu-{s}").parameters for s in ("100m", "330m", "1b")]
    assert 0.9e8 < sizes[0] < 1.1e8 and 0.95e9 < sizes[2] < 1.1e9


@pytest.mark.parametrize("name", ["mu-tiny", "deconly-tiny"])
def test_parameter_count_is_exact(name):
    spec = resolve_model(name)
    assert sum(p.numel() for p in spec.build().parameters()) == spec.parameters
    assert 1e6 < spec.parameters < 5e6


def test_same_seed_same_weights_and_hash():
    a, b = resolve_model("deconly-tiny").build(), resolve_model("deconly-tiny").build()
    assert torch.equal(a.embed.weight, b.embed.weight)
    assert resolve_model("deconly-tiny").content_hash() == resolve_model("deconly-tiny").content_hash()
    assert resolve_model("deconly-tiny", seed=1).content_hash() != resolve_model("deconly-tiny").content_hash()


@torch.no_grad()
def test_decoder_only_kv_steps_match_full_forward():
    model = resolve_model("deconly-tiny").build()
    ids = torch.randint(1, 8192, (2, 9))
    logits, past = model(ids[:, :5], model.empty_past(2))
    for i in range(5, 9):
        logits, past = model(ids[:, i:i + 1], past)
        full, _ = model(ids[:, :i + 1], model.empty_past(2))
        assert torch.allclose(logits, full, atol=1e-5)


@torch.no_grad()
def test_encoder_decoder_kv_steps_match_teacher_forcing():
    model = resolve_model("mu-tiny").build()
    src, tgt = torch.randint(1, 8192, (2, 7)), torch.randint(1, 8192, (2, 4))
    mask = torch.ones_like(src)
    cross = model.cross_kv(model.encode(src, mask))
    past = model.empty_past(2)
    for i in range(4):
        logits, past = model.decode(tgt[:, i:i + 1], mask, cross, past)
        full, _ = model(src, mask, tgt[:, :i + 1])
        assert torch.allclose(logits, full, atol=1e-5)


@torch.no_grad()
def test_encoder_ignores_padding():
    """Right-padding the source changes no logit: positions are centred on the real tokens."""
    model = resolve_model("mu-tiny").build()
    src = torch.randint(1, 8192, (1, 6))
    padded = torch.cat([src, torch.zeros((1, 3), dtype=torch.int64)], 1)
    start = torch.zeros((1, 1), dtype=torch.int64)
    a, _ = model(src, torch.ones_like(src), start)
    b, _ = model(padded, (padded != 0).long(), start)
    assert torch.allclose(a, b, atol=1e-5)


def test_all_presets_are_valid():
    for name in PRESETS:
        assert resolve_model(name).parameters > 0


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown model 'gpt-9'.*presets: mu-100m"):
        resolve_model("gpt-9")


@pytest.mark.parametrize("bad, message", [
    ({"hidden": 0}, "hidden must be a positive integer"),
    ({"attn_heads": 3}, "multiple of kv_heads"),
    ({"encoder_layers": 0}, "needs encoder_layers"),
    ({"activation": "swish"}, "activation must be"),
    ({"colour": "red"}, "unknown architecture keys"),
])
def test_config_validation(bad, message):
    base = PRESETS["mu-tiny"].to_dict()
    with pytest.raises(ConfigError, match=message):
        ArchConfig.from_dict({**base, **bad})


@pytest.mark.parametrize("name", ["mu-tiny", "deconly-tiny"])
def test_decode_reads_the_weights_the_module_uses_per_token(name):
    """Roofline bytes: every parameter except the encoder's and the cross-attention K/V projections
    (run once per request), counted from the module itself."""
    from slmbench.models.cost import decode_bytes_per_token

    spec = resolve_model(name)
    per_token = sum(p.numel() for n, p in spec.build().named_parameters()
                    if not n.startswith("encoder") and ".cross.kv_proj" not in n)
    assert decode_bytes_per_token(spec.config)["weight_bytes"] == 4 * per_token


def test_openvino_forms_compute_the_same_model():
    """set_openvino_forms only rewrites how the graph is written (exporters/openvino.py exports in these
    forms and checks the IR against the model as written): the logits stay the same, and off restores."""
    import torch.nn.functional as F

    from slmbench.models.blocks import MLP, gelu_tanh_as_sigmoid, set_openvino_forms

    x = torch.linspace(-12, 12, 4001, dtype=torch.float64)
    assert torch.allclose(gelu_tanh_as_sigmoid(x), F.gelu(x, approximate="tanh"), atol=1e-12, rtol=0)
    model = resolve_model("deconly-tiny").build()
    ids = torch.randint(1, 8192, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        written = model(ids, model.empty_past(2))[0]
        set_openvino_forms(model)
        assert all(m.unfused_gelu for m in model.modules() if isinstance(m, MLP))
        assert torch.allclose(model(ids, model.empty_past(2))[0], written, atol=1e-5, rtol=0)
        set_openvino_forms(model, False)
        assert not any(getattr(m, "unfused_gelu", False) or getattr(m, "fusable", False) for m in model.modules())
