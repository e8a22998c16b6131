"""The GPU's decode step (`chatapp.engine.device_steps`), run on this CPU: the LM head's steps
without host reads give `top_k_reference`'s cut, torch.multinomial's draws and the Python path's
distribution and numbers; a turn of the real default model through it reads back to the host
once a step (`choice_from`'s copy) and waits on nothing else (`HostSyncProbe`), where the CPU's
path waits several times a step."""

from __future__ import annotations

import collections

import pytest
import torch

from chatapp.chat.settings import SamplingSettings
from chatapp.engine import turn as turn_module
from chatapp.engine.device_steps import choose_on_device, steps_on_device
from chatapp.engine.engine import Engine
from chatapp.engine.host_syncs import HostSyncProbe
from chatapp.lm_head import (
    NonFiniteLogitsError,
    choice_from,
    describe_choice,
    multinomial_without_sync,
    output_logits,
    probabilities_from_logits,
    top_k_by_sort,
    top_k_reference,
    use_kernels,
    watched_odds,
)
from tests.test_native_choice import SETTINGS, VOCAB, _Head

MESSAGES = [{"role": "user", "content": "Name three colours."}]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
"""Where the step's pieces are checked: also on a GPU, where there is one (`make gpu-check`)."""


@pytest.fixture(autouse=True)
def torch_steps():
    """The Python steps the device step is held to, not the block kernel's."""
    use_kernels()
    yield
    use_kernels()


@pytest.mark.parametrize("device", DEVICES)
def test_the_sorted_cut_is_the_reference_cut_ties_included(device):
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = torch.randint(-6, 6, (3, 400), generator=generator).float().to(device)  # many equal scores
        for k in (1, 5, 50, 399, 400):
            values, ids = top_k_by_sort(scores, k)
            expected_values, expected_ids = top_k_reference(scores, k)
            assert torch.equal(ids, expected_ids) and torch.equal(values, expected_values)


@pytest.mark.parametrize("device", DEVICES)
def test_the_draw_without_sync_is_torch_multinomial_s_draw(device):
    generator = torch.Generator().manual_seed(1)
    for seed in range(200):
        probs = torch.rand(500, generator=generator) ** 6
        probs[torch.rand(500, generator=generator) < 0.7] = 0.0
        if seed % 10 == 0:
            probs = torch.zeros(500).index_fill_(0, torch.tensor([seed]), 1.0)  # greedy's one-hot
        probs = (probs / probs.sum()).to(device)
        expected = torch.multinomial(probs, 1, generator=torch.Generator(device).manual_seed(seed))
        got = multinomial_without_sync(probs, torch.Generator(device).manual_seed(seed))
        assert torch.equal(got, expected)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: s.describe_sampling())
def test_without_host_reads_the_distribution_is_the_same(settings):
    generator = torch.Generator().manual_seed(8)
    for _ in range(5):
        logits = torch.randn(VOCAB, generator=generator) * 4
        logits[17] = logits[40]  # a tie the cut may fall across
        previous = torch.randint(VOCAB, (20,), generator=generator)
        both = [probabilities_from_logits(logits, settings.temperature, settings.top_k, top_p=settings.top_p,
                                          min_p=settings.min_p, repetition_penalty=settings.repetition_penalty,
                                          previous_ids=previous, host_reads=reads) for reads in (True, False)]
        torch.testing.assert_close(both[1], both[0], rtol=0, atol=1e-6)
        assert torch.equal(both[1] > 0, both[0] > 0)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: s.describe_sampling())
def test_the_device_step_makes_the_python_steps_numbers(settings):
    """Each step's draw is torch.multinomial's from the same generator state, and its numbers
    (candidates, both probabilities, rank, entropy, watched tokens) `describe_choice`'s."""
    torch.manual_seed(3)
    model = _Head(torch.randn(VOCAB, 32) * 0.6)
    model.head.weight.data[7] = model.head.weight.data[3]  # two tokens with equal logits at every step
    previous = torch.tensor([3, 11, 12, 11], dtype=torch.long)
    watch = (5, 3)
    for step, hidden in enumerate(torch.randn(30, 32)):
        numbers, token = choose_on_device(model, hidden, settings, lambda device: torch.Generator().manual_seed(step), 10,
                                          previous, torch.tensor(watch))
        got = choice_from(numbers, watch)
        logits = output_logits(model, hidden)
        probs = probabilities_from_logits(logits, settings.temperature, settings.top_k, top_p=settings.top_p,
                                          min_p=settings.min_p, repetition_penalty=settings.repetition_penalty,
                                          previous_ids=previous)
        drawn = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(step))[0]
        expected = describe_choice(drawn, probs, logits, 10)
        assert got.token_id == int(token) == expected.token_id and got.rank == expected.rank
        assert got.entropy == pytest.approx(expected.entropy, abs=1e-9)
        assert got.top_ids == expected.top_ids
        assert [got.prob, *got.top_probs] == pytest.approx([expected.prob, *expected.top_probs], abs=1e-6)
        assert [got.raw_prob, *got.top_raw_probs] == [expected.raw_prob, *expected.top_raw_probs]
        expected_watched = watched_odds(probs, logits, watch)
        assert [(i, rank) for i, _, _, rank in got.watched] == [(i, rank) for i, _, _, rank in expected_watched]
        assert [p for w in got.watched for p in w[1:3]] == pytest.approx([p for w in expected_watched for p in w[1:3]], abs=1e-6)
        previous = torch.cat([previous, token])


