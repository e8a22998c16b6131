"""Model and user text is shown literally: markup-like text and escapes never act or crash."""

from __future__ import annotations

import pytest

from chatapp.tui.widgets.chat_log import ChatLog
from chatapp.tui.widgets.messages_view import UserMessage
from chatapp.tui.widgets.topk_panel import TopKPanel
from tests.tui.conftest import app_with, ready, send
from tests.tui.fakes import FakeEngine

pytestmark = pytest.mark.anyio

TRICKY_TOKENS = ["[bold]", "x[/bold]", " [link=x]y[/link]", " \x1b[31mred", " [/INST]", " [bold", " [@click=app.quit]q[/]"]
"""Tokens that would be markup, links, actions or terminal escapes if interpreted."""


async def test_markup_like_text_is_literal_everywhere():
    engine = FakeEngine(replies=[TRICKY_TOKENS])
    app = app_with(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await send(pilot, "[red]hi[/red] [/INST] \x1b[2J")
        assert app.is_running  # the [@click=app.quit] token did not quit
        reply = app.chat.conversation.last.reply
        assert reply.text == "".join(TRICKY_TOKENS)
        user = app.chat.query_one(UserMessage)
        assert str(user.content) == "[red]hi[/red] [/INST] ␛[2J"
        screen = app.export_screenshot().replace("&#160;", " ")
        for literal in ("[bold]x[/bold]", "[/INST]", "[link=x]y[/link]", "␛[31mred", "[red]hi[/red]", "[@click=app.quit]"):
            assert literal in screen, literal
        # Token view, heatmap and inspector over the same text.
        await pilot.press("ctrl+o", "ctrl+t", "home")
        for _ in TRICKY_TOKENS:
            await pilot.press("right")
            app.chat.query_one(TopKPanel).render()
        assert app.chat.query_one(ChatLog).cursor.step == len(TRICKY_TOKENS)
        assert app.is_running


async def test_error_messages_with_markup_are_literal():
    engine = FakeEngine(fail_at=0)
    app = app_with(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        notes = [n for n in app._notifications if n.severity == "error"]
        assert notes and "[bold]step[/bold]" in notes[-1].message and not notes[-1].markup
        assert "[bold]step[/bold]" in str(app.chat.query_one(ChatLog).replies[-1].header())
