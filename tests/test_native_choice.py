"""The block kernel's `choose_token` (the LM head's steps after the projection, in one call) held to
the Python steps of `chatapp.lm_head.choose_token`: the same distribution within 1e-6, the same
draws from the same seed, the same candidates and numbers, on each build this CPU runs, for every
sampling setting; an engine's turn on the real default model gives the same steps both ways, and
so does the int4 kernel's whole decode step (`decode_step`: layers, LM head and choice in one call)."""

from __future__ import annotations

import types

import pytest
import torch

from chatapp import lm_head
from chatapp.chat.settings import SamplingSettings
from chatapp.engine.engine import Engine
from chatapp.engine.loader import load_engine
from chatapp.lm_head import NonFiniteLogitsError, choose_token, native_choice, probabilities_from_logits, use_kernels
from chatapp.runtime import block_kernel, int4_kernel
from chatapp.runtime.quantize import int4_supported
from tests.conftest import block_kernel_build

VOCAB = 3_000
SETTINGS = [
    SamplingSettings(),  # the seed's: temperature 0.7, top-k 50
    SamplingSettings(temperature=1.0, top_k=0),  # every token kept: the draw runs over the whole row
    SamplingSettings(temperature=0.0),  # greedy
    SamplingSettings(temperature=0.8, top_k=40, top_p=0.9),
    SamplingSettings(temperature=0.9, top_k=0, top_p=0.8, min_p=0.02),
    SamplingSettings(temperature=0.7, top_k=60, min_p=0.1),
    SamplingSettings(temperature=0.7, top_k=50, repetition_penalty=1.3),
    SamplingSettings(temperature=1.3, top_k=VOCAB + 5),  # k beyond the vocabulary: no cut
    SamplingSettings(temperature=0.5, top_k=2),  # fewer kept tokens than candidates shown
    SamplingSettings(temperature=1.0, top_k=1_000),  # kept tokens a third of the vocabulary
]


class _Head(torch.nn.Module):
    """The smallest module tree `output_logits` reads: a real linear output embedding."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.head.weight.data.copy_(weight)
        self.config = types.SimpleNamespace(model_type="llama")

    def get_output_embeddings(self):
        return self.head


def _builds() -> list[str]:
    return [build for build in block_kernel.runnable_builds() if build != "generic"] + ["generic"]


@pytest.fixture(params=_builds())
def steps(request):
    """The LM head's kernels of one build, as the engine takes them up."""
    ops = block_kernel_build(request.param)
    raw_summary = ops.raw_summary if request.param == "avx512" else None
    yield ops.top_k, ops.kept_ids, raw_summary, ops.choose_token
    use_kernels()


def _steps_both_ways(steps, settings: SamplingSettings, count: int, seed: int, top_n: int = 10):
    """`count` steps from random context vectors through the Python steps and the native call, each
    with its own generator seeded alike; the penalty's ids grow with the chosen tokens."""
    torch.manual_seed(seed)
    model = _Head(torch.randn(VOCAB, 32) * 0.6)
    model.head.weight.data[7] = model.head.weight.data[3]  # two tokens with equal logits at every step
    hiddens = torch.randn(count, 32)
    answers = []
    for native in (False, True):
        use_kernels(*steps[:3], steps[3] if native else None)
        generator = torch.Generator().manual_seed(seed)
        previous = torch.tensor([3, 11, 12, 11], dtype=torch.long)
        choices = []
        for hidden in hiddens:
            choice = choose_token(model, hidden, settings, lambda device: generator, top_n, previous, (5, 3))
            choices.append(choice)
            previous = torch.cat([previous, previous.new_tensor([choice.token_id])])
        answers.append(choices)
    use_kernels()
    return answers


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: s.describe_sampling())
def test_the_native_choice_makes_the_python_steps_choices(steps, settings):
    python, native = _steps_both_ways(steps, settings, count=40, seed=3)
    for expected, got in zip(python, native):
        assert got.token_id == expected.token_id and got.rank == expected.rank
        assert got.top_ids == expected.top_ids
        torch.testing.assert_close(torch.tensor([got.prob, *got.top_probs]), torch.tensor([expected.prob, *expected.top_probs]),
                                   rtol=0, atol=1e-6)
        assert [got.raw_prob, *got.top_raw_probs] == [expected.raw_prob, *expected.top_raw_probs]
        assert got.entropy == pytest.approx(expected.entropy, abs=1e-9)
        assert [(i, rank) for i, _, _, rank in got.watched] == [(i, rank) for i, _, _, rank in expected.watched]
        assert [p for w in got.watched for p in w[1:3]] == pytest.approx([p for w in expected.watched for p in w[1:3]], abs=1e-6)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: s.describe_sampling())
def test_the_native_distribution_is_the_python_distribution(steps, settings):
    generator = torch.Generator().manual_seed(8)
    for _ in range(5):
        logits = torch.randn(VOCAB, generator=generator) * 4
        previous = torch.randint(VOCAB, (20,), generator=generator)
        expected = probabilities_from_logits(logits, settings.temperature, settings.top_k, top_p=settings.top_p,
                                             min_p=settings.min_p, repetition_penalty=settings.repetition_penalty,
                                             previous_ids=previous)
        _, kept, kept_probs = steps[3](logits, settings.temperature, settings.top_k, settings.top_p or 1.0,
                                       settings.min_p or 0.0, settings.repetition_penalty or 1.0, previous,
                                       torch.Generator(), 5)
        assert torch.equal(kept, torch.nonzero(expected).squeeze(-1))
        torch.testing.assert_close(kept_probs, expected[kept], rtol=0, atol=1e-6)


