"""An LM head in wider GGUF blocks read through a 4-bit copy (`chatapp.runtime.requantized_head`):
the copy's layout and rounding, the head's exact rows, and the decode step that chooses through
it (the block kernel's layers, then the int4 kernel's `choose_from_head`) against the Python
step, on the tiny GGUF files of every architecture."""

from __future__ import annotations

import threading

import pytest
import torch

from chatapp.runtime import block_kernel, int4_kernel, int4_layout
from chatapp.runtime.block_linear import BlockLinear
from chatapp.runtime.decoder_choice import open_decoder
from chatapp.runtime.int4_layout import pack, reference_int4_linear, requantized
from chatapp.runtime.quantize import ZERO_OFFSET, int4_blocks
from chatapp.runtime.requantized_head import RequantizedHead, requantizable
from tests.test_layer_step import _native_model, steps_both_ways
from tests.tiny_gguf import ARCHITECTURES

pytestmark = pytest.mark.skipif(block_kernel.ops() is None, reason="no C++ compiler for the block kernel")


@pytest.fixture
def int4():
    """The tests that read through the copy need chatapp's int4 kernel (AVX512-VNNI, a compiler)."""
    if int4_kernel.wanted() is not None or not int4_kernel.load():
        pytest.skip("no int4 kernel here")


EXACT_TOP = 16
"""Rows recomputed exactly in these tests: well under the tiny vocabulary's 384."""


@pytest.fixture(scope="module")
def gguf_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-gguf-requantized")


def _head(arch: str, folder) -> tuple[object, BlockLinear]:
    model = _native_model(arch, folder)
    return model, model.get_output_embeddings()


def _four_bit(model, exact_top: int = EXACT_TOP) -> RequantizedHead:
    """The model's head replaced by a `RequantizedHead` with its copy made (synchronously)."""
    head = RequantizedHead(model.get_output_embeddings(), exact_top)
    head.kernel_parts = requantized(head.exact_blocks)
    model.set_output_embeddings(head)
    return head


def test_the_copy_is_the_whole_weight_rounded_in_slices(gguf_folder, monkeypatch):
    _, head = _head("llama", gguf_folder)
    exact = head.weights.dequantize()
    monkeypatch.setattr(int4_layout, "REQUANTIZED_ROWS", 40)  # slices that do not divide the rows
    parts = requantized(head.weights)
    _, codes, scale, low = int4_blocks(exact)
    whole = pack(codes.reshape(exact.shape), scale.squeeze(-1), (low + ZERO_OFFSET * scale).squeeze(-1))
    for part, expected in zip(parts, whole):
        assert torch.equal(part, expected)
    # and it is a 4-bit rounding of the exact weights: each within half a level (and bfloat16's rounding)
    eye = torch.eye(exact.shape[1])
    rebuilt = reference_int4_linear(eye, *parts).T  # (N, K): the copy's weights
    level = scale.expand(-1, -1, 32).reshape(exact.shape)
    largest = exact.abs().reshape(*scale.shape[:2], 32).amax(-1, keepdim=True).expand(-1, -1, 32).reshape(exact.shape)
    assert bool(((rebuilt - exact).abs() <= 0.5 * level + 2**-7 * largest + 1e-6).all())  # bfloat16 zeros and scales
    assert not torch.equal(rebuilt, exact)


def test_stopping_between_slices_gives_nothing(gguf_folder, monkeypatch):
    _, head = _head("llama", gguf_folder)
    monkeypatch.setattr(int4_layout, "REQUANTIZED_ROWS", 64)
    calls = []
    assert requantized(head.weights, stop=lambda: calls.append(1) or len(calls) > 2) is None


def test_the_best_rows_and_watched_ones_are_exact(gguf_folder, int4):
    model, blocks = _head("gemma3", gguf_folder)
    head = _four_bit(model)
    hidden = torch.randn(blocks.in_features, generator=torch.Generator().manual_seed(0))
    exact = blocks(hidden)
    watched = torch.argsort(exact)[:3]  # the three worst rows: never among the best
    head.always_exact = watched
    logits = head(hidden)
    best = torch.topk(logits, EXACT_TOP).indices
    assert set(best.tolist()) == set(torch.topk(exact, EXACT_TOP).indices.tolist())
    torch.testing.assert_close(logits[best], exact[best], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[watched], exact[watched], rtol=1e-5, atol=1e-5)
    rest = torch.ones_like(exact, dtype=torch.bool)
    rest[best], rest[watched] = False, False
    assert not torch.equal(logits[rest], exact[rest])  # the tail is the 4-bit pass's
    assert (logits[rest] - exact[rest]).abs().max() < 0.1 * exact.abs().max()


def test_several_context_vectors_and_an_unready_copy_read_the_exact_head(gguf_folder):
    model, blocks = _head("qwen2", gguf_folder)
    head = RequantizedHead(blocks, EXACT_TOP)
    hidden = torch.randn(3, blocks.in_features)
    assert torch.equal(head(hidden[0]), blocks(hidden[0]))  # no copy yet
    head.kernel_parts = requantized(blocks.weights)
    assert torch.equal(head(hidden), blocks(hidden))


