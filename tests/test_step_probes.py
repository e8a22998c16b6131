"""The logit lens and what-if: every layer's view of a step, and a step under other settings."""

from __future__ import annotations

import pytest
import torch

from chatapp.chat.settings import SamplingSettings
from chatapp.engine.engine import Engine
from chatapp.runtime.llama_decoder import LlamaDecoder
from chatapp.runtime.transformers_decoder import TransformersDecoder
from tests.conftest import tiny_llama
from tests.test_int4_kernel import _int4_model_and_float_twin, needs_kernel

FLOAT32_LAYER_TOLERANCE = 1e-5
"""Our decoder and transformers' modules on float32 weights: the same arithmetic in another
order (see test_fast_paths.FLOAT32_DECODER_TOLERANCE)."""
MESSAGES = [{"role": "user", "content": "Name a fruit."}]


def _layers_after(decoder, prompt: list[int], token: int) -> torch.Tensor:
    decoder.prefill(prompt)
    return decoder.decode_one_layers(token)


def test_every_layer_s_view_is_the_same_on_our_decoder_and_transformers_modules():
    model = tiny_llama(num_hidden_layers=3)
    prompt = list(range(20, 35))
    ours = _layers_after(LlamaDecoder(model), prompt, 99)  # (layers, d_model)
    theirs = _layers_after(TransformersDecoder(model), prompt, 99)
    assert ours.shape == theirs.shape == (3, 64)
    assert (ours - theirs).abs().max() < FLOAT32_LAYER_TOLERANCE
    # The last row is the step's context vector: what decode_one gives, and the cache goes on alike.
    plain = LlamaDecoder(model)
    plain.prefill(prompt)
    assert (plain.decode_one(99) - ours[-1]).abs().max() < FLOAT32_LAYER_TOLERANCE
    lens_decoder = LlamaDecoder(model)
    _layers_after(lens_decoder, prompt, 99)
    assert torch.equal(lens_decoder.decode_one(7), plain.decode_one(7))


def test_transformers_modules_give_the_layers_through_the_final_norm():
    model = tiny_llama(num_hidden_layers=3)
    with torch.inference_mode():
        reference = model(torch.tensor([list(range(20, 36))]), output_hidden_states=True).hidden_states
    layers = _layers_after(TransformersDecoder(model), list(range(20, 35)), 35)
    # hidden_states: the embeddings, then each layer's output; the last one through the final norm.
    expected = torch.stack([model.model.norm(h[0, -1]) for h in reference[1:-1]] + [reference[-1][0, -1]])
    assert (layers - expected).abs().max() < FLOAT32_LAYER_TOLERANCE


@needs_kernel
def test_the_lens_on_the_int4_kernel_is_the_kernel_s_own_step():
    model, _ = _int4_model_and_float_twin()
    lens, plain = LlamaDecoder(model), LlamaDecoder(model)
    for decoder in (lens, plain):
        decoder.prefill(list(range(10, 20)))
        decoder.decode_one(7)  # waits for the kernel: from here on, steps run on it
    layers, hidden = lens.decode_one_layers(8), plain.decode_one(8)
    assert "int4 kernel" in lens.kind
    assert torch.equal(layers[-1], hidden)  # one layer at a time is the same code as a whole step
    assert torch.equal(lens.decode_one(9), plain.decode_one(9))


@pytest.mark.model
@pytest.mark.parametrize("fast", [True, False], ids=["our decoder", "transformers modules"])
def test_the_lens_s_last_layer_is_the_step_s_own_distribution(default_model, fast):
    engine = Engine(default_model)
    if not fast:
        engine.decoder = TransformersDecoder(default_model.model)
    engine.lens = True
    steps = list(engine.start_turn(MESSAGES, SamplingSettings(temperature=0.8, top_k=20, seed=3, max_new_tokens=6)))
    layers = default_model.model.config.num_hidden_layers
    for step in steps:
        assert [entry.layer for entry in step.lens] == list(range(1, layers + 1))
        last = step.lens[-1]
        # The step's raw distribution's best token, and its probability to the last bit.
        best = max(step.top, key=lambda c: c.raw_prob)
        assert (last.token_id, last.prob) == (best.token_id, best.raw_prob)
        assert all(0.0 < entry.prob <= 1.0 for entry in step.lens)
    first = steps[0].lens[-1]
    assert steps[0].to_json()["lens"][-1] == {"layer": layers, "token_id": first.token_id, "text": first.text,
                                              "prob": first.prob}
    # Without the lens, the same seed writes the same reply.
    engine.lens = False
    again = list(engine.start_turn(MESSAGES, SamplingSettings(temperature=0.8, top_k=20, seed=3, max_new_tokens=6)))
    assert [s.token_id for s in again] == [s.token_id for s in steps] and again[0].lens == ()


