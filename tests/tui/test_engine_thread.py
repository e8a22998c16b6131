"""All model work of the TUI's process runs on one thread (see `chatapp.engine.thread`)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import pytest

from chatapp.chat.settings import SamplingSettings
from chatapp.engine.thread import THREAD_NAME, on_engine_thread, submit
from chatapp.tui.app import make_app
from tests.tui.conftest import ready, send, wait_until
from tests.tui.fakes import FakeEngine

pytestmark = pytest.mark.anyio


@dataclass
class ThreadRecordingEngine(FakeEngine):
    """A fake engine that notes the thread of every call a real one would make torch work in."""

    threads: list[str] = field(default_factory=list)

    def _note(self) -> None:
        self.threads.append(threading.current_thread().name)

    def reset(self) -> None:
        self._note()
        super().reset()

    def start_turn(self, messages, settings, reply_prefix_ids=(), stop=None):
        self._note()
        return super().start_turn(messages, settings, reply_prefix_ids, stop)

    def step(self, index: int, text: str):
        self._note()  # called while the turn is iterated, i.e. where a real engine decodes
        return super().step(index, text)


async def test_loading_turns_and_resets_all_run_on_the_engine_thread():
    engine = ThreadRecordingEngine()

    def load(report):
        engine.threads.append(threading.current_thread().name)
        return engine

    app = make_app(settings=SamplingSettings(), load_engine=load, top_n=engine.top_n)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        await pilot.press("ctrl+n")  # a new chat resets the engine
        await wait_until(pilot, lambda: engine.resets == 1, what="the reset")
        await send(pilot, "again")
    assert len(engine.calls) == 2 and len(engine.threads) >= 10
    assert {name.split("_")[0] for name in engine.threads} == {THREAD_NAME}
    assert len(set(engine.threads)) == 1


async def test_a_cancelled_wait_still_runs_the_queued_work():
    release, done = threading.Event(), []
    busy = submit(release.wait, 5)  # the engine thread is busy (a turn winding down)
    waiting = asyncio.ensure_future(on_engine_thread(done.append, "reset"))
    await asyncio.sleep(0.05)
    waiting.cancel()  # e.g. the worker waiting for the reset was replaced by a new turn's
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    busy.result()
    submit(lambda: None).result()  # everything queued before it has run
    assert done == ["reset"]
