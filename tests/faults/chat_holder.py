"""Another chatapp process with a saved chat open: for the concurrent-writer test.

Usage: `python -m tests.faults.chat_holder STORE_PATH CHAT_ID`. It opens the chat (headless, a
scripted engine), sends "from the other app", prints READY, and quits (saving) when its stdin
closes.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from chatapp.chat.settings import SamplingSettings
from chatapp.storage.store import ChatStore
from chatapp.tui.app import make_app
from tests.tui.fakes import FakeEngine


def main() -> int:
    store_path, chat_id = Path(sys.argv[1]), sys.argv[2]
    with ChatStore(store_path) as store:
        chat = store.load(chat_id)
    app = make_app(settings=SamplingSettings(), load_engine=lambda report: FakeEngine(), store_path=store_path,
                   chat=chat)

    async def drive(pilot) -> None:
        while app.chat.engine is None:
            await asyncio.sleep(0.01)
        await app.chat.send("from the other app")
        while app.chat.generating:
            await asyncio.sleep(0.01)
        print("READY", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        app.exit()

    app.run(headless=True, auto_pilot=drive)
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
