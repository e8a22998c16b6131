"""The status line follows the reply being written: its own speed, tokens and context."""

from __future__ import annotations

import re
import threading

import pytest

from chatapp.tui.widgets.status_bar import StatusBar
from tests.tui.conftest import app_with, ready, send, wait_until
from tests.tui.fakes import FakeEngine

pytestmark = pytest.mark.anyio

STEP_SECONDS = 0.05
"""Between the fake tokens: 20 tokens a second."""
STREAM_TIMEOUT = 10.0
"""Longest wait for the status line to show the stream."""


def _status(app) -> str:
    return str(app.chat.query_one(StatusBar).render())


async def test_the_status_line_shows_the_reply_being_written():
    engine = FakeEngine(replies=[["Hi", "!"], [f" w{i}" for i in range(80)]], delay=STEP_SECONDS)
    app = app_with(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "first")
        before = _status(app)  # the first, finished reply: the fake's 42.0 tok/s
        assert "42.0 tok/s" in before
        await send(pilot, "now a long one", wait=False)
        await wait_until(pilot, lambda: re.search(r"writing… ([2-9]\d|1\d) tokens", _status(app)),
                         timeout=STREAM_TIMEOUT)
        status = _status(app)
        speed = float(re.search(r"([\d.]+) tok/s", status).group(1))
        assert speed != 42.0 and 5 < speed < 25  # its own pace (20 a second), not the last turn's
        used = int(re.search(r"ctx (\d+)/", status).group(1))
        tokens = int(re.search(r"writing… (\d+) tokens", status).group(1))
        prompt = sum(len(m["content"].split()) + 4 for m in engine.calls[-1].messages)  # the fake's count
        assert used == prompt + tokens  # this turn's prompt and the tokens so far
        await wait_until(pilot, lambda: not app.chat.generating, timeout=STREAM_TIMEOUT)
        assert "writing" not in _status(app) and "42.0 tok/s" in _status(app)  # the turn's own figure


async def test_the_status_line_says_what_the_runtime_is_busy_with():
    engine = FakeEngine()
    engine.activity = "compiling the int4 kernel: replies speed up when it is ready"
    app = app_with(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        assert "compiling the int4 kernel" in _status(app)
        engine.activity = None
        await send(pilot, "again")
        assert "compiling" not in _status(app)


async def test_a_long_prompt_shows_how_much_is_read_then_the_time_to_its_first_token():
    gate = threading.Event()  # holds the reading of the prompt's pieces
    engine = FakeEngine(replies=[[f" w{i}" for i in range(8)]], prompt_pieces=2, gate=gate, gate_after=99,
                        delay=0.25)
    app = app_with(engine)
    async with app.run_test(size=(160, 24)) as pilot:
        await ready(pilot)
        await send(pilot, "a long paste", wait=False)
        await wait_until(pilot, lambda: "reading the prompt… 0/2,000 tokens" in _status(app), timeout=STREAM_TIMEOUT)
        assert app.chat.session.prompt_read.total == 2000
        gate.set()
        await wait_until(pilot, lambda: "first token after 2.5 s" in _status(app), timeout=STREAM_TIMEOUT)
        assert "reading" not in _status(app)
        await wait_until(pilot, lambda: not app.chat.generating, timeout=STREAM_TIMEOUT)
        assert "first token" not in _status(app) and app.chat.session.prompt_read is None


async def test_a_short_prompt_says_nothing_of_its_reading():
    engine = FakeEngine(replies=[[f" w{i}" for i in range(8)]], delay=0.25)
    app = app_with(engine)
    async with app.run_test(size=(160, 24)) as pilot:
        await ready(pilot)
        await send(pilot, "short", wait=False)
        await wait_until(pilot, lambda: re.search(r"writing… [1-9] token", _status(app)), timeout=STREAM_TIMEOUT)
        assert "first token" not in _status(app) and "reading" not in _status(app)


async def test_esc_stops_a_reply_while_its_long_prompt_is_read():
    gate = threading.Event()
    engine = FakeEngine(replies=[["never"]], prompt_pieces=3, gate=gate, gate_after=99)
    app = app_with(engine)
    async with app.run_test(size=(160, 24)) as pilot:
        await ready(pilot)
        await send(pilot, "a long paste", wait=False)
        await wait_until(pilot, lambda: "reading the prompt" in _status(app), timeout=STREAM_TIMEOUT)
        await pilot.press("escape")
        gate.set()  # the piece being read ends; the rest is never read
        await wait_until(pilot, lambda: not app.chat.generating, timeout=STREAM_TIMEOUT)
        reply = app.chat.conversation.last.reply
        assert reply.status == "stopped" and reply.steps == []
        assert app.chat.session.prompt_read is None and "reading" not in _status(app)
