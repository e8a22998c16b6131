"""Resizing the terminal to tiny sizes and back, mid-reply, never crashes or loses text."""

from __future__ import annotations

import pytest

from tests.tui.conftest import app_with, ready, send, wait_until
from tests.tui.fakes import FakeEngine

pytestmark = pytest.mark.anyio

SIZES = [(120, 40), (40, 10), (10, 4), (1, 1), (80, 24), (200, 60), (120, 40)]
"""From roomy to absurd and back."""


async def test_resizing_while_a_reply_streams():
    engine = FakeEngine(replies=[["word "] * 40], delay=0.01)
    app = app_with(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await send(pilot, "hello", wait=False)
        for width, height in SIZES:
            await pilot.resize_terminal(width, height)
            await pilot.pause()
            app.export_screenshot()
        await wait_until(pilot, lambda: not app.chat.generating, what="reply finished")
        assert app.chat.conversation.last.reply.text == "word " * 40
        await pilot.press("ctrl+t", "home", "right")  # the inspector still works after it all
        assert app.is_running


@pytest.mark.parametrize("size", [(80, 24), (140, 40)])
async def test_help_fits_the_width_and_scrolls_only_down(size):
    from chatapp.tui.screens import HelpScreen

    app = app_with(FakeEngine())
    async with app.run_test(size=size) as pilot:
        await ready(pilot)
        await pilot.press("f1")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen))
        box = app.screen.query_one("#help-box")
        await pilot.pause()
        assert box.max_scroll_x == 0  # every line fits: nothing is cut at the right or scrolled sideways
        assert box.outer_size.width <= size[0]
        assert (box.max_scroll_y > 0) == (size[1] < 40)  # 80×24 scrolls down to the rest
