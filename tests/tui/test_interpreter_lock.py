"""The TUI's process hands the interpreter lock over every `UI_SWITCH_INTERVAL` while the app
runs, and puts the interval it found back when the app ends."""

from __future__ import annotations

import sys

import pytest

from chatapp.support.interpreter_lock import UI_SWITCH_INTERVAL, QuickHandoff
from tests.tui.conftest import app_with, ready
from tests.tui.fakes import FakeEngine

pytestmark = pytest.mark.anyio

OTHER_INTERVAL = 0.003
"""An interval unlike both Python's default and chatapp's, set before each test."""


@pytest.fixture(autouse=True)
def other_interval():
    """Start from `OTHER_INTERVAL`; the process's own interval is put back after."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(OTHER_INTERVAL)
    yield
    sys.setswitchinterval(before)


def test_the_handoff_sets_the_ui_interval_and_puts_back_the_one_it_found():
    handoff = QuickHandoff()
    handoff.start()
    handoff.start()  # a second start keeps the interval the first one found
    assert sys.getswitchinterval() == pytest.approx(UI_SWITCH_INTERVAL)
    handoff.stop()
    assert sys.getswitchinterval() == pytest.approx(OTHER_INTERVAL)
    handoff.stop()  # nothing more to put back
    assert sys.getswitchinterval() == pytest.approx(OTHER_INTERVAL)


async def test_the_app_switches_quickly_while_it_runs_and_not_after():
    app = app_with(FakeEngine())
    async with app.run_test() as pilot:
        await ready(pilot)
        assert sys.getswitchinterval() == pytest.approx(UI_SWITCH_INTERVAL)
    assert sys.getswitchinterval() == pytest.approx(OTHER_INTERVAL)
