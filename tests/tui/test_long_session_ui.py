"""A long scripted session: how the UI's per-turn latency and memory grow (figures printed).

The chat log mounts a few widgets per exchange but keeps only the latest `MAX_MOUNTED_EXCHANGES`
exchanges mounted, so a turn's cost should not grow with the conversation; this test records the
trend and bounds it, and bounds the mounted widgets, so a regression shows.
"""

from __future__ import annotations

import os
import time

import pytest

from chatapp.support.memory import current_rss_mb
from chatapp.tui.widgets.chat_log import MAX_MOUNTED_EXCHANGES
from tests.tui.conftest import app_with, ready, send
from tests.tui.fakes import FakeEngine

pytestmark = pytest.mark.anyio

TURNS = 200
"""Turns in the session."""
WINDOW = 10
"""Turns averaged for the early and late latency figures."""
MAX_SLOWDOWN = 3.0
"""Late turns may take at most this many times as long as early ones (Pilot round trip)."""
WIDGETS_PER_EXCHANGE = 8
"""Upper bound on the widgets one mounted exchange adds (user message, reply and its parts)."""
MAX_WIDGETS = 60 + WIDGETS_PER_EXCHANGE * MAX_MOUNTED_EXCHANGES
"""Mounted widgets allowed at the end: the screen's own plus the mounted exchanges, whatever TURNS."""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
async def test_a_long_session_stays_responsive(capsys):
    engine = FakeEngine(replies=[["A ", "short ", "reply ", "with ", "**markdown**."]])
    app = app_with(engine)
    latencies: list[float] = []
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        for turn in range(TURNS):
            start = time.perf_counter()
            await send(pilot, f"message {turn}")
            latencies.append(time.perf_counter() - start)
            if turn == WINDOW - 1:
                early_rss = current_rss_mb()
        late_rss = current_rss_mb()
        widgets = len(list(app.screen.walk_children()))
        assert len(app.chat.conversation.exchanges) == TURNS
    early = sum(latencies[:WINDOW]) / WINDOW
    late = sum(latencies[-WINDOW:]) / WINDOW
    with capsys.disabled():
        print(f"\n{TURNS} turns: {early * 1000:.0f} ms per turn early, {late * 1000:.0f} ms late; "
              f"{widgets} widgets mounted; RSS +{late_rss - early_rss:.1f} MiB over {TURNS - WINDOW} turns")
    assert late <= early * MAX_SLOWDOWN
    assert widgets <= MAX_WIDGETS
