"""Our LM head and KV-cached loop against the model's own forward and `model.generate`."""

from __future__ import annotations

import pytest
import torch

from chatapp.chat.settings import SamplingSettings
from chatapp.engine.engine import Engine
from chatapp.lm_head import output_logits
from chatapp.runtime.decoder_choice import open_decoder
from chatapp.runtime.layered_decoder import LayeredDecoder
from chatapp.runtime.llama_decoder import LlamaDecoder
from chatapp.runtime.transformers_decoder import TransformersDecoder
from tests.conftest import tiny_llama

GREEDY_PROMPTS = [
    "Write a long story about a dragon who learns to cook.",
    "Explain in detail how a bicycle works.",
    "List twenty animals and describe each one.",
]
GREEDY_TOKENS = 32


def _own_last_logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids).logits[:, -1].float()  # (B, V)


def _our_last_logits(model, input_ids):
    with torch.no_grad():
        hidden = model.base_model(input_ids=input_ids).last_hidden_state[:, -1]  # (B, d_model)
        return output_logits(model, hidden)


@pytest.mark.model
def test_lm_head_logits_equal_default_model_logits(default_model):
    tok = default_model.tokenizer
    ids = tok("The quick brown fox jumps over the lazy dog", return_tensors="pt")["input_ids"]
    torch.testing.assert_close(
        _our_last_logits(default_model.model, ids), _own_last_logits(default_model.model, ids)
    )


def test_lm_head_logits_equal_model_logits_with_final_softcapping():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, final_logit_softcapping=5.0,
        attn_implementation="eager",
    )
    model = Gemma2ForCausalLM(config).eval()
    with torch.no_grad():  # large logits, so the softcap really bends them
        model.get_output_embeddings().weight.mul_(40.0)
    ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(1))
    ours, theirs = _our_last_logits(model, ids), _own_last_logits(model, ids)
    torch.testing.assert_close(ours, theirs)
    with torch.no_grad():
        plain = model.get_output_embeddings()(model.base_model(input_ids=ids).last_hidden_state[:, -1])
    assert not torch.allclose(plain, theirs), "softcapping must matter for this test to mean anything"


DECODERS = [TransformersDecoder, LlamaDecoder, LayeredDecoder]
"""Both ways of running the model: transformers' modules and our own decoder."""


def _assert_cached_equals_full(model, ids: list[int], split: int, decoder=TransformersDecoder):
    kv = decoder(model)
    hiddens = [kv.prefill(ids[:split])]
    for token in ids[split:]:
        hiddens.append(kv.decode_one(token))
    with torch.no_grad():
        full = model(input_ids=torch.tensor([ids])).logits[0].float()  # (T, V)
    for offset, hidden in enumerate(hiddens):
        position = split - 1 + offset
        torch.testing.assert_close(output_logits(model, hidden), full[position], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("decoder", DECODERS)
def test_cached_decoding_equals_full_recompute_tiny(decoder):
    model = tiny_llama()
    ids = torch.randint(0, 1000, (40,), generator=torch.Generator().manual_seed(2)).tolist()
    _assert_cached_equals_full(model, ids, split=7, decoder=decoder)


@pytest.mark.model
@pytest.mark.parametrize("decoder", DECODERS)
def test_cached_decoding_equals_full_recompute_default(default_model, decoder):
    ids = default_model.tokenizer("Once upon a time, in a land far away, there lived a")["input_ids"]
    _assert_cached_equals_full(default_model.model, ids, split=4, decoder=decoder)


def test_our_decoder_grows_its_buffers_and_prefills_after_a_cached_prefix():
    # 300 tokens outgrow the first 256-token buffers; the second prefill runs after a cached
    # prefix (the masked path), as every later chat turn does.
    model = tiny_llama(num_key_value_heads=1)  # grouped-query attention, 4 query heads per key
    ids = torch.randint(0, 1000, (300,), generator=torch.Generator().manual_seed(4)).tolist()
    kv = LlamaDecoder(model)
    kv.prefill(ids[:200])
    hidden = kv.prefill(ids[200:])
    assert kv.capacity >= 300 and len(kv) == 300
    with torch.no_grad():
        full = model(input_ids=torch.tensor([ids])).logits[0, -1]
    torch.testing.assert_close(output_logits(model, hidden), full, rtol=1e-4, atol=1e-4)


def test_our_decoder_leaves_the_model_itself_unchanged():
    model = tiny_llama()
    ids = torch.tensor([[5, 17, 99, 3]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        LlamaDecoder(model)  # fuses q/k/v and gate/up, repointing the model's layers at slices
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)


def tiny_gemma2():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
    )
    torch.manual_seed(0)
    return Gemma2ForCausalLM(config).eval()


def test_each_model_gets_the_decoder_that_covers_it():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=64, n_embd=32, n_layer=1, n_head=2)).eval()
    assert isinstance(open_decoder(tiny_llama()), LlamaDecoder)
    assert isinstance(open_decoder(tiny_gemma2()), LayeredDecoder)  # sandwich norms, soft-capping, windows
    assert isinstance(open_decoder(tiny_llama(attention_bias=True)), LayeredDecoder)  # biases: the modules' own
    assert isinstance(open_decoder(gpt2), TransformersDecoder)  # no layer plan for GPT-2


