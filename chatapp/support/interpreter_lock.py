"""How soon a thread gets Python's interpreter lock back from a thread that is running Python.

A thread asking for the lock while another runs Python waits for the interpreter's switch
interval (5 ms by default) before the other is made to let go. The TUI's engine thread asks for it
several times in every decode step: after each native call, and inside one too (torch takes the
lock when it drops a call's arguments that Python made, a tensor at a time). While the UI thread
draws a batch, in Python, each of those asks could hold a step up for up to 5 ms. The TUI's
process switches every `UI_SWITCH_INTERVAL` instead (what it bought: README, Performance, "The
TUI's cost").
"""

from __future__ import annotations

import sys

UI_SWITCH_INTERVAL = 0.0005
"""Seconds a thread running Python keeps the lock from another that asks for it, in the TUI."""


class QuickHandoff:
    """The interpreter's switch interval at `UI_SWITCH_INTERVAL` from `start` until `stop`, which
    puts back the interval found at `start` (a process-wide setting: one holder at a time)."""

    def __init__(self) -> None:
        """Nothing changed yet."""
        self._before: float | None = None

    def start(self) -> None:
        """Switch every `UI_SWITCH_INTERVAL` (a second `start` keeps the first one's interval)."""
        if self._before is None:
            self._before = sys.getswitchinterval()
        sys.setswitchinterval(UI_SWITCH_INTERVAL)

    def stop(self) -> None:
        """Put back the interval `start` found (nothing if not started)."""
        if self._before is not None:
            sys.setswitchinterval(self._before)
            self._before = None
