"""The engine's turn loop: KV reuse across turns, seeds, stops, cancel, branching, context."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from chatapp.chat.prompt import ContextOverflowError
from chatapp.chat.settings import SamplingSettings
from chatapp.engine.engine import Engine

GREEDY = SamplingSettings(temperature=0, max_new_tokens=24)


def _run(engine, messages, settings):
    turn = engine.start_turn(messages, settings)
    steps = list(turn)
    return turn, steps


@pytest.mark.model
def test_multi_turn_reuses_the_whole_previous_conversation(default_model):
    engine = Engine(default_model)
    messages = [{"role": "system", "content": "You are terse."}]
    previous = None
    for number, prompt in enumerate(["What is the capital of France?", "And of Italy?", "And of Spain?"]):
        messages.append({"role": "user", "content": prompt})
        turn, steps = _run(engine, messages, GREEDY)
        stats = turn.stats
        assert stats.prefill_tokens == stats.prompt_tokens - stats.cached_tokens
        assert "".join(s.text for s in steps) == stats.text
        assert stats.tokens == len(steps)
        if previous is None:
            assert stats.cached_tokens == 0
        else:
            prev_stats, prev_steps = previous
            reply_tokens = len([s for s in prev_steps if not s.is_stop])
            # Everything before this turn is cached: last prompt, last reply (its end token,
            # chosen but never run through the model, is the only token prefilled again).
            assert stats.cached_tokens == prev_stats.prompt_tokens + reply_tokens
            assert stats.prefill_tokens < 20
        messages.append({"role": "assistant", "content": stats.text})
        previous = (stats, steps)


@pytest.mark.model
def test_same_seed_same_reply(default_model):
    engine = Engine(default_model)
    messages = [{"role": "user", "content": "Tell me a short story."}]
    settings = SamplingSettings(temperature=1.0, top_k=0, seed=1234, max_new_tokens=30)
    first = [s.token_id for s in engine.start_turn(messages, settings)]
    second = [s.token_id for s in engine.start_turn(messages, settings)]
    other = [s.token_id for s in engine.start_turn(messages, SamplingSettings(temperature=1.0, top_k=0, seed=99, max_new_tokens=30))]
    assert first == second
    assert first != other


@pytest.mark.model
def test_step_probabilities_equal_transformers_processors(default_model):
    engine = Engine(default_model, top_n=20)
    settings = SamplingSettings(temperature=0.8, top_k=40, top_p=0.9, min_p=0.02, seed=5, max_new_tokens=1)
    messages = [{"role": "user", "content": "Name a fruit."}]
    turn = engine.start_turn(messages, settings)
    step = next(iter(turn))
    with torch.no_grad():
        logits = default_model.model(input_ids=torch.tensor([turn.prompt_ids])).logits[:, -1].float()
    processors = LogitsProcessorList(
        [TemperatureLogitsWarper(0.8), TopKLogitsWarper(40), TopPLogitsWarper(0.9), MinPLogitsWarper(0.02)]
    )
    expected = torch.softmax(processors(torch.tensor([turn.prompt_ids]), logits), -1)[0]
    raw = torch.softmax(logits, -1)[0]
    for cand in step.top:
        assert cand.prob == pytest.approx(float(expected[cand.token_id]), rel=1e-4, abs=1e-7)
        assert cand.raw_prob == pytest.approx(float(raw[cand.token_id]), rel=1e-4, abs=1e-7)
    assert step.prob == pytest.approx(float(expected[step.token_id]), rel=1e-4, abs=1e-7)
    assert [c.prob for c in step.top] == sorted((c.prob for c in step.top), reverse=True)
    assert step.rank == int((raw > raw[step.token_id]).sum()) + 1


@pytest.mark.model
def test_stop_token_and_length(default_model):
    engine = Engine(default_model)
    messages = [{"role": "user", "content": "Say just: yes"}]
    turn, steps = _run(engine, messages, SamplingSettings(temperature=0, max_new_tokens=64))
    assert turn.stats.finish_reason == "stop"
    assert steps[-1].is_stop and steps[-1].text == ""
    turn, steps = _run(engine, [{"role": "user", "content": "Write a long poem."}], SamplingSettings(temperature=0, max_new_tokens=5))
    assert turn.stats.finish_reason == "length" and len(steps) == 5


@pytest.mark.model
def test_cancel_between_steps(default_model):
    engine = Engine(default_model)
    turn = engine.start_turn([{"role": "user", "content": "Write a long poem."}], GREEDY)
    steps = []
    for step in turn:
        steps.append(step)
        if len(steps) == 3:
            turn.cancel()
    assert len(steps) == 3
    assert turn.stats.finish_reason == "cancelled"
    assert turn.stats.text == "".join(s.text for s in steps)


@pytest.mark.model
def test_regenerate_and_branch_crop_the_cache(default_model):
    engine = Engine(default_model)
    messages = [{"role": "user", "content": "Write a long poem about the sea."}]
    turn, steps = _run(engine, messages, GREEDY)
    regen = engine.start_turn(messages, GREEDY)
    regen_steps = list(regen)
    assert [s.token_id for s in regen_steps] == [s.token_id for s in steps]
    assert regen.stats.cached_tokens == regen.stats.prompt_tokens - 1
    # Branch at step 3 with the second candidate.
    alternative = steps[3].top[1].token_id
    prefix = [s.token_id for s in steps[:3]] + [alternative]
    branch = engine.start_turn(messages, GREEDY, reply_prefix_ids=prefix)
    branch_steps = list(branch)
    assert branch_steps[0].step == 4
    # The cache held the regenerated reply: the branch keeps the prompt and the reply's first
    # three tokens, and runs only the token it forces in place of the fourth.
    assert branch.stats.cached_tokens == branch.stats.prompt_tokens
    assert branch.stats.prefill_tokens == 1
    # The branch continues exactly as a fresh greedy run over the same tokens would.
    fresh = Engine(default_model)
    fresh_steps = list(fresh.start_turn(messages, GREEDY, reply_prefix_ids=prefix))
    assert [s.token_id for s in fresh_steps] == [s.token_id for s in branch_steps]
    tok = default_model.tokenizer
    reply_ids = prefix + [s.token_id for s in branch_steps if not s.is_stop]
    assert branch.stats.text == tok.decode(reply_ids, skip_special_tokens=True)


@pytest.mark.model
def test_a_branch_in_an_earlier_reply_keeps_the_cache_up_to_it(default_model):
    """Branching the first reply of a two-turn chat crops the cache to the shared prefix: the
    first prompt and the reply's tokens before the forced one are not read again."""
    engine = Engine(default_model)
    first = [{"role": "user", "content": "Name a colour."}]
    _, steps = _run(engine, first, GREEDY)
    reply = default_model.tokenizer.decode([s.token_id for s in steps if not s.is_stop])
    _run(engine, first + [{"role": "assistant", "content": reply}, {"role": "user", "content": "And another?"}], GREEDY)
    prefix = [s.token_id for s in steps[:2]] + [steps[2].top[1].token_id]
    branch = engine.start_turn(first, GREEDY, reply_prefix_ids=prefix)
    branch_steps = list(branch)
    assert branch.stats.cached_tokens == branch.stats.prompt_tokens and branch.stats.prefill_tokens == 1
    fresh = list(Engine(default_model).start_turn(first, GREEDY, reply_prefix_ids=prefix))
    assert [s.token_id for s in fresh] == [s.token_id for s in branch_steps]