def test_only_large_heads_in_wide_blocks_are_copied(gguf_folder, monkeypatch, int4):
    from chatapp.runtime import requantized_head

    _, four = _head("gemma3", gguf_folder)  # its head is in Q4_K blocks
    assert four.weights.bits == 4 and not requantizable(four, min_rows=1)
    _, five = _head("phi3", gguf_folder)  # Q5_0: a copy would read a tenth fewer bytes
    assert five.weights.bits == 5 and not requantizable(five, min_rows=1)
    model, head = _head("qwen2", gguf_folder)  # Q8_0
    assert head.weights.bits == 8 and not requantizable(head)  # 384 rows: too few to pay
    assert requantizable(head, min_rows=1)
    monkeypatch.setattr(requantized_head, "REQUANTIZE_FROM_ROWS", 1)
    decoder = open_decoder(model)
    installed = model.get_output_embeddings()
    assert isinstance(installed, RequantizedHead) and "4-bit" in decoder.kind
    assert installed.settled.wait(60) and installed.kernel_parts is not None


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_the_decode_step_through_the_copy_makes_the_python_step_s_choices(arch, gguf_folder, int4):
    """`decode_choosing` with a `RequantizedHead` (the block kernel's step to the context vector,
    then the int4 kernel's `choose_from_head`: 4-bit pass, exact rows, soft-cap, choice) against
    `decode_one` then `choose_token`, which reads the same head in Python: the same context
    vector, token and numbers at every step, the draws from generators seeded alike."""
    model = _native_model(arch, gguf_folder)
    decoder = open_decoder(model)
    fused, python = steps_both_ways(model, decoder, _four_bit(model))
    for (hidden, choice), (expected_hidden, expected) in zip(fused, python):
        assert torch.equal(hidden, expected_hidden)
        assert choice == expected


def test_a_step_before_the_copy_is_made_reads_the_exact_head_in_one_call(gguf_folder):
    """`decode_choosing` with a `RequantizedHead` whose copy is not made (yet): the block kernel's
    whole step over the exact head, the Python step's choices."""
    model = _native_model("gemma2", gguf_folder)  # soft-capped
    decoder = open_decoder(model)
    head = RequantizedHead(model.get_output_embeddings(), EXACT_TOP)
    model.set_output_embeddings(head)
    fused, python = steps_both_ways(model, decoder, head)
    for (hidden, choice), (expected_hidden, expected) in zip(fused, python):
        assert torch.equal(hidden, expected_hidden)
        assert choice == expected
    assert head.kernel_parts is None


def test_a_process_that_is_exiting_keeps_the_exact_head(gguf_folder, monkeypatch):
    """No kernel thread starts once the interpreter is exiting (one still running stops between
    two slices, `test_stopping_between_slices_gives_nothing`): the head is settled and exact."""
    from chatapp.runtime import kernel_switch

    model, blocks = _head("qwen2", gguf_folder)
    head = RequantizedHead(blocks, EXACT_TOP)
    monkeypatch.setattr(kernel_switch._Threads, "exiting", threading.Event())
    kernel_switch._Threads.exiting.set()
    assert not kernel_switch.requantize_in_background(head)
    assert head.settled.is_set() and head.kernel_parts is None
    hidden = torch.randn(blocks.in_features)
    assert torch.equal(head(hidden), blocks(hidden))


@pytest.mark.model
def test_the_default_file_read_in_its_blocks_chooses_through_the_copy_as_through_the_exact_head(int4):
    """The default model's file on the GGUF-native path (`--quantize gguf`): its Q8_0 head of
    49,152 rows gets the copy, the model's notes say so, and greedy replies through the copy are
    the exact head's, token for token, the chosen tokens' raw probabilities within 2% of theirs."""
    from chatapp.chat.settings import SamplingSettings
    from chatapp.engine.loader import load_engine

    engine = load_engine("default", "cpu", quantize="gguf")
    head = engine.model.get_output_embeddings()
    assert isinstance(head, RequantizedHead) and head.note in engine.info.notes
    assert head.settled.wait(120) and head.kernel_parts is not None
    settings = SamplingSettings(temperature=0.0, max_new_tokens=24)
    messages = [{"role": "user", "content": "Name three colours and say why you like them."}]
    four_bit = list(engine.start_turn(messages, settings))
    parts, head.kernel_parts = head.kernel_parts, None
    try:
        engine.reset()
        exact = list(engine.start_turn(messages, settings))
    finally:
        head.kernel_parts = parts
    assert [step.token_id for step in four_bit] == [step.token_id for step in exact]
    for ours, theirs in zip(four_bit, exact):
        assert abs(ours.raw_prob - theirs.raw_prob) <= 0.02 * theirs.raw_prob


def test_with_the_kernel_built_the_first_call_waits_for_the_copy(gguf_folder, monkeypatch, int4):
    """A head whose copy is still being made (`wait`: the int4 kernel was built) answers its first
    call through the copy, once made, so every step of a session reads the same head."""
    from chatapp.runtime import kernel_switch

    model, blocks = _head("qwen2", gguf_folder)
    made = threading.Event()

    def slowly(weights, stop):
        made.wait(5)  # held until the head is already being called
        return requantized(weights, stop)

    monkeypatch.setattr(kernel_switch, "requantized", slowly)
    head = RequantizedHead(blocks, EXACT_TOP, wait=True)
    assert kernel_switch.requantize_in_background(head)
    hidden = torch.randn(blocks.in_features)
    threading.Timer(0.3, made.set).start()
    first = head(hidden)
    assert head.kernel_parts is not None
    assert torch.equal(first, head(hidden)) and not torch.equal(first, blocks(hidden))
