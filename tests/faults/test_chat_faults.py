"""Faults met inside the chat: a model that fails while a message waits, files that are not
chats, writes that fail, the quit confirmation."""

from __future__ import annotations

import threading
import time

import pytest

from chatapp.chat.settings import SamplingSettings
from chatapp.storage.store import ChatStore
from chatapp.tui.app import make_app
from chatapp.tui.widgets.chat_log import ChatLog
from chatapp.tui.widgets.loading_panel import LoadingPanel
from chatapp.tui.widgets.prompt_input import PromptInput
from tests.tui.conftest import app_with, ready, send, wait_until
from tests.tui.fakes import FakeEngine

pytestmark = pytest.mark.anyio

REFUSAL_SECONDS = 1.0
"""A file that is not a chat is refused at once (reading /dev/zero grew memory by 350 MB/s)."""


def _notes(app) -> list[tuple[str, str]]:
    return [(n.title, n.message) for n in app._notifications]


async def test_a_message_waiting_when_the_model_fails_goes_back_to_the_prompt(store_path):
    release = threading.Event()

    def load(report):
        release.wait(timeout=10)
        raise RuntimeError("could not load model 'x': no such file")

    app = make_app(settings=SamplingSettings(), load_engine=load, store_path=store_path)
    async with app.run_test() as pilot:
        await pilot.press(*"early", "enter")  # taken: it waits for the model
        assert [e.user for e in app.chat.conversation.exchanges] == ["early"]
        release.set()
        await wait_until(pilot, lambda: app.chat.query_one(LoadingPanel).has_class("-failed"))
        prompt = app.chat.query_one(PromptInput)
        assert prompt.text == "early" and not app.chat.conversation.exchanges
        await pilot.press("enter")  # nobody can answer: refused, and the text stays
        assert prompt.text == "early" and not app.chat.conversation.exchanges
        assert any("could not be loaded" in message for _, message in _notes(app))
    with ChatStore(store_path) as store:
        assert store.list_chats() == []  # no chat saved that was never answered


async def test_load_of_a_device_or_a_pipe_is_refused_at_once(store_path, tmp_path):
    fifo = tmp_path / "fifo"
    import os

    os.mkfifo(fifo)
    app = app_with(FakeEngine(), store_path=store_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        for path in ("/dev/zero", str(fifo)):
            started = time.monotonic()
            await send(pilot, f"/load {path}", wait=False)
            await wait_until(pilot, lambda: any("not a regular file" in m for _, m in _notes(app)))
            assert time.monotonic() - started < REFUSAL_SECONDS
            app.clear_notifications()
        assert [e.user for e in app.chat.conversation.exchanges] == ["hi"]  # nothing changed


async def test_a_failed_save_or_export_says_so_in_its_title(store_path, tmp_path):
    app = app_with(FakeEngine(), store_path=store_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        await send(pilot, f"/save {tmp_path}/missing/chat.json", wait=False)
        await send(pilot, f"/export {tmp_path}/missing/chat.md", wait=False)
        await pilot.pause()
        titles = [title for title, _ in _notes(app)]
        assert "Not saved" in titles and "Not exported" in titles and "Saved" not in titles


async def test_editing_the_last_message_keeps_the_old_one_and_its_replies(store_path):
    engine = FakeEngine(replies=[["A"], ["B"], ["C"], ["D"]])
    app = app_with(engine, store_path=store_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "first")
        await send(pilot, "secnd")
        await pilot.press("ctrl+r")  # a second version of the reply to "secnd"
        await wait_until(pilot, lambda: not app.chat.generating)
        await pilot.press("ctrl+l")
        app.chat.query_one(PromptInput).set_prompt("second")
        await send(pilot, "")
        exchange = app.chat.conversation.exchanges[-1]
        assert [(v.user, v.text) for v in exchange.versions] == [(None, "B"), (None, "C"), ("second", "D")]
        assert engine.calls[-1].messages[-1]["content"] == "second"
        log = app.chat.query_one(ChatLog)
        assert "second" in str(log.user_view(1).render())
        await app.chat.action_switch_version(1, -1)  # back to the message as first written
        await pilot.pause()
        assert "secnd" in str(log.user_view(1).render()) and exchange.reply.text == "C"
        await app.chat.action_switch_version(1, 1)
        await pilot.press("ctrl+r")  # regenerating the edit answers the edit
        await wait_until(pilot, lambda: not app.chat.generating)
        assert engine.calls[-1].messages[-1]["content"] == "second"
    with ChatStore(store_path) as store:
        reopened = store.last().conversation.exchanges[-1]
    assert [v.user for v in reopened.versions] == [None, None, "second", "second"]
    assert reopened.shown_user == "second" and reopened.user == "secnd"
