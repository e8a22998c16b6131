"""A turn's decode steps leave a drawing UI a core: one thread fewer while it draws, torch's
count again after, and the same numbers either way."""

from __future__ import annotations

import pytest
import torch

from chatapp.chat.settings import SamplingSettings
from chatapp.engine.core_lending import CoreLending
from chatapp.engine.engine import Engine

MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


@pytest.fixture
def two_threads():
    """torch at two threads for the test (whatever this machine's count), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_lending_runs_on_one_thread_fewer_and_gives_it_back(two_threads):
    lending = CoreLending(torch.device("cpu"))
    lending.lend(True)
    assert torch.get_num_threads() == 1 and lending.lent
    lending.lend(True)
    assert torch.get_num_threads() == 1
    lending.lend(False)
    assert torch.get_num_threads() == 2 and not lending.lent


def test_nothing_is_lent_on_one_thread_or_off_the_cpu(two_threads):
    CoreLending(torch.device("cuda")).lend(True)  # a GPU's steps need no CPU cores lent
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    single = CoreLending(torch.device("cpu"))
    single.lend(True)
    assert torch.get_num_threads() == 1 and not single.lent


def _steps(engine, settings, spare_core=None):
    """Every step's token and numbers, and the thread count each `spare_core` question found."""
    engine.reset()
    turn = engine.start_turn(MESSAGES, settings)
    threads, answers = [], iter(spare_core or ())
    if spare_core is not None:
        turn.spare_core = lambda: threads.append(torch.get_num_threads()) or next(answers)
    steps = [(s.token_id, s.prob, s.raw_prob, s.entropy, tuple((c.token_id, c.prob, c.raw_prob) for c in s.top))
             for s in turn]
    return steps, threads


def test_a_turn_lends_only_its_native_steps_and_gives_the_core_back(tiny_loaded, two_threads):
    # The tiny model runs on torch's operations, whose sums may change with the thread count:
    # its steps never lend.
    engine = Engine(tiny_loaded)
    settings = SamplingSettings(seed=3, max_new_tokens=12)
    reference, _ = _steps(engine, settings)
    lent, threads = _steps(engine, settings, [True] * 12)
    assert lent == reference and threads == [2] * (len(reference) - 1)


@pytest.mark.model
@pytest.mark.parametrize("quantize", ["auto", "gguf"])
def test_the_default_model_s_native_steps_lend_a_core_and_give_the_same_numbers(quantize, two_threads):
    """The default configuration (the int4 kernel's one call a step) and the file read natively
    (the block kernel's layers, the head's 4-bit copy): a step lent away runs on one thread and
    gives the same token and numbers, past 128 positions too (where the attention's heads are
    shared between the threads); the turn gives the core back when it ends, or is stopped, lent."""
    from chatapp.engine.loader import load_engine

    engine = load_engine("default", "cpu", quantize=quantize)
    settings = SamplingSettings(seed=11, max_new_tokens=120)
    answers = [index % 3 != 2 for index in range(120)]
    reference, _ = _steps(engine, settings)
    lent, threads = _steps(engine, settings, answers)
    assert lent == reference and len(reference) > 100
    assert threads == [2] + [1 if answer else 2 for answer in answers[:len(threads) - 1]]  # each step as asked
    assert torch.get_num_threads() == 2
    engine.reset()
    turn = engine.start_turn(MESSAGES, settings)
    turn.spare_core = lambda: True
    steps = iter(turn)
    next(steps), next(steps), next(steps)
    assert torch.get_num_threads() == 1
    steps.close()  # a reply stopped while lent
    assert torch.get_num_threads() == 2
