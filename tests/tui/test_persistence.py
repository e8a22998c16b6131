"""Pilot tests of keeping chats: autosave, the history screen, reopening, /save, /load, /export."""

from __future__ import annotations

import threading

import pytest

from chatapp.chat.conversation import Conversation, Exchange, ReplyVersion
from chatapp.chat.records import TurnStats
from chatapp.chat.settings import SamplingSettings
from chatapp.session import chat_keeper, reply_stream
from chatapp.storage.chat_file import INTERRUPTED_NOTE, SavedChat, exchange_to_dict, load_chat_file
from chatapp.storage.store import ChatStore
from chatapp.tui.history_screen import HistoryScreen
from chatapp.tui.screens import ConfirmScreen
from chatapp.tui.widgets.chat_log import ChatLog
from tests.tui.conftest import app_with, ready, send, wait_until
from tests.tui.fakes import FakeEngine

pytestmark = pytest.mark.anyio


def saved_chat(user: str, reply: list[str], title: str = "") -> SavedChat:
    """A finished one-exchange chat with the fake engine's token records."""
    engine = FakeEngine()
    version = ReplyVersion(settings=SamplingSettings())
    version.add_steps(engine.step(i, text) for i, text in enumerate(reply + [""]))
    version.finish(TurnStats(text="".join(reply), tokens=len(reply) + 1, finish_reason="stop"))
    return SavedChat(Conversation(exchanges=[Exchange(user, [version])]), title=title, model="FakeLM-1")


def stored(path) -> list[SavedChat]:
    """Every chat in the store at `path`, most recent first."""
    with ChatStore(path) as store:
        return [store.load(summary.id) for summary in store.list_chats()]


def errors(app) -> list[str]:
    return [n.message for n in app._notifications if n.severity == "error"]


