"""SIGTERM and SIGHUP save the chat (the reply being written included) and quit cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from chatapp.storage.chat_file import INTERRUPTED_NOTE
from chatapp.storage.store import ChatStore

ROOT = Path(__file__).resolve().parents[2]
"""The repository root, where `python -m tests.tui.signal_app` runs."""
START_TIMEOUT = 60
"""Seconds the app may take to start and stream two tokens (Textual's import is most of it)."""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_signal_saves_the_chat_and_exits(tmp_path, name):
    if not hasattr(signal, name):
        pytest.skip(f"no {name} here")
    number = getattr(signal, name)
    store_path = tmp_path / "chats.sqlite3"
    app = subprocess.Popen([sys.executable, "-m", "tests.tui.signal_app", str(store_path)], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert app.stdout.readline().strip() == "READY", app.stderr.read()
        app.send_signal(number)
        _, stderr = app.communicate(timeout=START_TIMEOUT)
    finally:
        app.kill()
    assert app.returncode == 128 + number, stderr
    assert "Traceback" not in stderr
    with ChatStore(store_path) as store:
        chat = store.last()
    assert chat is not None and chat.conversation.exchanges[0].user == "hi"
    reply = chat.conversation.exchanges[0].reply
    assert len(reply.steps) >= 2 and reply.text.startswith(" w0 w1")
    assert reply.status == "stopped" and reply.error == INTERRUPTED_NOTE
