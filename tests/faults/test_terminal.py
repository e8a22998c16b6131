"""The terminal faults: a keystroke flood, the terminal going away, signals while the UI is busy.

The app runs in a real pseudo-terminal with Textual's own driver (`tests.faults.terminal_app`,
a scripted engine), as `chatapp` runs in a terminal window.
"""

from __future__ import annotations

import signal
import time

import pytest
from textual import events
from textual._xterm_parser import XTermParser

from chatapp.storage.store import ChatStore
from chatapp.tui.terminal import TERMINAL_RESET, UnbracketedPaste
from tests.faults.pty_terminal import terminal_app

READY_TIMEOUT = 60
"""Seconds the app may take to start (Textual's import is most of it)."""
EXIT_LIMIT = 2.0
"""The app's promise: it is gone this long after its terminal or a signal says so."""
EXIT_SLACK = 1.0
"""Added for a loaded test machine."""
ABSORB_TIMEOUT = 15
"""Seconds a 20 KB paste may take to become a message (typing it key by key took 50 s)."""
FLOOD = "\n".join(f"line {i:04}: the quick brown fox jumps over the lazy dog." for i in range(380))
"""About 20 KB of text in 380 lines, arriving as a terminal without bracketed paste sends it."""
F9 = "\x1b[20~"
"""The F9 key, as xterm sends it (the test app's key that hangs its UI thread)."""


def _ready(terminal) -> None:
    assert terminal.wait_for_output(b"FakeLM-1", READY_TIMEOUT), terminal.output[-2000:]


def _saved(store_path):
    if not store_path.exists():
        return None
    with ChatStore(store_path) as store:
        return store.last()


def _signal_ends_it(terminal, number: int) -> bool:
    """Send signal `number` and read the terminal until the app ends (True) or its time is up."""
    sent = time.monotonic()
    terminal.process.send_signal(number)
    while terminal.process.poll() is None and time.monotonic() - sent < EXIT_LIMIT + EXIT_SLACK:
        terminal.read_for(0.05)
    print(f"signal {number}: the app ended after {time.monotonic() - sent:.2f} s")
    return terminal.process.poll() is not None


def _send_and_stream(terminal, store_path) -> None:
    """Send "hi" and wait until part of the (long) reply is saved."""
    terminal.type("hi\n")
    end = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < end:
        terminal.read_for(0.2)
        chat = _saved(store_path)
        if chat and chat.conversation.exchanges and chat.conversation.exchanges[0].reply \
                and chat.conversation.exchanges[0].reply.steps:
            return
    pytest.fail("the reply never started")


def test_a_keystroke_flood_is_absorbed_quickly_with_its_newlines(tmp_path):
    store_path = tmp_path / "chats.sqlite3"
    terminal = terminal_app(store_path)
    try:
        _ready(terminal)
        terminal.type(FLOOD)
        terminal.read_for(0.5)
        terminal.type("\n")  # Enter, on its own, after the paste
        end = time.monotonic() + ABSORB_TIMEOUT
        chat = None
        while time.monotonic() < end and not (chat and chat.conversation.exchanges):
            terminal.read_for(0.2)
            chat = _saved(store_path)
        assert chat is not None and chat.conversation.exchanges, "the pasted message was not sent in time"
        assert [e.user for e in chat.conversation.exchanges] == [FLOOD]  # one message, newlines kept
    finally:
        terminal.kill()


@pytest.mark.parametrize("controlling", [False, True], ids=["reads-fail", "sighup"])
def test_the_app_exits_when_its_terminal_goes_mid_flood_and_saves_first(tmp_path, controlling):
    store_path = tmp_path / "chats.sqlite3"
    terminal = terminal_app(store_path, controlling=controlling)
    try:
        _ready(terminal)
        _send_and_stream(terminal, store_path)
        terminal.type(FLOOD)
        closed = time.monotonic()
        terminal.close()
        assert terminal.exited_within(EXIT_LIMIT + EXIT_SLACK), "the app outlived its terminal"
        print(f"exited {time.monotonic() - closed:.2f} s after its terminal closed")
        reply = _saved(store_path).conversation.exchanges[0].reply
        assert reply.status == "stopped" and reply.steps  # the partial reply is kept
    finally:
        terminal.kill()


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_a_signal_mid_flood_ends_the_app_in_time_and_saves_first(tmp_path, name):
    store_path = tmp_path / "chats.sqlite3"
    terminal = terminal_app(store_path)
    try:
        _ready(terminal)
        _send_and_stream(terminal, store_path)
        terminal.type(FLOOD)
        assert _signal_ends_it(terminal, getattr(signal, name)), f"{name} was ignored"
        assert terminal.process.returncode == 128 + getattr(signal, name)
        reply = _saved(store_path).conversation.exchanges[0].reply
        assert reply.status == "stopped" and reply.steps
    finally:
        terminal.kill()


def test_a_signal_ends_the_app_in_time_even_when_its_ui_thread_hangs(tmp_path):
    store_path = tmp_path / "chats.sqlite3"
    terminal = terminal_app(store_path)
    try:
        _ready(terminal)
        _send_and_stream(terminal, store_path)
        terminal.type(F9)
        assert terminal.wait_for_output(b"JAMMED", READY_TIMEOUT)
        assert _signal_ends_it(terminal, signal.SIGTERM), "SIGTERM was ignored while the UI thread hung"
        assert terminal.process.returncode == 128 + signal.SIGTERM
        reply = _saved(store_path).conversation.exchanges[0].reply
        assert reply.status == "stopped" and reply.steps  # saved by the deadline's own save
        assert terminal.output.rstrip().endswith(TERMINAL_RESET.encode())  # the terminal put back
    finally:
        terminal.kill()


def _events(text: str, detector=None, parser=None):
    detector = detector or UnbracketedPaste(clock=lambda: 100.0)
    feed = (parser or XTermParser()).feed
    return [(type(e).__name__, e.text if isinstance(e, events.Paste) else e.key) for e in detector.events(text, feed)]


def test_a_read_of_plain_lines_is_one_paste_and_typing_stays_keys():
    assert _events("a") == [("Key", "a")]  # typing: one key a read
    assert _events("one\rtwo\rthree") == [("Paste", "one\ntwo\nthree")]
    assert _events("hello\r") == [("Paste", "hello"), ("Key", "enter")]  # typed ahead: Enter sends
    assert _events("one\rtwo\r") == [("Paste", "one\ntwo\n")]  # a paste's last newline does not
    assert _events("\x1b[A") == [("Key", "up")]  # escape sequences go to the parser
    assert _events("ab\x7f") == [("Key", "a"), ("Key", "b"), ("Key", "backspace")]


def test_a_paste_continues_across_reads_and_bracketed_pastes_are_the_parsers():
    clock = iter([0.0, 0.05, 5.0]).__next__
    detector = UnbracketedPaste(clock=clock)
    assert _events("first line\rsecond", detector) == [("Paste", "first line\nsecond")]
    assert _events(" end\r", detector) == [("Paste", " end\n")]  # 50 ms later: the same paste
    assert _events("x", detector) == [("Key", "x")]  # seconds later: typing again
    bracketed, parser = UnbracketedPaste(clock=lambda: 0.0), XTermParser()
    assert _events("\x1b[200~one\r", bracketed, parser) == []  # the parser collects it...
    assert _events("two", bracketed, parser) == []
    assert _events("\x1b[201~", bracketed, parser) == [("Paste", "one\rtwo")]  # ...and pastes it whole