def test_non_finite_logits_or_probabilities_are_refused_after_the_copy():
    model = _Head(torch.randn(VOCAB, 32))
    tiny = SamplingSettings(temperature=1e-39)  # finite logits, infinite once divided by it
    numbers, _ = choose_on_device(model, torch.ones(32), tiny, lambda device: torch.Generator(), 5)
    with pytest.raises(NonFiniteLogitsError):
        choice_from(numbers)
    for bad in (float("nan"), float("inf")):
        model.head.weight.data[5, 0] = bad
        numbers, _ = choose_on_device(model, torch.ones(32), SamplingSettings(), lambda device: torch.Generator(), 5)
        with pytest.raises(NonFiniteLogitsError):
            choice_from(numbers)


def test_the_probe_sees_copies_between_devices_and_reads_back():
    """What it cannot see on a CPU (a copy to or from a GPU), from the operations' own arguments."""
    from chatapp.engine.host_syncs import _waits

    aten = torch.ops.aten
    cpu = torch.zeros(3)
    assert _waits(aten._to_copy.default, (cpu,), {"device": torch.device("cuda", 0)})
    assert not _waits(aten._to_copy.default, (cpu,), {"dtype": torch.float64})
    with HostSyncProbe() as probe:
        bool(cpu.sum() > 0)
        torch.tensor([1, 2])
        cpu[cpu > 0]
        cpu[0] = 1.0  # a number assigned by indexing: a fill, not a copy
    assert probe.waits == ["aten._local_scalar_dense.default", "aten.lift_fresh.default", "aten.index.Tensor"]


def test_only_a_gpu_decodes_with_the_device_step():
    assert not steps_on_device(torch.device("cpu"))
    assert steps_on_device(torch.device("cuda", 0)) and steps_on_device(torch.device("mps"))


def _turn(default_model, on_device: bool, settings: SamplingSettings, monkeypatch) -> tuple[list, list[str], int]:
    """A turn of the real model through the device step (or the CPU's path): its steps, the
    waits `HostSyncProbe` saw and how many times `choice_from` copied numbers to the host."""
    engine = Engine(default_model, top_n=8)
    engine.steps_on_device = on_device
    copies = []

    def counted(numbers, watch_ids=()):
        copies.append(1)
        return choice_from(numbers, watch_ids)

    monkeypatch.setattr(turn_module, "choice_from", counted)
    turn = engine.start_turn(MESSAGES, settings)
    with HostSyncProbe() as probe:
        steps = list(turn)
    return steps, probe.waits, len(copies)


@pytest.mark.model
def test_a_device_turn_reads_back_once_a_step(default_model, monkeypatch):
    settings = SamplingSettings(max_new_tokens=12, seed=5, temperature=0.9, top_p=0.9, min_p=0.05,
                                repetition_penalty=1.2)
    steps, waits, copies = _turn(default_model, True, settings, monkeypatch)
    assert len(steps) == 12 and copies == 12
    # per turn, not per step: the prompt's ids for the prefill and for the penalty
    assert waits == ["aten.lift_fresh.default"] * 2
    cpu_steps, cpu_waits, _ = _turn(default_model, False, settings, monkeypatch)
    # what the probe sees on the CPU's path: waits every step (the Python steps' or the kernels')
    per_step = collections.Counter(cpu_waits)
    assert len(cpu_waits) >= 2 * len(cpu_steps), per_step


@pytest.mark.model
def test_a_greedy_device_turn_is_the_cpu_s_turn(default_model, monkeypatch):
    """Greedy, where draws cannot differ: the same tokens, candidates and numbers both ways."""
    settings = SamplingSettings(max_new_tokens=16, temperature=0.0)
    device, _, _ = _turn(default_model, True, settings, monkeypatch)
    cpu, _, _ = _turn(default_model, False, settings, monkeypatch)
    assert [s.token_id for s in device] == [s.token_id for s in cpu]
    for got, expected in zip(device, cpu):
        assert [c.token_id for c in got.top] == [c.token_id for c in expected.top]
        assert got.rank == expected.rank and got.prob == expected.prob
        assert got.raw_prob == pytest.approx(expected.raw_prob, rel=1e-5)
        assert got.entropy == pytest.approx(expected.entropy, abs=1e-5)
