"""The real app, headless, with a scripted engine: for the signal tests, run as a subprocess.

Usage: `python -m tests.tui.signal_app STORE_PATH`. It sends "hi", prints READY once two tokens
of the (slow) reply have arrived, and then waits for a signal. Streaming autosave is switched off,
so whatever the store holds afterwards was written by the signal's save.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from chatapp.chat.settings import SamplingSettings
from chatapp.session import chat_keeper
from chatapp.tui.app import make_app
from tests.tui.fakes import FakeEngine

STEP_SECONDS = 0.05
"""Delay between the fake reply's tokens: the reply is still being written when the signal comes."""
REPLY_TOKENS = 400
"""Length of the fake reply (20 s at `STEP_SECONDS`)."""


def main() -> int:
    chat_keeper.AUTOSAVE_SECONDS = float("inf")
    engine = FakeEngine(replies=[[f" w{i}" for i in range(REPLY_TOKENS)]], delay=STEP_SECONDS)
    app = make_app(settings=SamplingSettings(), load_engine=lambda report: engine, store_path=Path(sys.argv[1]))

    async def drive(pilot) -> None:
        while app.chat.engine is None:
            await asyncio.sleep(0.01)
        await app.chat.send("hi")
        while len(app.chat.conversation.last.reply.steps) < 2:
            await asyncio.sleep(0.01)
        print("READY", flush=True)

    app.run(headless=True, auto_pilot=drive)
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