@pytest.mark.model
def test_the_lens_at_an_earlier_step_is_that_step_run_again(default_model):
    engine = Engine(default_model)
    settings = SamplingSettings(temperature=0.7, top_k=40, seed=11, max_new_tokens=6)
    steps = list(engine.start_turn(MESSAGES, settings))
    lens = engine.lens_at(MESSAGES, [s.token_id for s in steps[:3]], settings)
    best = max(steps[3].top, key=lambda c: c.raw_prob)
    assert lens[-1].token_id == best.token_id and lens[-1].prob == pytest.approx(best.raw_prob, rel=2e-3)
    assert engine.lens is False  # only while it runs


@pytest.mark.model
def test_what_if_recomputes_the_step_under_other_settings(default_model):
    engine = Engine(default_model)
    settings = SamplingSettings(temperature=0.9, top_k=30, seed=5, max_new_tokens=5)
    steps = list(engine.start_turn(MESSAGES, settings))
    prefix, step = [s.token_id for s in steps[:2]], steps[2]
    same = engine.what_if_at(MESSAGES, prefix, settings, settings, step.token_id)
    assert same.chosen.token_id == step.token_id and same.chosen_before == pytest.approx(step.prob, abs=2e-3)
    assert same.chosen.prob == same.chosen_before and same.kept_before == same.kept_after == 30
    assert same.entered == same.dropped == ()
    assert same.chosen.raw_prob == pytest.approx(step.raw_prob, rel=2e-3)

    narrower = SamplingSettings(temperature=0.9, top_k=5, seed=5)
    cut = engine.what_if_at(MESSAGES, prefix, settings, narrower, step.token_id)
    assert cut.kept_after == 5 and len(cut.dropped) == 5 and cut.entered == ()
    assert {c.token_id for c in cut.dropped}.isdisjoint(c.token_id for c in cut.top)
    # The numbers are those a reply with the new settings would have at that step.
    full = list(engine.start_turn(MESSAGES, SamplingSettings(temperature=0.9, top_k=5, seed=5, max_new_tokens=1),
                                  reply_prefix_ids=prefix))[0]
    assert [c.token_id for c in cut.top] == [c.token_id for c in full.top][:5]
    assert [c.prob for c in cut.top] == pytest.approx([c.prob for c in full.top][:5], abs=2e-3)

    wider = SamplingSettings(temperature=1.5, top_k=0, top_p=0.95)
    grown = engine.what_if_at(MESSAGES, prefix, settings, wider, step.token_id)
    assert grown.kept_after > 30 and len(grown.entered) == 5 and grown.dropped == ()
    greedy = engine.what_if_at(MESSAGES, prefix, settings, SamplingSettings(temperature=0), step.token_id)
    assert greedy.kept_after == 1 and greedy.top[0].prob == 1.0
    assert greedy.chosen.prob == (1.0 if step.token_id == greedy.top[0].token_id else 0.0)


def test_what_if_with_the_same_settings_changes_nothing_on_random_logits():
    from chatapp.engine.step_probes import what_if

    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    settings = SamplingSettings(temperature=0.7, top_k=50, top_p=0.9, min_p=0.02, repetition_penalty=1.3)
    previous = torch.tensor([3, 17, 500])
    numbers = what_if(logits, previous, settings, settings, 17, 10)
    assert numbers.chosen_before == numbers.chosen[1] and numbers.kept_before == numbers.kept_after
    assert numbers.entered == numbers.dropped == []
    off = what_if(logits, previous, settings, SamplingSettings(temperature=0.7, top_k=50), 17, 10)
    assert off.kept_after == 50 and off.kept_after > off.kept_before and len(off.entered) == 5
