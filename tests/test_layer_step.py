"""The native decode step (`chatapp.runtime.layer_step`, the block kernel's `decode_layers`)
against `LayeredDecoder`'s own torch operations: every layer's output at every step, for each
architecture's tiny GGUF file (mixed block types, windows crossed) and for float32 models."""

from __future__ import annotations

import pytest
import torch

from chatapp.loading.gguf_native import load_native
from chatapp.runtime import block_kernel
from chatapp.runtime.decoder_choice import open_decoder
from chatapp.runtime.layered_decoder import LayeredDecoder
from tests.test_model_parity import tiny_gemma2
from tests.tiny_gguf import ARCHITECTURES, write_tiny_gguf

pytestmark = pytest.mark.skipif(block_kernel.ops() is None, reason="no C++ compiler for the block kernel")

TOLERANCE = 1e-5
"""Largest difference between the two, relative to the largest value (float32 sums in another order)."""
PROMPT = [5, 17, 99, 240, 3]
STEPS = [77, 150, 9, 11, 210, 42, 8, 201, 4, 66]
"""Ten decode steps: past the tiny models' windows of 4 and 8 tokens."""


@torch.inference_mode()
def _every_layer(decoder: LayeredDecoder, native: bool) -> torch.Tensor:
    """Every layer's output (through the final norm) at each decode step after the prompt:
    `(steps, layers, d_model)`, natively or through the torch operations."""
    kept = decoder.native
    decoder.native = kept if native else None
    try:
        decoder.reset()
        decoder.prefill(PROMPT)
        return torch.stack([decoder.decode_one_layers(token) for token in STEPS])
    finally:
        decoder.native = kept


def _assert_same(decoder: LayeredDecoder) -> None:
    native, plain = _every_layer(decoder, True), _every_layer(decoder, False)
    assert (native - plain).abs().max() <= TOLERANCE * plain.abs().max(), (native - plain).abs().max()


@pytest.fixture(scope="module")
def gguf_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-gguf-step")


def _native_model(arch: str, folder, **kwargs):
    from transformers import AutoConfig

    path, _ = write_tiny_gguf(arch, folder, **kwargs)
    return load_native(path, AutoConfig.from_pretrained(path.parent, gguf_file=path.name))[0]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_native_step_equals_the_torch_operations(arch, gguf_folder):
    decoder = open_decoder(_native_model(arch, gguf_folder))
    assert decoder.native is not None, decoder.native_reason
    assert "native" in decoder.kind
    _assert_same(decoder)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("block_types", [["Q5_1", "Q5_K", "Q8_0"], ["Q5_0"]], ids=["8-bit", "5-bit"])
def test_native_step_with_fused_products(arch, block_types, gguf_folder):
    """q/k/v and gate/up as one product each (one slot), Qwen2's biases on them, in the 8-bit
    layout and the 5-bit one."""
    decoder = open_decoder(_native_model(arch, gguf_folder, block_types=block_types))
    assert all(fused is not None for fused in decoder.qkv) and decoder.native is not None
    _assert_same(decoder)


def test_native_step_with_float_weights_and_soft_capping():
    """A float32 model (Gemma 2: soft-capped attention, sandwich norms, windows of 8) runs its
    float matrices in the native step too."""
    decoder = open_decoder(tiny_gemma2())
    assert isinstance(decoder, LayeredDecoder) and decoder.native is not None, decoder.native_reason
    _assert_same(decoder)


def test_a_wrong_description_would_be_seen(gguf_folder):
    """The comparison can fail: the native step told another attention scale differs."""
    decoder = open_decoder(_native_model("qwen3", gguf_folder))
    plain = _every_layer(decoder, False)
    decoder.native.floats[-1] *= 1.5
    native = _every_layer(decoder, True)
    assert (native - plain).abs().max() > TOLERANCE * plain.abs().max()


def test_other_dtypes_keep_the_torch_operations():
    decoder = open_decoder(tiny_gemma2().to(torch.bfloat16))
    assert decoder.native is None and decoder.native_reason == "torch.bfloat16 weights"
    assert "native" not in decoder.kind


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_a_whole_step_in_one_call_makes_the_python_step_s_choices(arch, gguf_folder, monkeypatch):
    """`decode_choosing` (the block kernel's `decode_step`: embedding row, layers, final norm, LM
    head, soft-cap and choice in one call) against `decode_one` then `choose_token` on the block
    kernel's steps: the same context vector and the same token and numbers at every step, the
    draws from generators seeded alike (the rotary tables made 4 positions at a time, so the
    steps cross from one batch of them to the next)."""
    from chatapp.runtime import layer_step

    monkeypatch.setattr(layer_step, "TABLE_POSITIONS", 4)
    model = _native_model(arch, gguf_folder)
    decoder = open_decoder(model)
    fused, python = steps_both_ways(model, decoder, model.get_output_embeddings())
    for (hidden, choice), (expected_hidden, expected) in zip(fused, python):
        assert torch.equal(hidden, expected_hidden)
        assert choice == expected


def steps_both_ways(model, decoder: LayeredDecoder, head) -> list[list]:
    """`STEPS` after `PROMPT`, each step's (context vector, choice) by `decode_choosing` and by
    `decode_one` then `choose_token` (the block kernel's LM head steps), with generators seeded
    alike; `[fused steps, Python steps]`."""
    from chatapp.chat.settings import SamplingSettings
    from chatapp.lm_head import choice_from, choose_token, native_choice_settings, use_kernels

    ops = block_kernel.ops()
    use_kernels(ops.top_k, ops.kept_ids, block_kernel.lm_head_steps()[2], ops.choose_token)
    settings = SamplingSettings(temperature=1.3, top_k=40, top_p=0.95, repetition_penalty=1.1)
    try:
        answers = []
        for fused in (True, False):
            decoder.reset()
            decoder.prefill(PROMPT)
            generator, previous, steps = torch.Generator().manual_seed(3), torch.tensor(PROMPT), []
            for token in STEPS:
                if fused:
                    answer = decoder.decode_choosing(token, head, native_choice_settings(settings, generator, 5, previous))
                    assert answer is not None
                    hidden, choice = answer[3], choice_from(answer[0])
                else:
                    hidden = decoder.decode_one(token)
                    choice = choose_token(model, hidden, settings, lambda device: generator, 5, previous)
                steps.append((hidden, choice))
                previous = torch.cat([previous, torch.tensor([token])])
            answers.append(steps)
    finally:
        use_kernels()
    return answers