@pytest.mark.model
def test_context_overflow_drops_oldest_turns_and_keeps_system(tiny_loaded):
    engine = Engine(tiny_loaded)  # context 512 tokens
    messages = [{"role": "system", "content": "SYSTEM-KEEP"}]
    for i in range(12):
        messages += [
            {"role": "user", "content": f"question {i} " + "word " * 30},
            {"role": "assistant", "content": f"answer {i} " + "word " * 30},
        ]
    messages.append({"role": "user", "content": "last question"})
    turn = engine.start_turn(messages, SamplingSettings(temperature=0, max_new_tokens=16))
    steps = list(turn)
    assert turn.stats.dropped_turns > 0
    assert turn.stats.prompt_tokens + 16 <= 512
    assert "SYSTEM-KEEP" in turn.prompt_text and "last question" in turn.prompt_text
    assert "question 0 " not in turn.prompt_text
    assert len(steps) <= 16


@pytest.mark.model
def test_a_single_message_larger_than_the_window_is_refused(tiny_loaded):
    engine = Engine(tiny_loaded)
    with pytest.raises(ContextOverflowError, match="512"):
        engine.start_turn([{"role": "user", "content": "word " * 2000}], GREEDY)


HOT = SamplingSettings(temperature=50.0, top_k=0, seed=7, max_new_tokens=12)
"""Near-uniform sampling: which token comes out depends on the random stream alone."""


def _seeded_chat(engine, settings, turns=2):
    """`turns` replies to the same user message; each reply's token ids and the messages."""
    messages, replies = [], []
    for _ in range(turns):
        messages.append({"role": "user", "content": "Say something."})
        turn = engine.start_turn(messages, settings)
        replies.append([s.token_id for s in turn])
        messages.append({"role": "assistant", "content": turn.stats.text})
    return replies, messages


