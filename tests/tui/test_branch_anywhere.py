"""Pilot tests of the reply tree: branching from a token of an earlier reply, regenerating and
editing an earlier exchange, and moving between whole branches with ‹ ›, saved and reopened."""

from __future__ import annotations

import pytest

from chatapp.storage.store import ChatStore
from chatapp.tui.widgets.chat_log import ChatLog, Cursor
from chatapp.tui.widgets.messages_view import AssistantMessage, UserMessage
from chatapp.tui.widgets.prompt_input import PromptInput
from tests.tui.conftest import app_with, ready, send, wait_until
from tests.tui.fakes import FakeEngine

pytestmark = pytest.mark.anyio


def shown(app) -> list[str]:
    """The conversation on screen: each user message's and reply's text, in order."""
    log = app.chat.query_one(ChatLog)
    users = [view.text for view in log.query(UserMessage)]
    replies = [view.exchange.reply.text if view.exchange.reply else "" for view in log.query(AssistantMessage)]
    return [part for pair in zip(users, replies) for part in pair]


async def _three_exchanges(pilot, app) -> None:
    await ready(pilot)
    for message in ("one", "two", "three"):
        await send(pilot, message)


async def _idle(pilot, app) -> None:
    await wait_until(pilot, lambda: not app.chat.generating, what="the reply to end")


async def test_branching_at_a_token_of_an_earlier_reply_starts_a_branch_there(store_path):
    engine = FakeEngine(replies=[["A", "a"], ["B", "b"], ["C", "c"], ["x", "y"]])
    app = app_with(engine, store_path=store_path)
    async with app.run_test() as pilot:
        await _three_exchanges(pilot, app)
        assert shown(app) == ["one", "Aa", "two", "Bb", "three", "Cc"]
        log = app.chat.query_one(ChatLog)
        log.focus()
        log.inspect(Cursor(0, 1))  # the first reply's second token
        await pilot.press("down", "enter")  # the runner-up candidate, forced
        await _idle(pilot, app)
        forced = app.chat.conversation.exchanges[0].reply.steps[1]
        assert forced.forced and engine.calls[-1].prefix_ids == [engine.vocab.id("A"), forced.token_id]
        assert engine.calls[-1].messages == engine.calls[0].messages  # only the first message before it
        assert forced.text == " the"
        assert shown(app) == ["one", "A the"]  # the branch has no exchange after it yet
        assert "‹ 2/2 ›" in str(log.replies[0].header())
        await pilot.press("comma")  # back to the first version: its whole branch comes back
        assert shown(app) == ["one", "Aa", "two", "Bb", "three", "Cc"]
        await pilot.press("full_stop")
        assert len(shown(app)) == 2
    with ChatStore(store_path) as store:
        [summary] = store.list_chats()
        tree = store.load(summary.id).conversation
    assert [e.user for e in tree.exchanges] == ["one"] and tree.exchanges[0].current == 1
    assert [e.user for e in tree.exchanges[0].versions[0].later] == ["two", "three"]  # saved with the tree


async def test_regenerating_and_editing_an_earlier_exchange_branch_there(store_path):
    engine = FakeEngine(replies=[["A"], ["B"], ["C"], ["B2"], ["E"]])
    app = app_with(engine, store_path=store_path)
    async with app.run_test() as pilot:
        await _three_exchanges(pilot, app)
        log = app.chat.query_one(ChatLog)
        log.focus()
        log.inspect(Cursor(1, 0))
        await pilot.press("r")  # a new version of the second reply
        await _idle(pilot, app)
        assert shown(app) == ["one", "A", "two", "B2"]
        assert engine.calls[-1].messages == engine.calls[1].messages
        log.focus()
        log.inspect(Cursor(0, 0))
        await pilot.press("e")  # edit the first message
        prompt = app.chat.query_one(PromptInput)
        assert prompt.has_focus and prompt.text == "one" and app.chat.edit_index == 0
        prompt.clear()
        await pilot.press(*"uno", "enter")
        await _idle(pilot, app)
        assert shown(app) == ["uno", "E"]
        assert engine.calls[-1].messages[-1] == {"role": "user", "content": "uno"}
        await app.chat.action_switch_version(0, -1)  # the message as first written, and all after it
        assert shown(app) == ["one", "A", "two", "B2"]
        await app.chat.action_switch_version(1, -1)
        assert shown(app) == ["one", "A", "two", "B", "three", "C"]
        await pilot.press("ctrl+q")
    with ChatStore(store_path) as store:
        [summary] = store.list_chats()
        reopened = store.load(summary.id)
    app = app_with(FakeEngine(), chat=reopened, store_path=store_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        assert shown(app) == ["one", "A", "two", "B", "three", "C"]
        await app.chat.action_switch_version(0, 1)
        assert shown(app) == ["uno", "E"]  # the reopened tree is intact


async def test_no_switch_puts_away_the_reply_being_written():
    import threading

    gate = threading.Event()
    engine = FakeEngine(replies=[["A"], ["B"], ["C", "c", "c"]], gate=gate, gate_after=1)
    app = app_with(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        gate.set()
        await send(pilot, "one")
        await app.chat.action_regenerate()
        await _idle(pilot, app)
        gate.clear()
        await send(pilot, "two", wait=False)
        await wait_until(pilot, lambda: app.chat.conversation.last.reply.steps, what="first step")
        await app.chat.action_switch_version(0, -1)  # would put away the reply being written
        assert app.chat.generating and shown(app)[-2:] == ["two", app.chat.conversation.last.reply.text]
        gate.set()
        await _idle(pilot, app)
