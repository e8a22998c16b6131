"""Hostile text through every widget that shows text, and through the real detokenizer.

Markup, ANSI escapes, control characters, right-to-left text, very long lines and a 100 KB
paste must show literally (or safely neutralised), never act, never crash.
"""

from __future__ import annotations

import dataclasses

import pytest

from chatapp.engine.detokenizer import REPLACEMENT_CHAR, ReplyDetokenizer
from chatapp.tui.widgets.chat_log import ChatLog
from chatapp.tui.widgets.status_bar import StatusBar
from chatapp.tui.widgets.topk_panel import TopKPanel
from tests.tui.conftest import app_with, ready, send, wait_until
from tests.tui.fakes import FAKE_INFO, FakeEngine

HOSTILE = [
    "[", "[/", "[/]", "[bold", "[link=https://example.com]x[/link]", "[0]", "[/INST]", "[@click=app.quit]",
    "\x1b[31mred\x1b[0m", "\x1b]8;;http://x\x07link", "\r", "\x00", "\u200b", "\x7f", "\b",
    "مرحبا بالعالم", "\u202ereversed\u202c", "שלום", "🎉", "e\u0301", "x" * 5000,
]
"""Each would be markup, a link, an action, a terminal escape, a control, or a layout hazard."""
PASTE = ("[bold]lorem[/bold] \x1b[2J ipsum " * 5000)[:100_000]
"""A 100 KB paste full of markup and escapes."""


@pytest.mark.anyio
async def test_hostile_text_through_messages_panel_inspector_and_status():
    engine = FakeEngine(replies=[HOSTILE], info=dataclasses.replace(FAKE_INFO, name="[bold]Evil[/bold] \x1b[31m"))
    app = app_with(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "".join(HOSTILE[:12]))
        assert app.is_running
        reply = app.chat.conversation.last.reply
        assert reply.text == "".join(HOSTILE)  # nothing the model said is lost
        # The prompt (a TextArea) normalises a lone carriage return to a newline; all else stays.
        assert app.chat.conversation.last.user == "".join(HOSTILE[:12]).replace("\r", "\n")
        app.export_screenshot()  # renders every visible widget once more
        app.chat.query_one(StatusBar).render()
        # The panel and the inspector over every hostile step, heatmap on.
        await pilot.press("ctrl+o", "ctrl+t", "home")
        for _ in HOSTILE:
            app.chat.query_one(TopKPanel).render()
            await pilot.press("right")
        assert app.chat.query_one(ChatLog).cursor is not None
        await pilot.press("escape")
        # A notification quoting hostile text (a bad slash command value).
        await send(pilot, "/temp [bold]\x1b[31m", wait=False)
        await pilot.pause()
        errors = [n for n in app._notifications if n.severity == "error"]
        assert errors and "\n" not in errors[-1].message
        assert app.is_running


@pytest.mark.anyio
async def test_a_100_kb_paste_is_kept_whole_and_the_app_stays_alive():
    engine = FakeEngine()
    app = app_with(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await send(pilot, PASTE)
        await wait_until(pilot, lambda: app.chat.conversation.last is not None, what="message sent")
        assert app.chat.conversation.last.user == PASTE
        assert engine.calls[-1].messages[-1]["content"] == PASTE
        assert app.is_running


@pytest.mark.model
@pytest.mark.parametrize("text", HOSTILE + [PASTE[:2000]])
def test_hostile_text_round_trips_through_the_detokenizer(default_model, text):
    tok = default_model.tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    detok = ReplyDetokenizer(tok)
    deltas = [detok.step(i) for i in ids]
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=True)
    assert all(REPLACEMENT_CHAR not in d for d in deltas)