async def test_a_finished_turn_is_saved_with_its_steps(store_path):
    app = app_with(FakeEngine(), store_path=store_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        [chat] = stored(store_path)
        reply = chat.conversation.exchanges[0].reply
        assert chat.id == app.chat.saved.id and chat.model == "FakeLM-1" and chat.display_title == "hi"
        assert reply.text == "Hello, world!" and reply.status == "done"
        assert reply.steps == app.chat.conversation.last.reply.steps and len(reply.steps) == 5
        await send(pilot, "again")
        assert [e.user for e in stored(store_path)[0].conversation.exchanges] == ["hi", "again"]


async def test_a_reply_being_written_is_saved_as_it_streams(store_path, monkeypatch):
    monkeypatch.setattr(chat_keeper, "AUTOSAVE_SECONDS", 0.0)
    monkeypatch.setattr(reply_stream, "MAX_BATCH_SECONDS", reply_stream.MIN_BATCH_SECONDS)  # a steady pace
    gate = threading.Event()
    app = app_with(FakeEngine(gate=gate, gate_after=2, delay=reply_stream.MIN_BATCH_SECONDS + 0.05),
                   store_path=store_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi", wait=False)
        await wait_until(pilot, lambda: len(app.chat.conversation.last.reply.steps) == 2, what="two steps")
        [chat] = stored(store_path)
        reply = chat.conversation.exchanges[0].reply
        # Reopened from a save made mid-reply, it reads as interrupted with every token kept.
        assert reply.text == "Hello," and len(reply.steps) == 2 and reply.error == INTERRUPTED_NOTE
        gate.set()
        await wait_until(pilot, lambda: not app.chat.generating)
        assert stored(store_path)[0].conversation.exchanges[0].reply.status == "done"


async def test_the_message_is_saved_while_the_model_reads_it(store_path):
    gate = threading.Event()  # holds the prompt's reading, as a long paste's takes seconds
    app = app_with(FakeEngine(gate=gate, prompt_pieces=2), store_path=store_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "a long paste", wait=False)
        await wait_until(pilot, lambda: stored(store_path), what="the message saved")
        exchange = stored(store_path)[0].conversation.exchanges[0]
        assert exchange.user == "a long paste" and not exchange.reply.steps and exchange.reply.error == INTERRUPTED_NOTE
        assert app.chat.generating and not app.chat.conversation.last.reply.steps  # still reading
        gate.set()
        await wait_until(pilot, lambda: not app.chat.generating)
    assert stored(store_path)[0].conversation.exchanges[0].reply.text == "Hello, world!"


async def test_new_chat_saves_and_an_empty_chat_is_never_saved(store_path):
    app = app_with(FakeEngine(), store_path=store_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        first = app.chat.saved.id
        await send(pilot, "hi")
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert app.chat.saved.id != first and not app.chat.conversation.exchanges
    assert [chat.id for chat in stored(store_path)] == [first]


async def test_history_screen_opens_renames_and_deletes(store_path):
    chats = [saved_chat("alpha question", ["A"]), saved_chat("beta question", ["B"]), saved_chat("gamma", ["C"])]
    with ChatStore(store_path) as store:
        for chat in chats:  # saved in order: gamma is the most recent
            store.save(chat)
    engine = FakeEngine()
    app = app_with(engine, store_path=store_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await ready(pilot)
        await pilot.press("f2")
        history = app.screen
        assert isinstance(history, HistoryScreen)
        assert [c.title for c in history.chats] == ["gamma", "beta question", "alpha question"]
        assert [c.turns for c in history.chats] == [1, 1, 1]

        await pilot.press("down", "r")  # rename "beta question"
        await pilot.press(*"Beta renamed", "enter")  # the old title is selected: typing replaces it
        await pilot.pause()
        assert [c.title for c in history.chats] == ["gamma", "Beta renamed", "alpha question"]
        assert history.selected_id == chats[1].id

        await pilot.press("d")  # delete asks first; "n" keeps the chat
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert app.screen is history and len(history.chats) == 3
        await pilot.press("d")
        await pilot.press("y")
        await pilot.pause()
        assert app.screen is history
        assert [c.title for c in history.chats] == ["gamma", "alpha question"]

        await pilot.press("down", "enter")  # open "alpha question"
        await wait_until(pilot, lambda: app.chat.saved.id == chats[0].id, what="chat opened")
        assert app.screen is app.chat
        assert [e.user for e in app.chat.conversation.exchanges] == ["alpha question"]
        assert len(app.chat.query_one(ChatLog).replies) == 1
        await wait_until(pilot, lambda: engine.resets == 1, what="engine reset")
    with ChatStore(store_path) as store:
        titles = {s.id: s.title for s in store.list_chats()}
    assert titles == {chats[0].id: "alpha question", chats[2].id: "gamma"}


async def test_opening_a_chat_mid_reply_is_refused(store_path):
    other = saved_chat("other", ["O"])
    with ChatStore(store_path) as store:
        store.save(other)
    gate = threading.Event()
    app = app_with(FakeEngine(gate=gate), store_path=store_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi", wait=False)
        await wait_until(pilot, lambda: app.chat.conversation.last.reply.steps, what="first step")
        await app.chat.open_saved(other.id)
        await pilot.pause()
        assert app.chat.conversation.last.user == "hi"
        assert any("Esc" in n.message for n in app._notifications if n.severity == "warning")
        gate.set()
        await wait_until(pilot, lambda: not app.chat.generating)


async def test_a_reopened_chat_continues_and_branches(store_path):
    first = app_with(FakeEngine(replies=[["Hello", ",", " world"]]), store_path=store_path)
    async with first.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi")
    [chat] = stored(store_path)

    engine = FakeEngine(replies=[["!"], ["More"]])
    app = app_with(engine, store_path=store_path, chat=chat)  # as `chatapp --resume` does
    async with app.run_test() as pilot:
        await ready(pilot)
        assert app.chat.query_one(ChatLog).replies[0].exchange.reply.text == "Hello, world"
        # The stored steps are inspectable: open the inspector on the reopened reply and branch.
        await pilot.press("ctrl+t", "left", "down", "enter")
        await wait_until(pilot, lambda: len(app.chat.conversation.last.versions) == 2 and not app.chat.generating)
        branch = app.chat.conversation.last.reply
        old_ids = [step.token_id for step in chat.conversation.last.reply.steps]
        assert branch.branched_at == 2 and engine.calls[-1].prefix_ids[:2] == old_ids[:2]
        assert branch.steps[2].forced and len(engine.calls[-1].prefix_ids) == 3
        await pilot.press("escape")
        await send(pilot, "go on")
        assert engine.calls[-1].messages[:2] == [{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": branch.text}]
        assert app.chat.conversation.last.reply.text == "More"
    [again] = stored(store_path)
    assert again.id == chat.id and [len(e.versions) for e in again.conversation.exchanges] == [2, 1]


async def test_save_then_load_round_trip(tmp_path, store_path):
    path = tmp_path / "chat.json"
    app = app_with(FakeEngine(replies=[["One"], ["Two"]]), store_path=store_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "/system Be brief.", wait=False)
        await send(pilot, "hi")
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: not app.chat.generating and len(app.chat.conversation.last.versions) == 2)
        before = [exchange_to_dict(e) for e in app.chat.conversation.exchanges]
        await send(pilot, f"/save {path}", wait=False)
        assert load_chat_file(path).model == "FakeLM-1"
        await send(pilot, "/clear", wait=False)
        await pilot.pause()
        assert not app.chat.conversation.exchanges
        await send(pilot, f"/load {path}", wait=False)
        await pilot.pause()
        assert [exchange_to_dict(e) for e in app.chat.conversation.exchanges] == before
        assert app.chat.conversation.system == "Be brief."
        assert "‹ 2/2 ›" in str(app.chat.query_one(ChatLog).replies[0].header())
        await send(pilot, "/export " + str(tmp_path / "chat.md"), wait=False)
        assert "Two" in (tmp_path / "chat.md").read_text() and not errors(app)
    # The loaded copy is a chat of its own in the history, beside the original.
    assert len(stored(store_path)) == 2


@pytest.mark.parametrize("content", [b"{not json", b'{"format": "other"}', b"\x00\xff" * 10, b""])
async def test_loading_a_bad_file_changes_nothing(tmp_path, store_path, content):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    app = app_with(FakeEngine(), store_path=store_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        before = [exchange_to_dict(e) for e in app.chat.conversation.exchanges]
        await send(pilot, f"/load {path}", wait=False)
        [message] = errors(app)
        assert str(path) in message and "\n" not in message
        assert [exchange_to_dict(e) for e in app.chat.conversation.exchanges] == before
    assert path.read_bytes() == content


async def test_unknown_theme_is_a_warning_and_system_starts_the_chat(store_path):
    engine = FakeEngine()
    app = app_with(engine, store_path=store_path, theme="no-such-theme", system="You are terse.")
    async with app.run_test() as pilot:
        await ready(pilot)
        assert any("no-such-theme" in n.message for n in app._notifications if n.severity == "warning")
        await send(pilot, "hi")
        assert engine.calls[0].messages[0] == {"role": "system", "content": "You are terse."}
    app = app_with(FakeEngine(), store_path=store_path, theme="nord")
    async with app.run_test() as pilot:
        assert app.theme == "nord"


async def test_palette_and_help_list_the_history_and_file_commands(store_path):
    app = app_with(FakeEngine(), store_path=store_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        titles = {command.title for command in app.get_system_commands(app.screen)}
        assert {"History", "Save chat as JSON…", "Load chat from JSON…", "Export chat…"} <= titles
        await send(pilot, "/history", wait=False)
        assert isinstance(app.screen, HistoryScreen) and app.screen.chats == []


async def test_quitting_mid_reply_saves_what_was_written(store_path):
    gate = threading.Event()
    app = app_with(FakeEngine(gate=gate), store_path=store_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi", wait=False)
        await wait_until(pilot, lambda: app.chat.conversation.last.reply.steps, what="first step")
        await pilot.press("ctrl+q", "y")
        gate.set()
        await pilot.pause()
    [chat] = stored(store_path)
    reply = chat.conversation.exchanges[0].reply
    assert reply.text == "Hello" and reply.error == INTERRUPTED_NOTE
