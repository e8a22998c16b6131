"""The TUI's decode speed against the bare engine's, for `chatapp bench`.

Both run the same engine on the engine thread (`chatapp.engine.thread`, where the TUI loads and
decodes), in pairs whose order alternates, with the TUI headless (Textual's test driver renders
every frame as it would on a terminal). While the bare engine runs, the UI's event loop waits for
it, doing nothing.

`chatapp bench` measures them in a fresh process that loads the model as the app does, so that
its main thread runs only the UI: on CPU, a second thread that runs torch operations (here, the
bench's own main thread) would slow every other thread's decoding (see `chatapp.engine.thread`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chatapp.chat.settings import SamplingSettings
from chatapp.engine import thread as engine_thread

TUI_SIZE = (120, 36)
"""Terminal size the app is driven at."""
WAIT_TIMEOUT_S = 300.0
"""Longest wait for the model or a reply."""
POLL_S = 0.2
"""How often the driver checks whether the reply is done. It only sleeps between checks (a
pilot pause waits for every widget to settle, which would cost the app time a terminal user's
app does not spend); the speeds come from the turns' own statistics."""


def headless_tok_per_s(engine, messages: list[dict], settings: SamplingSettings) -> float:
    """Decode speed of the bare engine, on the engine thread as the TUI runs it (blocking the
    caller, the UI's event loop, until it is done)."""

    def run() -> float:
        engine.reset()
        turn = engine.start_turn(messages, settings)
        for _ in turn:
            pass
        return turn.stats.tok_per_s

    return engine_thread.submit(run).result()


async def _until(pilot, condition) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the TUI did not finish in time")
        await asyncio.sleep(POLL_S)


def _finished_reply(app):
    """The last exchange's reply once its turn has ended, else None."""
    last = app.chat.conversation.last
    reply = last.reply if last is not None else None
    return reply if reply is not None and reply.stats is not None and not app.chat.generating else None


async def _measure(load_engine, prompt: str, settings: SamplingSettings, runs: int) -> list[tuple[float, float]]:
    from chatapp.tui.app import make_app

    pairs: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="chatapp-bench-") as scratch:  # never the user's history
        app = make_app(settings=settings, load_engine=load_engine, store_path=Path(scratch) / "bench.sqlite3")
        await _drive(app, prompt, settings, runs, pairs)
    return pairs


async def _drive(app, prompt: str, settings: SamplingSettings, runs: int, pairs: list) -> None:
    from textual import events

    from chatapp.tui.widgets.prompt_input import PromptInput

    async with app.run_test(size=TUI_SIZE) as pilot:
        await _until(pilot, lambda: app.chat.engine is not None)
        engine = app.chat.engine

        async def tui_tok_per_s() -> float:
            engine_thread.submit(engine.reset).result()
            app.chat.query_one(PromptInput).insert("/clear")
            await pilot.press("enter")
            await pilot.pause()
            app.chat.query_one(PromptInput).insert(prompt)
            # Enter as a terminal's driver sends it. Not `pilot.press`: it polls the process until
            # its CPU goes idle (up to 2 s, 50 times a second), which it never does while a reply
            # is written, waking the app throughout a reply as no terminal would.
            app.post_message(events.Key("enter", "\r"))
            await _until(pilot, lambda: _finished_reply(app) is not None)
            return _finished_reply(app).stats.tok_per_s

        messages = [{"role": "user", "content": prompt}]
        for run in range(runs):
            if run % 2 == 0:  # which side goes first alternates, so neither always follows the other
                headless = headless_tok_per_s(engine, messages, settings)
                tui = await tui_tok_per_s()
            else:
                tui = await tui_tok_per_s()
                headless = headless_tok_per_s(engine, messages, settings)
            pairs.append((tui, headless))


CHILD_CODE = (
    "import json, sys\n"
    "from chatapp.bench.tui_speed import child_main\n"
    "child_main(json.loads(sys.argv[1]))\n"
)
"""The fresh process of `tui_and_headless_in_fresh_process`."""


def child_main(job: dict) -> None:
    """Load the model on the app's loader thread, measure, print the pairs as one JSON line."""

    def load(progress):
        from chatapp.engine.loader import load_engine

        return load_engine(job["model"], job["device"], progress=progress)

    settings = SamplingSettings(**job["settings"])
    pairs = asyncio.run(_measure(load, job["prompt"], settings, job["runs"]))
    print(json.dumps(pairs), flush=True)


def tui_and_headless_in_fresh_process(
    model: str, device: str | None, prompt: str, settings: SamplingSettings, runs: int
) -> list[tuple[float, float]]:
    """(TUI tok/s, headless tok/s) for each of `runs` alternating pairs, measured on the same
    engine in a fresh process that loads `model` as the app does."""
    job = {"model": model, "device": device, "prompt": prompt, "settings": dataclasses.asdict(settings), "runs": runs}
    result = subprocess.run([sys.executable, "-c", CHILD_CODE, json.dumps(job)], capture_output=True, text=True,
                            timeout=WAIT_TIMEOUT_S * (runs + 1))
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the TUI speed process failed: {last}")
    return [tuple(pair) for pair in json.loads(result.stdout.strip().splitlines()[-1])]
