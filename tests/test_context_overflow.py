"""Conversations longer than the default model's real context window (8192 tokens)."""

from __future__ import annotations

import pytest

from chatapp.chat.prompt import ContextOverflowError, count_tokens, render
from chatapp.chat.settings import SamplingSettings
from chatapp.engine.engine import Engine

SETTINGS = SamplingSettings(max_new_tokens=256)


def _long_conversation(turns: int, words: int) -> list[dict]:
    messages = [{"role": "system", "content": "SYSTEM-PROMPT-MARKER: be brief."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"QUESTION-{i} " + "lorem ipsum " * words})
        messages.append({"role": "assistant", "content": f"ANSWER-{i} " + "dolor sit " * words})
    messages.append({"role": "user", "content": "FINAL-QUESTION: summarise."})
    return messages


@pytest.mark.model
def test_overflowing_conversation_keeps_system_and_drops_oldest_turns(default_model):
    engine = Engine(default_model)
    context = default_model.info.context_length
    assert context == 8192
    messages = _long_conversation(turns=40, words=60)
    full = count_tokens(default_model.tokenizer, render(default_model.tokenizer, messages))
    assert full > context, "the conversation must really overflow"
    turn = engine.start_turn(messages, SETTINGS)
    stats = turn.stats
    assert stats.dropped_turns > 0
    assert stats.prompt_tokens + SETTINGS.max_new_tokens <= context
    assert stats.prompt_tokens + SETTINGS.max_new_tokens > context - 400, "drops no more than needed"
    text = turn.prompt_text
    assert text.count("SYSTEM-PROMPT-MARKER") == 1 and "FINAL-QUESTION" in text
    first_kept = stats.dropped_turns  # turns 0 .. dropped-1 are gone, the rest are whole
    assert "QUESTION-0 " not in text and f"QUESTION-{first_kept} " in text and f"ANSWER-{first_kept} " in text
    assert f"QUESTION-{first_kept - 1} " not in text and f"ANSWER-{first_kept - 1} " not in text


@pytest.mark.model
def test_a_message_larger_than_the_window_is_refused_with_numbers(default_model):
    engine = Engine(default_model)
    huge = [{"role": "user", "content": "word " * 9000}]
    with pytest.raises(ContextOverflowError) as caught:
        engine.start_turn(huge, SETTINGS)
    message = str(caught.value)
    assert "8192" in message and "\n" not in message
    needed = count_tokens(default_model.tokenizer, render(default_model.tokenizer, huge))
    assert str(needed) in message


@pytest.mark.model
def test_a_prompt_that_fits_with_less_room_generates_up_to_the_window(default_model):
    engine = Engine(default_model)
    messages = [{"role": "user", "content": "word " * 8100}]
    turn = engine.start_turn(messages, SamplingSettings(max_new_tokens=512))
    assert turn.stats.prompt_tokens < 8192 < turn.stats.prompt_tokens + 512
    assert turn.stats.dropped_turns == 0


@pytest.mark.model
def test_typed_special_tokens_count_as_the_text_they_are(default_model):
    engine = Engine(default_model)
    typed = [{"role": "user", "content": "<|im_end|>" * 2000}]  # 2,000 tokens if parsed, ~14,000 as text
    with pytest.raises(ContextOverflowError) as caught:
        engine.start_turn(typed, SETTINGS)
    as_text = len(default_model.tokenizer("<|im_end|>" * 2000, split_special_tokens=True)["input_ids"])
    needed = int(str(caught.value).split("needs ")[1].split()[0])
    assert as_text < needed < as_text + 40  # the text plus the template's own few tokens
