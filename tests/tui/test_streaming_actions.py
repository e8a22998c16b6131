"""Mutating actions while a reply streams are refused (with a message) or stop the reply first;
either way the conversation stays intact and the app alive. The prompt's cursor holds still
meanwhile."""

from __future__ import annotations

import threading

import pytest

from chatapp.tui.widgets.prompt_input import PromptInput
from tests.tui.conftest import app_with, ready, send, wait_until
from tests.tui.fakes import FakeEngine

pytestmark = pytest.mark.anyio


async def _mid_reply(pilot, app, gate: threading.Event):
    """One finished exchange, then a second reply held after its first step by `gate`."""
    await ready(pilot)
    gate.set()
    await send(pilot, "first", wait=True)
    gate.clear()
    await send(pilot, "second", wait=False)
    await wait_until(pilot, lambda: app.chat.conversation.last.reply.steps, what="first step")


def _warned(app) -> bool:
    return any(n.severity == "warning" for n in app._notifications)


@pytest.mark.parametrize("keys", [("ctrl+r",), ("ctrl+l",)])
async def test_regenerate_and_edit_are_refused_mid_reply(keys):
    gate = threading.Event()
    engine = FakeEngine(gate=gate, gate_after=1)
    app = app_with(engine)
    async with app.run_test() as pilot:
        await _mid_reply(pilot, app, gate)
        calls = len(engine.calls)
        await pilot.press(*keys)
        await pilot.pause()
        assert _warned(app) and len(engine.calls) == calls and not app.chat.editing
        gate.set()
        await wait_until(pilot, lambda: not app.chat.generating)
        exchanges = app.chat.conversation.exchanges
        assert [e.user for e in exchanges] == ["first", "second"]
        assert exchanges[0].reply.text == "Hello, world!" and exchanges[1].reply.status == "done"
        assert app.is_running


@pytest.mark.parametrize("command", ["/load /no/such/file.json", "/clear"])
async def test_load_and_clear_mid_reply_leave_the_conversation_intact(command):
    gate = threading.Event()
    engine = FakeEngine(gate=gate, gate_after=1)
    app = app_with(engine)
    async with app.run_test() as pilot:
        await _mid_reply(pilot, app, gate)
        before = app.chat.conversation
        await send(pilot, command, wait=False)
        await pilot.pause()
        gate.set()
        await wait_until(pilot, lambda: not app.chat.generating)
        if app.chat.conversation is before:  # refused: everything is still there, the reply finished
            assert [e.user for e in before.exchanges] == ["first", "second"]
        else:  # a new chat: the reply was stopped first and the old chat is not lost
            assert before.exchanges[1].reply.status in ("stopped", "done")
            assert before.exchanges[0].reply.text == "Hello, world!"
        assert app.is_running


async def test_new_chat_mid_reply_stops_the_reply_and_keeps_it():
    gate = threading.Event()
    engine = FakeEngine(gate=gate, gate_after=1)
    app = app_with(engine)
    async with app.run_test() as pilot:
        await _mid_reply(pilot, app, gate)
        old = app.chat.conversation
        await pilot.press("ctrl+n")
        gate.set()
        await wait_until(pilot, lambda: not app.chat.generating)
        assert app.chat.conversation is not old and not app.chat.conversation.exchanges
        assert app.chat.query_one(PromptInput).cursor_blink  # the cut reply no longer holds the cursor
        assert old.exchanges[1].reply.status == "stopped" and old.exchanges[1].reply.text.startswith("Hello")
        await send(pilot, "fresh start")
        assert app.chat.conversation.last.reply.text == "Hello, world!"


async def test_the_prompt_cursor_holds_still_while_a_reply_is_written():
    gate = threading.Event()
    app = app_with(FakeEngine(gate=gate, gate_after=1))
    async with app.run_test() as pilot:
        await _mid_reply(pilot, app, gate)
        prompt = app.chat.query_one(PromptInput)
        assert not prompt.cursor_blink  # a blink redraws the prompt twice a second, taking CPU from the model
        gate.set()
        await wait_until(pilot, lambda: not app.chat.generating)
        assert prompt.cursor_blink