def test_layered_decoder_equals_full_recompute_across_windows_with_soft_capping():
    """Gemma 2 in float32 (the tiny GGUF tests hold the other architectures): soft-capped
    attention, windows of 8 crossed by a 20-token prefill and by decode steps after it."""
    model = tiny_gemma2()
    ids = torch.randint(0, 300, (26,), generator=torch.Generator().manual_seed(5)).tolist()
    kv = LayeredDecoder(model)
    kv.prefill(ids[:20])
    for at in range(20, 26):
        hidden = kv.decode_one(ids[at])
        with torch.no_grad():
            full = model(input_ids=torch.tensor([ids[: at + 1]])).logits[0, -1]
        torch.testing.assert_close(output_logits(model, hidden), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("decoder", DECODERS)
def test_crop_then_continue_equals_full_recompute(decoder):
    model = tiny_llama()
    ids = torch.randint(0, 1000, (30,), generator=torch.Generator().manual_seed(3)).tolist()
    kv = decoder(model)
    kv.prefill(ids)
    kv.keep(12)  # as a branch at position 12 would
    other = [5, 6, 7]
    hidden = kv.prefill(other)
    with torch.no_grad():
        full = model(input_ids=torch.tensor([ids[:12] + other])).logits[0, -1]
    torch.testing.assert_close(output_logits(model, hidden), full, rtol=1e-4, atol=1e-4)


@pytest.mark.model
@pytest.mark.parametrize("prompt", GREEDY_PROMPTS)
def test_greedy_reply_equals_model_generate(default_model, prompt):
    engine = Engine(default_model)
    messages = [{"role": "user", "content": prompt}]
    settings = SamplingSettings(temperature=0, max_new_tokens=GREEDY_TOKENS)
    ours = [step.token_id for step in engine.start_turn(messages, settings)]
    tok = default_model.tokenizer
    inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = default_model.model.generate(
            **inputs, do_sample=False, max_new_tokens=GREEDY_TOKENS, pad_token_id=tok.eos_token_id
        )
    theirs = out[0, inputs["input_ids"].shape[1] :].tolist()
    assert len(ours) == GREEDY_TOKENS, "the prompt should produce a long reply"
    assert ours == theirs


def test_layered_decoder_s_lens_ends_in_its_step():
    """The logit lens's last layer is the step's own context vector (the lens's contract)."""
    model = tiny_gemma2()
    ids = [3, 14, 15, 92, 65]
    one, every = LayeredDecoder(model), LayeredDecoder(model)
    one.prefill(ids)
    every.prefill(ids)
    hidden, layers = one.decode_one(35), every.decode_one_layers(35)
    assert layers.shape == (model.config.num_hidden_layers, model.config.hidden_size)
    torch.testing.assert_close(layers[-1], hidden, rtol=0, atol=1e-6)
