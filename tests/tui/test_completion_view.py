"""Completion mode in the TUI (#19, item 7): a model without a chat template, or `chatapp --raw`,
opens in a view of plain text that the model continues, with the same panel, inspector,
branching and step mode. Pilot tests with the scripted engine, and one with a real (tiny, random)
GPT-2 whose tokenizer has no chat template: the seed's own exercise."""

from __future__ import annotations

from dataclasses import replace

import pytest

from chatapp.tui.completion_mode import COMPLETION_PLACEHOLDER, PROMPT_PLACEHOLDER
from chatapp.tui.widgets.chat_log import ChatLog, Cursor
from chatapp.tui.widgets.messages_view import AssistantMessage
from chatapp.tui.widgets.prompt_input import PromptInput
from chatapp.tui.widgets.status_bar import StatusBar
from chatapp.tui.widgets.token_view import NEWLINE_MARK, TokenView
from tests.tui.conftest import app_with, ready, send, wait_until
from tests.tui.fakes import FAKE_INFO, FakeEngine

pytestmark = pytest.mark.anyio


def completion_engine(**options) -> FakeEngine:
    """The scripted engine as a model that continues plain text."""
    return FakeEngine(info=replace(FAKE_INFO, completion=True), **options)


def shown_text(view: AssistantMessage) -> str:
    """What a reply view shows as its text (the token view's rendering)."""
    return str(view.query_one(TokenView).render())


async def test_a_completion_model_opens_a_plain_text_view_that_it_continues():
    engine = completion_engine(replies=[[" upon", " a", "\n", "time"], [" and", " then"]])
    app = app_with(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        chat = app.chat
        assert chat.query_one(PromptInput).placeholder == COMPLETION_PLACEHOLDER
        assert "FakeLM-1 (completion)" in str(chat.query_one(StatusBar).render())
        await send(pilot, "Once")
        await send(pilot, "  more, \n")  # sent exactly as typed: spaces and a newline count
        assert engine.calls[-1].messages == [
            {"role": "user", "content": "Once"},
            {"role": "assistant", "content": " upon a\ntime"},
            {"role": "user", "content": "  more, \n"},
        ]
        log = chat.query_one(ChatLog)
        first = log.replies[0]
        assert str(first.header()) == "continuation"
        assert first.has_class("-tokens") and shown_text(first) == " upon a\ntime"  # plain: no marks
        assert NEWLINE_MARK not in shown_text(first)
        log.focus()
        log.inspect(Cursor(0, 2))  # the inspector marks tokens as in a chat
        await pilot.pause()
        assert NEWLINE_MARK in shown_text(first)
        await pilot.press("escape")
        await pilot.pause()
        assert shown_text(first) == " upon a\ntime"


async def test_a_system_prompt_is_refused_in_completion_mode_and_changes_nothing():
    app = app_with(completion_engine())
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "/system Be a pirate.", wait=False)
        await pilot.pause()
        assert app.chat.conversation.system is None
        assert app.chat.query_one(PromptInput).text == "/system Be a pirate."  # kept to mend
        assert any("no system prompt" in str(n.message) for n in app._notifications)


async def test_branching_and_step_mode_work_on_a_continuation():
    engine = completion_engine(replies=[[" upon", " a", " time"], [" x"], [" y"]])
    app = app_with(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "Once")
        log = app.chat.query_one(ChatLog)
        log.focus()
        log.inspect(Cursor(0, 1))
        await pilot.press("down", "enter")  # a runner-up at step 2: a branch of the continuation
        await wait_until(pilot, lambda: not app.chat.generating, what="the branch")
        assert engine.calls[-1].prefix_ids[0] == engine.vocab.id(" upon")
        assert "‹ 2/2 ›" in str(log.replies[0].header()) and "continuation" in str(log.replies[0].header())
        await pilot.press("escape")
        app.chat.query_one(PromptInput).focus()
        await pilot.press("f5")  # step mode: the model proposes, Enter takes its draw
        await send(pilot, " again", wait=False)
        await wait_until(pilot, lambda: app.chat.proposal is not None, what="a proposal")
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.chat.proposal is not None and app.chat.proposal.step == 1,
                         what="the next proposal")
        await pilot.press("escape")
        await wait_until(pilot, lambda: not app.chat.generating, what="the stop")
        assert app.chat.conversation.exchanges[-1].reply.text == " y"


