"""Helpers for the TUI tests: an app around a scripted engine, and waiting on workers."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from chatapp.chat.settings import SamplingSettings
from chatapp.tui.app import ChatApp, make_app
from chatapp.tui.widgets.prompt_input import PromptInput
from tests.tui.fakes import FakeEngine

WAIT_TIMEOUT = 5.0
"""Longest a test waits for a worker's effect before failing."""
POLL_SECONDS = 0.01
"""How often `wait_until` checks its condition."""


async def wait_until(pilot, condition: Callable[[], bool], timeout: float = WAIT_TIMEOUT, what: str = "") -> None:
    """Let the app run until `condition()` holds (workers post from threads)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await pilot.pause(POLL_SECONDS)
    await pilot.pause()


def app_with(engine: FakeEngine, settings: SamplingSettings | None = None, progress: tuple[str, ...] = (),
             **options) -> ChatApp:
    """An app whose loader reports `progress` lines and returns `engine` (`options`: `make_app`'s)."""

    def load(report):
        for line in progress:
            report(line)
        return engine

    return make_app(settings=settings or SamplingSettings(), load_engine=load, top_n=engine.top_n, **options)


def app_loading_until(release: threading.Event, engine: FakeEngine, progress: tuple[str, ...] = ()) -> ChatApp:
    """An app whose loader reports `progress` lines, then waits for `release` to return `engine`."""

    def load(report):
        for line in progress:
            report(line)
        release.wait(timeout=10)
        return engine

    return make_app(settings=SamplingSettings(), load_engine=load, top_n=engine.top_n)


@pytest.fixture(autouse=True)
def private_data_dir(tmp_path_factory, monkeypatch) -> Path:
    """Every app in these tests keeps its history in a temporary folder, never the user's."""
    folder = tmp_path_factory.mktemp("data")
    monkeypatch.setenv("XDG_DATA_HOME", str(folder))
    monkeypatch.setattr("chatapp.storage.store.default_store_path", lambda: folder / "chats.sqlite3")
    return folder


@pytest.fixture
def store_path(tmp_path) -> Path:
    """A history database path of the test's own."""
    return tmp_path / "chats.sqlite3"


async def ready(pilot) -> None:
    """Wait until the engine is loaded."""
    await wait_until(pilot, lambda: pilot.app.chat.engine is not None, what="engine loaded")


async def send(pilot, text: str, wait: bool = True) -> None:
    """Put `text` in the prompt, press Enter, and (by default) wait for the reply to finish.

    The text is inserted rather than typed key by key, which keeps the suite fast; the tests
    that are about typing press keys themselves.
    """
    if text:
        pilot.app.chat.query_one(PromptInput).insert(text)
    await pilot.press("enter")
    if wait:
        await wait_until(pilot, lambda: not pilot.app.chat.generating, what="reply finished")


@pytest.fixture
def engine() -> FakeEngine:
    """A scripted engine answering "Hello, world!"."""
    return FakeEngine()


@pytest.fixture
def anyio_backend() -> str:
    """Pilot tests run on asyncio (through anyio's pytest plugin)."""
    return "asyncio"
