"""The real app in a real (pseudo-)terminal, with a scripted engine: for the terminal fault tests.

Usage: `python -m tests.faults.terminal_app STORE_PATH`, with a terminal as stdin and stderr.
F9 blocks the UI thread for a minute: a stand-in for any handler that hangs it.
Unlike the Pilot tests, the app runs with Textual's own terminal driver (as `chatapp` does):
what it reads from the terminal, how it reacts when the terminal goes away, are the real ones.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from textual.binding import Binding

from chatapp.chat.settings import SamplingSettings
from chatapp.tui import app as app_module
from chatapp.tui.app import ChatApp
from tests.tui.fakes import FakeEngine

REPLY_TOKENS = 400
"""Length of the fake reply."""
STEP_SECONDS = 0.02
"""Delay between its tokens."""
JAM_SECONDS = 60
"""How long F9 blocks the UI thread."""


class JammableApp(ChatApp):
    """The chat app with a key that hangs its UI thread."""

    CSS_PATH = str(Path(app_module.__file__).with_name(ChatApp.CSS_PATH))
    BINDINGS = [*ChatApp.BINDINGS, Binding("f9", "jam", priority=True)]

    def action_jam(self) -> None:
        """Block the event loop, as a runaway handler would."""
        print("JAMMED", file=sys.__stdout__, flush=True)
        time.sleep(JAM_SECONDS)


def main() -> int:
    engine = FakeEngine(replies=[[f" w{i}" for i in range(REPLY_TOKENS)]], delay=STEP_SECONDS)
    app = JammableApp(SamplingSettings(), lambda report: engine, store_path=Path(sys.argv[1]))
    app.run()
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