async def test_a_chat_model_keeps_the_chat_view():
    app = app_with(FakeEngine())
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "  hi  ")
        assert app.chat.query_one(PromptInput).placeholder == PROMPT_PLACEHOLDER
        view = app.chat.query_one(ChatLog).replies[0]
        assert str(view.header()) == "assistant" and not view.has_class("-tokens")
        assert app.chat.conversation.exchanges[0].user == "hi"  # a chat message is trimmed


async def test_the_seed_exercise_a_tiny_random_gpt2_continues_text_in_the_tui(tiny_gpt2):
    """The real engine on a GPT-2 without a chat template: the TUI opens in completion mode
    instead of refusing it, and the continuation is chosen through our LM head, step by step."""
    from chatapp.engine.loader import load_engine

    app = app_with(completion_engine())  # replaced below by the real engine's loader
    app.chat._load_engine = lambda progress: load_engine(str(tiny_gpt2), "cpu", mode="auto", top_n=5)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: app.chat.engine is not None, timeout=120, what="the tiny GPT-2")
        assert app.chat.engine.info.completion
        await send(pilot, "/max 6")
        await send(pilot, "Once upon a time", wait=False)
        await wait_until(pilot, lambda: not app.chat.generating and app.chat.conversation.exchanges[0].reply,
                         timeout=60, what="the continuation")
        reply = app.chat.conversation.exchanges[0].reply
        assert 1 <= len(reply.steps) <= 6 and all(len(step.top) == 5 for step in reply.steps)
        assert reply.text == "".join(step.text for step in reply.steps)
        assert str(app.chat.query_one(ChatLog).replies[0].header()).startswith("continuation")


async def test_enter_alone_lets_the_model_write_on_only_in_completion_mode():
    engine = completion_engine(replies=[[" upon"], [" a", " time"]])
    app = app_with(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "")  # nothing written yet: nothing to continue
        assert engine.calls == []
        await send(pilot, "Once")
        await send(pilot, "")
        assert engine.calls[-1].messages[-2:] == [{"role": "assistant", "content": " upon"},
                                                  {"role": "user", "content": ""}]
        assert [e.reply.text for e in app.chat.conversation.exchanges] == [" upon", " a time"]
    chat = FakeEngine()
    app = app_with(chat)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        await send(pilot, "")
        assert len(chat.calls) == 1  # a chat sends no empty message


@pytest.mark.model
async def test_a_base_gguf_file_opens_in_completion_mode(base_gguf):
    from chatapp.engine.loader import load_engine

    app = app_with(completion_engine())  # replaced below by the real engine's loader
    app.chat._load_engine = lambda progress: load_engine(str(base_gguf), mode="auto", top_n=5)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: app.chat.engine is not None, timeout=300, what="the base GGUF")
        assert app.chat.engine.info.completion
        assert "SmolLM2-135M-base (completion)" in str(app.chat.query_one(StatusBar).render())
        await send(pilot, "/max 5")
        await send(pilot, "The three primary colors are", wait=False)
        await wait_until(pilot, lambda: not app.chat.generating and app.chat.conversation.exchanges[0].reply,
                         timeout=60, what="the continuation")
        assert len(app.chat.conversation.exchanges[0].reply.steps) == 5


async def test_the_palette_turns_completion_mode_on_and_off_where_the_model_can_chat():
    engine = FakeEngine(replies=[[" upon"], ["Hi"]])
    app = app_with(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        app.chat.action_completion_mode()
        await pilot.pause()
        assert engine.info.completion and app.chat.query_one(ChatLog).completion
        await send(pilot, "Once")
        assert str(app.chat.query_one(ChatLog).replies[0].header()) == "continuation"
        app.chat.action_completion_mode()
        await pilot.pause()
        assert not engine.info.completion
        assert str(app.chat.query_one(ChatLog).replies[0].header()) == "assistant"
        assert app.chat.query_one(PromptInput).placeholder == PROMPT_PLACEHOLDER
    base = completion_engine()
    base.info = replace(base.info, can_chat=False)
    app = app_with(base)
    async with app.run_test() as pilot:
        await ready(pilot)
        app.chat.action_completion_mode()
        await pilot.pause()
        assert base.info.completion  # no chat template: it stays in completion mode
        assert any("can only continue text" in str(n.message) for n in app._notifications)
