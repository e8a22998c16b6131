"""A reply shows the model's line breaks: a poem keeps its lines, streamed and finished alike."""

from __future__ import annotations

import pytest
from textual.widgets._markdown import MarkdownParagraph

from tests.tui.conftest import app_with, ready, send, wait_until
from tests.tui.fakes import FakeEngine

pytestmark = pytest.mark.anyio

POEM = ["Roses", " are", " red", ",\n", "Violets", " are", " blue", ".\n\n", "Code", " stays", ":", "\n\n",
        "```", "\n", "a", " =", " 1", "\n", "b", " =", " 2", "\n", "```"]
"""A reply of two lines, a paragraph break and a code block, as tokens."""
STEP_SECONDS = 0.15
"""Between the fake tokens: the reply's first lines are drawn while the rest is still coming."""
STREAM_TIMEOUT = 10.0
"""Longest wait for the streamed lines."""


def _lines(app) -> list[str]:
    paragraphs = app.chat.query(MarkdownParagraph)
    return [line.rstrip() for p in paragraphs for line in str(p.render()).splitlines()]


async def test_a_poem_keeps_its_lines_while_streaming_and_once_finished():
    app = app_with(FakeEngine(replies=[POEM], delay=STEP_SECONDS))
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "a poem", wait=False)
        await wait_until(pilot, lambda: "blue." in " ".join(_lines(app)), timeout=STREAM_TIMEOUT)
        assert app.chat.generating  # still streaming
        streamed = _lines(app)
        assert "Roses are red," in streamed and "Violets are blue." in streamed  # two lines, not one
        await wait_until(pilot, lambda: not app.chat.generating, timeout=STREAM_TIMEOUT)
        finished = _lines(app)
        assert finished[:2] == ["Roses are red,", "Violets are blue."] and "Code stays:" in finished
        code = app.chat.query_one("MarkdownFence")
        assert "a = 1\nb = 2" in str(code.code)  # a code block is still one block