def test_same_seed_same_draws_different_seed_other_draws(steps):
    settings = SamplingSettings(temperature=1.5, top_k=200)
    first = _steps_both_ways(steps, settings, count=30, seed=11)[1]
    again = _steps_both_ways(steps, settings, count=30, seed=11)[1]
    other = _steps_both_ways(steps, settings, count=30, seed=12)[1]
    assert [c.token_id for c in first] == [c.token_id for c in again]
    assert [c.token_id for c in first] != [c.token_id for c in other]


def test_non_finite_logits_are_refused_as_in_python(steps):
    model = _Head(torch.randn(VOCAB, 32))
    model.head.weight.data[5, 0] = float("nan")
    use_kernels(*steps)
    with pytest.raises(NonFiniteLogitsError):
        native_choice(model, torch.ones(32), SamplingSettings(), lambda device: torch.Generator(), 5)
    for bad in (float("inf"), -float("inf"), float("nan")):
        logits = torch.zeros(100)
        logits[99] = bad
        assert steps[3](logits, 0.7, 50, 1.0, 0.0, 1.0, torch.empty(0, dtype=torch.long), None, 5)[0].numel() == 0


def test_an_engine_turn_is_the_same_with_the_native_choice(default_model):
    """The real default model, a seeded turn: every step's token and numbers alike both ways."""
    if block_kernel.lm_head_steps() is None and block_kernel.ops() is None:
        pytest.skip("no C++ compiler for the block kernel")
    steps = block_kernel.lm_head_steps()
    messages = [{"role": "user", "content": "Name three colours."}]
    settings = SamplingSettings(max_new_tokens=24, seed=5, temperature=0.9, top_p=0.95)
    turns = []
    for native in (False, True):
        engine = Engine(default_model, top_n=8)
        engine.take_up_kernels = lambda: use_kernels(*steps[:3], steps[3] if native else None)
        turns.append(list(engine.start_turn(messages, settings)))
    use_kernels()
    python, native = turns
    assert [s.token_id for s in python] == [s.token_id for s in native]
    for expected, got in zip(python, native):
        assert [c.token_id for c in got.top] == [c.token_id for c in expected.top]
        assert got.prob == pytest.approx(expected.prob, abs=1e-6) and got.raw_prob == expected.raw_prob
        assert got.rank == expected.rank and got.entropy == pytest.approx(expected.entropy, abs=1e-9)
    assert lm_head._Kernels.choose is None


needs_int4_kernel = pytest.mark.skipif(
    not (int4_supported() and int4_kernel.load()), reason=f"chatapp's int4 kernel is not available here: {int4_kernel.failure()}"
)


def _turn(engine: Engine, settings: SamplingSettings, fused: bool) -> list[tuple]:
    engine.reset()
    decoder = engine.decoder
    calls = []

    def decode_choosing(token_id, head, choice):
        answer = type(decoder).decode_choosing(decoder, token_id, head, choice) if fused else None
        calls.append(answer is not None)
        return answer

    decoder.decode_choosing = decode_choosing
    try:
        steps = list(engine.start_turn([{"role": "user", "content": "Write a story about a dragon."}], settings))
    finally:
        del decoder.decode_choosing
    assert calls and all(calls) == fused  # every later step in one call, or none
    return [(s.token_id, s.prob, s.raw_prob, s.rank, s.entropy, [(c.token_id, c.prob, c.raw_prob) for c in s.top])
            for s in steps]


@needs_int4_kernel
@pytest.mark.parametrize("settings", [
    SamplingSettings(max_new_tokens=40, seed=3),
    SamplingSettings(max_new_tokens=40, seed=4, temperature=1.1, top_p=0.9, min_p=0.02, repetition_penalty=1.2),
    SamplingSettings(max_new_tokens=20, temperature=0.0),
], ids=lambda s: s.describe_sampling())
def test_the_int4_kernel_s_whole_step_makes_the_python_step_s_choices(settings):
    """The default model on the int4 kernel: a turn whose decode steps each run as one call
    (`decode_step`: layers, LM head, choice) gives every step's token and numbers exactly as the
    Python step does (`decode_one`, then `choose_token` on the block kernel's steps)."""
    engine = load_engine("default", "cpu")
    assert engine.decoder.kernel_settled.wait(60)
    block_kernel_build(block_kernel.build_for_cpu())
    engine.take_up_kernels()
    assert _turn(engine, settings, fused=True) == _turn(engine, settings, fused=False)


@pytest.mark.parametrize("temperature", [0.7, 1.3, 0.33])
def test_the_kernel_divides_by_the_temperature_exactly_as_torch_does(steps, temperature):
    """The kernel's own division (no torch parallel region in a decode step) gives torch's
    quotients bit for bit: with every token kept, its probabilities are torch's softmax of
    torch's division."""
    choose = steps[3]
    logits = torch.randn(VOCAB, generator=torch.Generator().manual_seed(17)) * 4
    _, kept, kept_probs = choose(logits, temperature, 0, 1.0, 0.0, 1.0, torch.empty(0, dtype=torch.long), None, 5)
    expected = torch.softmax(logits.unsqueeze(0) / temperature, -1)[0]
    assert kept.numel() > VOCAB // 2 and torch.equal(kept_probs, expected[kept])