@pytest.mark.model
def test_each_turn_of_a_seeded_chat_draws_its_own_stream(tiny_loaded):
    (first, second), _ = _seeded_chat(Engine(tiny_loaded), HOT)
    assert len(first) == len(second) == HOT.max_new_tokens
    assert sum(a == b for a, b in zip(first, second)) <= 1, "turn 2 replayed turn 1's draws"
    again, _ = _seeded_chat(Engine(tiny_loaded), HOT)
    assert again == [first, second]  # the same seed over the same chat: the same replies


@pytest.mark.model
def test_regenerating_a_seeded_turn_gives_its_reply_again(tiny_loaded):
    engine = Engine(tiny_loaded)
    replies, messages = _seeded_chat(engine, HOT)
    regenerated = engine.start_turn(messages[:-1], HOT)  # turn 2 again, after the KV cache held it
    assert [s.token_id for s in regenerated] == replies[1]
    assert regenerated.seed == engine.start_turn(messages[:-1], HOT).seed != HOT.seed


def test_turn_seeds_are_the_seed_first_then_distinct_and_stable():
    from chatapp.chat.settings import MAX_SEED
    from chatapp.engine.engine import turn_seed

    assert turn_seed(7, 0) == 7
    seeds = [turn_seed(7, n) for n in range(1, 50)] + [turn_seed(8, n) for n in range(1, 50)]
    assert len(set(seeds)) == len(seeds) and 7 not in seeds and all(0 <= s <= MAX_SEED for s in seeds)
    assert turn_seed(7, 3) == turn_seed(7, 3)


LONG_MESSAGE = " ".join(f"Item {i} is a line of a long pasted list." for i in range(150))
"""A message of well over `PREFILL_CHUNK` tokens."""


def test_a_long_prompt_is_read_in_pieces_that_report_progress_and_change_no_token(default_model, monkeypatch):
    from chatapp.engine import turn as engine_module

    messages = [{"role": "user", "content": LONG_MESSAGE}]
    settings = SamplingSettings(temperature=0, max_new_tokens=8)
    turn = Engine(default_model).start_turn(messages, settings)
    progress: list[tuple[int, int]] = []
    turn.on_prefill = lambda done, total: progress.append((done, total))
    pieces = [step.token_id for step in turn]

    total = turn.stats.prefill_tokens
    chunk = engine_module.PREFILL_CHUNK
    assert total > 2 * chunk
    assert progress == [(0, total)] + [(min(done, total), total) for done in range(chunk, total + chunk, chunk)]
    monkeypatch.setattr(engine_module, "PREFILL_CHUNK", 10**6)  # the whole prompt in one call
    whole = Engine(default_model).start_turn(messages, settings)
    whole_progress: list = []
    whole.on_prefill = lambda done, total: whole_progress.append(done)
    assert [step.token_id for step in whole] == pieces and whole_progress == []


def test_a_long_prompt_can_be_stopped_between_its_pieces(default_model):
    engine = Engine(default_model)
    turn = engine.start_turn([{"role": "user", "content": LONG_MESSAGE}], GREEDY)
    reads: list[int] = []

    def read(done, total):
        reads.append(done)
        if done:
            turn.cancel()  # as Esc would, while the first piece is read

    turn.on_prefill = read
    assert list(turn) == [] and turn.stats.finish_reason == "cancelled"
    assert len(reads) == 2
    # The next turn still answers from what the cache holds.
    again = engine.start_turn([{"role": "user", "content": "Hello"}], GREEDY)
    assert list(again) and again.stats.finish_reason in {"stop", "length"}


def test_odds_at_a_step_are_the_model_s_own_numbers_at_that_step(default_model):
    engine = Engine(default_model)
    messages = [{"role": "user", "content": "Name a fruit."}]
    settings = SamplingSettings(temperature=0.9, top_k=30, seed=5, max_new_tokens=8)
    steps = list(engine.start_turn(messages, settings))
    for k, step in enumerate(steps):
        odds = engine.odds_at(messages, [s.token_id for s in steps[:k]], settings, step.token_id)
        # The step run again from the cache (a prefill, where the reply ran a decode step).
        assert odds.raw_prob == pytest.approx(step.raw_prob, rel=2e-3) and abs(odds.rank - step.rank) <= 1
        assert odds.prob == pytest.approx(step.prob, abs=2e-3)
    assert engine.watch_ids == ()  # the look-up watches only while it runs
    with pytest.raises(ValueError, match="is 2 tokens"):
        engine.token_of("Parisian")
