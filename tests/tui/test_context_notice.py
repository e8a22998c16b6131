"""The UI says so when the oldest turns were left out to fit the context window."""

from __future__ import annotations

import pytest

from tests.tui.conftest import app_with, ready, send
from tests.tui.fakes import FakeEngine


@pytest.mark.anyio
async def test_dropped_turns_are_announced():
    engine = FakeEngine(dropped_turns=3)
    app = app_with(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hello")
        warnings = [n.message for n in app._notifications if n.severity == "warning"]
        assert any("3 oldest turns were left out" in m and "2048-token" in m for m in warnings), warnings
