"""The plain modules a natively read GGUF model is built from (`chatapp.loading.plain_model`)
compute what transformers' modules compute: the rotary tables for every rotary kind the seven
architectures' configs name (plain, linear, Llama 3, YaRN, dynamic, Phi-3's long and partial
ones, Gemma 3's table per layer type), the norms and the MLP. The whole model's parity with
transformers' GGUF loading is in tests/test_gguf_native.py."""

from __future__ import annotations

import pytest
import torch

from chatapp.loading.plain_model import RMSNorm, build_plain_model

LONG = {"original_max_position_embeddings": 64}
ROTARY_CASES = {
    "llama default": ("llama", {}),
    "llama linear": ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    "llama 3": ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, **LONG}}),
    "qwen2 yarn": ("qwen2", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, **LONG}}),
    "mistral dynamic": ("mistral", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}),
    "phi3 partial": ("phi3", {"partial_rotary_factor": 0.5}),
    "phi3 long": ("phi3", {"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0 + i / 32 for i in range(16)],
                                            "long_factor": [2.0 + i / 16 for i in range(16)]},
                           "original_max_position_embeddings": 64}),
    "gemma3 per layer type": ("gemma3_text", {"rope_scaling": {"rope_type": "linear", "factor": 8.0}}),
}
"""Configs of each rotary kind: (model type, config overrides)."""


def _config(model_type: str, overrides: dict):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, hidden_size=128, intermediate_size=256, num_hidden_layers=6,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=32064, pad_token_id=0,
                                max_position_embeddings=128, **overrides)


def _transformers_model(config):
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


@pytest.mark.parametrize("case", sorted(ROTARY_CASES))
def test_rotary_tables_equal_transformers(case):
    config = _config(*ROTARY_CASES[case])
    plain = build_plain_model(config)
    assert plain is not None
    theirs = _transformers_model(config).model.rotary_emb
    ours = plain.model.rotary_emb
    x = torch.zeros(1, 1, 128)
    kinds = sorted(set(config.layer_types)) if config.model_type == "gemma3_text" else [None]
    # short positions, then past the original length (long and dynamic kinds change tables there)
    for positions in (torch.arange(0, 20)[None], torch.arange(90, 120)[None], torch.arange(0, 5)[None]):
        for kind in kinds:
            args = (x, positions) if kind is None else (x, positions, kind)
            for mine, expected in zip(ours(*args), theirs(*args)):
                assert torch.equal(mine, expected), (case, kind, positions[0, 0])


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_norms_and_mlp_equal_transformers(model_type):
    config = _config(model_type, {})
    plain, theirs = build_plain_model(config), _transformers_model(config)
    generator = torch.Generator().manual_seed(0)
    ours_layer, their_layer = plain.model.layers[0], theirs.model.layers[0]
    for name, module in ours_layer.named_modules():
        if isinstance(module, RMSNorm):
            weight = torch.randn(module.weight.shape, generator=generator) * 0.1
            expected = their_layer.get_submodule(name)
            module.weight = torch.nn.Parameter(weight, requires_grad=False)
            expected.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)
            x = torch.randn(3, module.weight.shape[0], generator=generator)
            assert torch.equal(module(x), expected(x)), name
    for name in ("gate_proj", "up_proj", "down_proj"):
        mine, expected = getattr(ours_layer.mlp, name), getattr(their_layer.mlp, name)
        weight = torch.randn(mine.weight.shape, generator=generator) * 0.1
        mine.weight = torch.nn.Parameter(weight, requires_grad=False)
        expected.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)
    x = torch.randn(2, 128, generator=generator)
    assert torch.equal(ours_layer.mlp(x), their_layer.mlp(x))
    assert ours_layer.self_attn.scaling == their_layer.self_attn.scaling


@pytest.mark.parametrize("model_type", ["mistral", "phi3", "qwen2", "gemma2", "gemma3_text"])
def test_every_layer_s_window_is_the_one_transformers_attends_with(model_type):
    """Mistral and Phi-3 window every layer by the config (transformers builds their masks from
    it); Qwen2 and Gemma window the sliding layers of `layer_types`."""
    from chatapp.runtime.layered_decoder import plan_layer

    overrides = {"sliding_window": 8}
    if model_type == "qwen2":
        overrides.update(use_sliding_window=True, max_window_layers=2)
    config = _config(model_type, overrides)
    plain = build_plain_model(config)
    windows = [plan_layer(layer, config, False).window for layer in plain.model.layers]
    types = getattr(config, "layer_types", None)
    if model_type in ("mistral", "phi3"):
        assert windows == [8] * config.num_hidden_layers
    else:
        assert windows == [8 if kind == "sliding_attention" else None for kind in types] and 8 in windows


def test_bidirectional_attention_is_declined():
    from chatapp.loading.plain_model import plain_model_reason

    config = _config("gemma3_text", {"use_bidirectional_attention": True})
    assert "bidirectional" in plain_model_reason(config) and build_plain_model(config) is None


def test_a_partial_rotary_embedding_is_applied_as_phi3_applies_it():
    from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb as theirs

    from chatapp.loading.plain_model import apply_rotary_pos_emb as ours

    generator = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 4, 5, 32, generator=generator), torch.randn(1, 2, 5, 32, generator=generator)
    for rotary in (16, 32):  # half of each head, and all of it
        cos, sin = torch.randn(1, 5, rotary, generator=generator), torch.randn(1, 5, rotary, generator=generator)
        for mine, expected in zip(ours(q, k, cos, sin), theirs(q, k, cos, sin)):
            assert torch.equal(mine, expected)
