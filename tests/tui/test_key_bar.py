"""The key bar: the screen's keys on one line, following the focus; a click presses a key."""

from __future__ import annotations

import pytest

from chatapp.tui.screens import HelpScreen
from chatapp.tui.widgets.key_bar import KeyBar
from tests.tui.conftest import app_with, ready, send, wait_until
from tests.tui.fakes import FakeEngine

pytestmark = pytest.mark.anyio


def bar_text(app) -> str:
    return app.chat.query_one(KeyBar).render().plain


async def test_the_bar_follows_the_focus_and_fits_the_width():
    app = app_with(FakeEngine())
    async with app.run_test(size=(160, 30)) as pilot:
        await ready(pilot)
        text = bar_text(app)
        assert "^r Regenerate" in text and "f1 Help" in text and "^q Quit" in text and "palette" in text
        await send(pilot, "hi")
        await pilot.press("ctrl+t")  # the inspector's own keys come first while it has the focus
        await wait_until(pilot, lambda: "Leave inspector" in bar_text(app), what="inspector keys")
        await pilot.press("escape")
        await wait_until(pilot, lambda: "Leave inspector" not in bar_text(app), what="back to the prompt's keys")
        await pilot.resize_terminal(60, 30)
        await pilot.pause()
        text = bar_text(app)
        assert len(text) <= 60 and "^r Regenerate" in text and "^q Quit" not in text  # cut at a whole hint


async def test_a_click_on_a_hint_presses_its_key():
    app = app_with(FakeEngine())
    async with app.run_test(size=(160, 30)) as pilot:
        await ready(pilot)
        text = bar_text(app)
        await pilot.click(KeyBar, offset=(text.index("Help"), 0))
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), what="the help screen")
