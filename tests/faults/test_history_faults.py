"""Faults of the history: two apps on one chat, a full disk, a read-only or truncated history,
and `--resume` reopening what was open."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from chatapp.cli import main as cli
from chatapp.session import chat_keeper
from chatapp.storage.chat_file import load_chat_file
from chatapp.storage.store import ChatStore, StoreError
from tests.tui.conftest import app_with, ready, send
from tests.tui.fakes import FakeEngine
from tests.tui.test_persistence import saved_chat

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
"""The repository root, where `python -m tests...` runs."""
START_TIMEOUT = 60
"""Seconds the other app may take to start and answer."""


def _one_saved_chat(store_path):
    chat = saved_chat("hello", ["Hi!"])
    with ChatStore(store_path) as store:
        store.save(chat)
    return chat


async def test_two_apps_on_one_chat_lose_nothing(store_path):
    chat = _one_saved_chat(store_path)
    other = subprocess.Popen([sys.executable, "-m", "tests.faults.chat_holder", str(store_path), chat.id],
                             cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert other.stdout.readline().strip() == "READY", other.stderr.read()
        with ChatStore(store_path) as store:
            reopened = store.load(chat.id)
        app = app_with(FakeEngine(replies=[["Mine"]]), store_path=store_path, chat=reopened)
        async with app.run_test() as pilot:
            await ready(pilot)
            assert any("open in another chatapp" in n.message for n in app._notifications)
            await send(pilot, "from this app")
        other.stdin.close()
        assert other.wait(timeout=START_TIMEOUT) == 0, other.stderr.read()
    finally:
        other.kill()
    with ChatStore(store_path) as store:
        chats = {c.title: store.load(c.id) for c in store.list_chats()}
    said = {title: [e.user for e in c.conversation.exchanges] for title, c in chats.items()}
    # Each app's exchanges are where it wrote them: the copy began as the chat was when opened.
    assert said == {"hello": ["hello", "from the other app"],
                    "hello (copy)": ["hello", "from the other app", "from this app"]}


async def test_a_claim_dies_with_its_process(store_path):
    chat = _one_saved_chat(store_path)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, pathlib; from chatapp.storage.open_chats import claim; "
                               f"c = claim(pathlib.Path({str(store_path)!r}), {chat.id!r}); print(bool(c), flush=True); "
                               "sys.stdin.read()"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "True"
    holder.kill()  # SIGKILL: no chance to release anything
    holder.wait()
    app = app_with(FakeEngine(), store_path=store_path, chat=chat)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "again")
        assert app.chat.saved.id == chat.id and not any("another" in n.message for n in app._notifications)


def _fill_the_disk(store: ChatStore) -> None:
    """From now on every write that needs a new page fails as a full disk does (SQLITE_FULL)."""
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")


async def test_a_full_disk_warns_until_a_save_works(store_path, monkeypatch):
    monkeypatch.setattr(chat_keeper, "AUTOSAVE_SECONDS", 0.0)  # a save at every batch: many failures
    engine = FakeEngine(replies=[["Hello"], [f" w{i}" for i in range(40)]], delay=0.005)
    app = app_with(engine, store_path=store_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "first")
        _fill_the_disk(app.chat.keeper.store)
        await send(pilot, "x" + secrets.token_hex(20000))  # needs new pages (it does not compress)
        failures = [n for n in app._notifications if "autosave failed" in n.message]
        assert len(failures) == 1  # said once, not once a second
        status = str(app.chat.query_one("StatusBar").render())
        assert "not saved" in status and "full" in status
        app.chat.keeper.store._db.execute("PRAGMA max_page_count = 1000000")  # space again
        await send(pilot, "third")
        assert "not saved" not in str(app.chat.query_one("StatusBar").render())
    with ChatStore(store_path) as store:
        assert [e.user[:1] if len(e.user) > 9 else e.user for e in store.last().conversation.exchanges] == ["first", "x", "third"]


async def test_exchanges_the_full_disk_kept_out_go_to_a_rescue_file_at_quit(store_path, private_data_dir):
    app = app_with(FakeEngine(), store_path=store_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "first")
        _fill_the_disk(app.chat.keeper.store)
        await send(pilot, "y" + secrets.token_hex(20000))
    rescued = app.chat.keeper.rescued
    assert rescued is not None and rescued.parent == chat_keeper.rescue_folder()
    assert [e.user[:1] if len(e.user) > 9 else e.user for e in load_chat_file(rescued).conversation.exchanges] == ["first", "y"]


def test_a_read_only_history_is_read_and_never_written(store_path, monkeypatch, capsys):
    chat = _one_saved_chat(store_path)
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)  # as for a user who may not write
    with ChatStore(store_path) as store:
        assert store.read_only and store.load(chat.id).conversation.last.user == "hello"
        with pytest.raises(StoreError, match="read-only"):
            store.save(chat)
    monkeypatch.setenv("XDG_DATA_HOME", str(store_path.parent.parent))
    monkeypatch.setattr("chatapp.storage.store.default_store_path", lambda: store_path)
    assert cli.main(["export", chat.id[:8]]) == 0
    assert "hello" in capsys.readouterr().out


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files anyway")
def test_a_history_without_write_permission_opens_read_only(store_path):
    chat = _one_saved_chat(store_path)
    store_path.chmod(0o444)
    store_path.parent.chmod(0o555)
    try:
        with ChatStore(store_path) as store:
            assert store.read_only and store.load(chat.id).id == chat.id
    finally:
        store_path.parent.chmod(0o755)


def test_export_from_a_truncated_history_says_it_was_truncated(store_path, monkeypatch, capsys):
    chat = _one_saved_chat(store_path)
    os.truncate(store_path, 0)
    monkeypatch.setattr("chatapp.storage.store.default_store_path", lambda: store_path)
    assert cli.main(["export", chat.id[:8]]) == 2
    assert "empty file (truncated?)" in capsys.readouterr().err


async def test_resume_reopens_the_chat_open_at_quit_with_its_settings(store_path, monkeypatch):
    older, newer = saved_chat("older", ["A"]), saved_chat("newer", ["B"])
    with ChatStore(store_path) as store:
        store.save(older)
        store.save(newer)
    app = app_with(FakeEngine(), store_path=store_path, chat=older)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "/temp 0.25")
    calls = []
    monkeypatch.setattr("chatapp.storage.store.default_store_path", lambda: store_path)
    monkeypatch.setattr("chatapp.tui.app.run_tui", lambda **kwargs: calls.append(kwargs) or 0)
    monkeypatch.setattr("chatapp.cli.main.terminal_problem", lambda: None)  # pytest gives no terminal
    assert cli.main(["--resume"]) == 0
    assert calls[0]["chat"].id == older.id and calls[0]["settings"].temperature == 0.25
    assert cli.main(["--resume", "--top-k", "7"]) == 0  # a flag given now wins
    assert calls[1]["settings"].temperature == 0.25 and calls[1]["settings"].top_k == 7


async def test_looking_at_a_chat_open_elsewhere_adds_no_copy(store_path):
    chat = _one_saved_chat(store_path)
    from chatapp.storage.open_chats import claim

    held = claim(store_path, chat.id)  # another app has it open
    try:
        app = app_with(FakeEngine(), store_path=store_path, chat=chat)
        async with app.run_test() as pilot:
            await ready(pilot)
            assert any("open in another chatapp" in n.message for n in app._notifications)
    finally:
        held.release()
    with ChatStore(store_path) as store:
        assert [c.id for c in store.list_chats()] == [chat.id]
