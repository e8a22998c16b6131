"""SVG snapshots of the main screens, on the scripted engine (deterministic: no blink, no clock)."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

from chatapp.tui.widgets.prompt_input import PromptInput
from tests.tui.conftest import app_with, ready, send, wait_until
from tests.tui.fakes import FakeEngine

REPLIES = [
    ["Sure", "!", " Here", " is", " a", " list", ":\n\n", "-", " **", "tea", "**", "\n", "-", " `", "coffee", "`"],
    ["A", " haiku", ":", " cold", " rain", " on", " [bold]", " roofs"],
]
"""Two scripted replies: Markdown (a list, bold, code) and markup-like text."""


def chat_app():
    return app_with(FakeEngine(replies=REPLIES))


async def chatted(pilot, turns: int = 2) -> None:
    prompt = pilot.app.chat.query_one(PromptInput)
    prompt.blinks = prompt.cursor_blink = False
    await ready(pilot)
    for text in ["What can I drink?", "Write a [haiku]"][:turns]:
        await send(pilot, text)
    pilot.app.clear_notifications()
    await pilot.pause()


def test_chat_80x24(snap_compare):
    async def run_before(pilot):
        await chatted(pilot, turns=1)

    assert snap_compare(chat_app(), terminal_size=(80, 24), run_before=run_before)


def test_chat_wide(snap_compare):
    assert snap_compare(chat_app(), terminal_size=(130, 36), run_before=chatted)


def test_inspector_with_a_candidate_picked(snap_compare):
    async def run_before(pilot):
        await chatted(pilot)
        await pilot.press("ctrl+t", "left", "left", "down", "down")

    assert snap_compare(chat_app(), terminal_size=(130, 36), run_before=run_before)


def test_branch_with_heatmap(snap_compare):
    async def run_before(pilot):
        await chatted(pilot)
        await pilot.press("ctrl+t", "home", "right", "down", "enter")
        await wait_until(pilot, lambda: not pilot.app.chat.generating)
        await pilot.press("escape", "ctrl+o")
        pilot.app.clear_notifications()
        await pilot.pause()

    assert snap_compare(chat_app(), terminal_size=(110, 30), run_before=run_before)


def test_help(snap_compare):
    async def run_before(pilot):
        await chatted(pilot, turns=0)
        await pilot.press("f1")

    assert snap_compare(chat_app(), terminal_size=(110, 30), run_before=run_before)


# -- every screen at 80x24 -------------------------------------------------------------------

FIXED_TIME = datetime(2026, 11, 30, 9, 15, tzinfo=timezone.utc)
"""The save time of the history's chats in the snapshots (a real clock would change them)."""


def test_help_80x24(snap_compare):
    async def run_before(pilot):
        await chatted(pilot, turns=0)
        await pilot.press("f1")

    assert snap_compare(chat_app(), terminal_size=(80, 24), run_before=run_before)


def test_history_80x24(snap_compare, store_path, monkeypatch):
    from chatapp.storage import store as store_module
    from chatapp.storage.store import ChatStore
    from tests.tui.test_persistence import saved_chat

    monkeypatch.setattr(store_module, "utc_now", lambda: FIXED_TIME)
    with ChatStore(store_path) as store:
        for n, (user, title) in enumerate([("What can I drink?", ""), ("Plan a trip to the coast", "Trip"),
                                          ("A very long question about the history of tea in several places",
                                           "")]):
            chat = saved_chat(user, ["Sure", "!"], title=title)
            chat.id = f"{n + 1:02d}" + "ab" * 15
            chat.created = FIXED_TIME
            store.save(chat)

    async def run_before(pilot):
        await chatted(pilot, turns=0)
        await pilot.press("f2")
        await pilot.pause()

    app = app_with(FakeEngine(replies=REPLIES), store_path=store_path)
    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


def test_inspector_80x24(snap_compare):
    async def run_before(pilot):
        await chatted(pilot, turns=1)
        await pilot.press("ctrl+t", "left", "left", "down")

    assert snap_compare(chat_app(), terminal_size=(80, 24), run_before=run_before)


def test_quit_confirmation_80x24(snap_compare):
    gate = threading.Event()

    async def run_before(pilot):
        prompt = pilot.app.chat.query_one(PromptInput)
        prompt.blinks = prompt.cursor_blink = False
        await ready(pilot)
        await send(pilot, "What can I drink?", wait=False)
        await wait_until(pilot, lambda: pilot.app.chat.conversation.last.reply.steps)
        await pilot.press("ctrl+q")
        await pilot.pause()

    app = app_with(FakeEngine(replies=REPLIES, gate=gate, gate_after=1))
    try:
        assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)
    finally:
        gate.set()
