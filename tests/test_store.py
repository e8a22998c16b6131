"""The history store: CRUD, partial replies, refusals that touch nothing, SIGKILL safety, open time."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatapp.storage.chat_file import INTERRUPTED_NOTE, load_chat_file
from chatapp.storage.store import ChatStore, StoreError, default_store_path
from tests.chat_samples import GROW_BASE, big_chat, grow, reply, rich_chat

ROOT = Path(__file__).resolve().parents[1]
"""Repository root: the crash-test child imports `tests.chat_samples` from here."""
OPEN_BOUND_S = 5.0
"""Generous bound on opening a 200-turn chat on a loaded CI box; the target is 1 s (printed)."""
KILL_RUNS = 4
"""SIGKILLs per crash test, each at a random moment."""
KILL_DELAY_MAX_S = 0.1
"""The kill comes this long at most after a save begins (a full save takes longer)."""
CHILD_START_TIMEOUT_S = 30.0
"""Longest wait for the child's first save."""

CHILD = r"""
import sys
from chatapp.storage.chat_file import save_chat_file
from chatapp.storage.store import ChatStore
from tests.chat_samples import GROW_BASE, big_chat, grow

mode, target = sys.argv[1], sys.argv[2]
chat = big_chat(GROW_BASE, chat_id="crash")
store = ChatStore(target) if mode == "store" else None
for turn in range(1000):
    for tokens in range(1, 101):
        grow(chat, turn, tokens)
        full = tokens % 25 == 0  # now and then rewrite everything: a long write to be killed in
        print("begin", turn, tokens, int(full), flush=True)
        if store is None:
            save_chat_file(chat, target)
        else:
            store.save(chat, from_exchange=0 if full else len(chat.conversation.exchanges) - 1)
        print("saved", turn, tokens, flush=True)
"""
"""A child that streams replies into a long chat, saving after every token."""


def test_save_load_list_rename_delete(tmp_path):
    with ChatStore(tmp_path / "h.sqlite3") as store:
        chat, other = rich_chat(), big_chat(3, chat_id="0123abcd")
        store.save(chat)
        store.save(other)
        assert store.load("rich") == chat and store.load("0123abcd") == other
        assert [s.id for s in store.list_chats()] == ["0123abcd", "rich"]  # newest first
        summary = store.list_chats()[0]
        assert (summary.title, summary.model, summary.turns) == ("question 0: Hello", "tiny-llama", 3)
        assert store.last().id == "0123abcd" and store.resolve("0123") == "0123abcd"
        assert store.rename("0123abcd", "Renamed") and store.list_chats()[0].title == "Renamed"
        assert store.load("0123abcd").title == "Renamed"
        assert store.delete("0123abcd") and not store.delete("0123abcd")
        assert [s.id for s in store.list_chats()] == ["rich"]
        with pytest.raises(StoreError, match="no saved chat"):
            store.load("0123abcd")
        with pytest.raises(StoreError, match="no saved chats match"):
            store.resolve("zz")
    with sqlite3.connect(tmp_path / "h.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM exchanges WHERE chat_id = '0123abcd'").fetchone() == (0,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_reopened_chat_saves_again_after_changes(tmp_path):
    path = tmp_path / "h.sqlite3"
    with ChatStore(path) as store:
        store.save(rich_chat())
    with ChatStore(path) as store:
        chat = store.load("rich")
        chat.conversation.exchanges[-1].add_version(reply(9, 6))
        store.save(chat, from_exchange=len(chat.conversation.exchanges) - 1)
        chat.conversation.exchanges.pop(0)  # an edit that shortens the chat: full save
        store.save(chat)
        assert store.load("rich") == chat
        assert store.list_chats()[0].turns == 3


def test_partial_reply_is_kept_and_marked_interrupted(tmp_path):
    with ChatStore(tmp_path / "h.sqlite3") as store:
        chat = rich_chat()
        partial = reply(5, 42, status="streaming")
        chat.conversation.exchanges[-1].add_version(partial)
        store.save(chat)
        loaded = store.load("rich").conversation.exchanges[-1].reply
    assert loaded.steps == partial.steps and loaded.text == partial.text
    assert (loaded.status, loaded.error) == ("stopped", INTERRUPTED_NOTE)


def _sqlite_file(path: Path, chats: int = 3) -> bytes:
    with ChatStore(path) as store:
        for i in range(chats):
            store.save(big_chat(5, chat_id=f"c{i}"))
    return path.read_bytes()


@pytest.mark.parametrize("kind", ["garbage", "truncated", "future", "damaged record"])
def test_bad_database_gives_one_clear_line_and_stays_untouched(tmp_path, kind):
    path = tmp_path / "h.sqlite3"
    if kind == "garbage":
        path.write_bytes(b"this is not a database\n" * 100)
    elif kind == "truncated":
        path.write_bytes(_sqlite_file(tmp_path / "full.sqlite3")[:20_000])
    else:
        _sqlite_file(path)
        with sqlite3.connect(path) as db:
            if kind == "future":
                db.execute("PRAGMA user_version = 99")
            else:
                db.execute("UPDATE exchanges SET record = x'0badf00d' WHERE chat_id = 'c1' AND position = 2")
        db.close()
    before = path.read_bytes()
    with pytest.raises(StoreError) as caught:
        with ChatStore(path) as store:
            store.list_chats()
            store.load("c1")
    message = str(caught.value)
    assert "\n" not in message
    assert {"garbage": "not a chat history", "truncated": "malformed", "future": "newer chatapp",
            "damaged record": "chat c1: damaged record"}[kind] in message
    assert path.read_bytes() == before


def test_default_path_is_in_the_user_data_dir():
    path = default_store_path()
    assert path.name == "chats.sqlite3" and "chatapp" in str(path.parent)


def _kill_mid_save(mode: str, target: Path, rng: random.Random) -> tuple[tuple[int, int], bool]:
    """Run the child, SIGKILL it during a save; return the last confirmed (turn, tokens) and
    whether the kill landed between a "begin" and its "saved"."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(target)],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + CHILD_START_TIMEOUT_S
        confirmed, in_save, fulls_wanted = (0, 0), False, rng.randint(1, 2)
        while time.monotonic() < deadline:
            words = child.stdout.readline().split()
            assert words, "the child exited before being killed"
            if words[0] == "saved":
                confirmed, in_save = (int(words[1]), int(words[2])), False
            elif words[0] == "begin":
                in_save = True
                fulls_wanted -= mode == "file" or words[3] == "1"
                if fulls_wanted <= 0 and confirmed != (0, 0):
                    time.sleep(rng.uniform(0, KILL_DELAY_MAX_S))
                    break
        child.send_signal(signal.SIGKILL)
        rest = child.communicate()[0].split("\n")
    finally:
        child.kill()
        child.wait()
    for line in rest:
        if line.startswith("saved"):
            confirmed, in_save = tuple(map(int, line.split()[1:3])), False
        elif line.startswith("begin"):
            in_save = True
    return confirmed, in_save


def _check_complete(chat, confirmed: tuple[int, int]) -> None:
    """The saved chat is one whole version, holding at least every confirmed token."""
    exchanges = chat.conversation.exchanges
    turn, tokens = len(exchanges) - GROW_BASE - 1, len(exchanges[-1].reply.steps)
    assert (turn, tokens) >= confirmed
    expected = big_chat(GROW_BASE, chat_id="crash")
    for t in range(turn + 1):
        grow(expected, t, 100 if t < turn else tokens)
    last = expected.conversation.exchanges[-1].reply
    if last.status == "streaming":
        last.status, last.error = "stopped", INTERRUPTED_NOTE
    assert chat.conversation == expected.conversation


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="SIGKILL is POSIX-only")
@pytest.mark.parametrize("mode", ["store", "file"])
def test_sigkill_mid_save_leaves_a_complete_previous_version(tmp_path, mode):
    rng = random.Random(1234)
    killed_mid_save = 0
    for run in range(KILL_RUNS):
        target = tmp_path / str(run) / ("h.sqlite3" if mode == "store" else "chat.json")
        target.parent.mkdir()
        confirmed, in_save = _kill_mid_save(mode, target, rng)
        killed_mid_save += in_save
        if mode == "store":
            with ChatStore(target) as store:
                chat = store.load("crash")
        else:
            chat = load_chat_file(target)
        _check_complete(chat, confirmed)
    assert killed_mid_save >= 1  # at least one kill really landed inside a write


def test_a_200_turn_chat_opens_in_under_a_second(tmp_path, capsys):
    path = tmp_path / "h.sqlite3"
    chat = big_chat(200, tokens=100, top=10)
    with ChatStore(path) as store:
        store.save(chat)
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        with ChatStore(path) as store:
            loaded = store.load("big")
        timings.append(time.perf_counter() - start)
    assert loaded == chat
    with capsys.disabled():
        size = path.stat().st_size / 1e6
        print(f"\nopen 200-turn chat (20,000 tokens, 200,000 candidates, {size:.1f} MB): "
              f"best {min(timings):.3f} s of {len(timings)}")
    assert min(timings) < OPEN_BOUND_S


V1_SCHEMA = """
CREATE TABLE chats (
    id TEXT PRIMARY KEY, title TEXT NOT NULL, preview TEXT NOT NULL, model TEXT NOT NULL,
    created TEXT NOT NULL, updated TEXT NOT NULL, turns INTEGER NOT NULL, system TEXT,
    format_version INTEGER NOT NULL);
CREATE INDEX chats_by_update ON chats (updated);
CREATE TABLE exchanges (
    chat_id TEXT NOT NULL REFERENCES chats (id) ON DELETE CASCADE, position INTEGER NOT NULL,
    record BLOB NOT NULL, PRIMARY KEY (chat_id, position));
PRAGMA user_version = 1;
"""
"""The history's schema before search (chatapp up to schema version 1), written by hand."""


def _searchable_chats() -> list:
    """Three chats: a titled one, one with a second (not shown) reply version, one with odd characters."""
    first = big_chat(2, tokens=3, chat_id="titled")
    first.title = "Trip to Lisbon"
    second = big_chat(2, tokens=3, chat_id="versions")
    second.conversation.exchanges[0].user = "Tell me about PENGUINS please"
    hidden = reply(3, 4)
    hidden.text = "Emperor penguins huddle in Antarctica"
    second.conversation.exchanges[0].versions.insert(0, hidden)  # version 0; version 1 is shown
    second.conversation.exchanges[0].current = 1
    third = big_chat(1, tokens=3, chat_id="odd")
    third.conversation.exchanges[0].user = "discount of 50% on snake_case names, Café"
    return [first, second, third]


def _ids(summaries) -> list[str]:
    return sorted(s.id for s in summaries)


def test_search_finds_titles_messages_and_every_reply_version(tmp_path):
    with ChatStore(tmp_path / "h.sqlite3") as store:
        for chat in _searchable_chats():
            store.save(chat)
        assert _ids(store.search(["lisbon"])) == ["titled"]  # title, any case
        assert _ids(store.search(["penguins"])) == ["versions"]  # user message
        assert _ids(store.search(["ANTARCTICA"])) == ["versions"]  # reply of the version not shown
        assert _ids(store.search(["emperor", "tell"])) == ["versions"]  # every word, anywhere in the chat
        assert store.search(["emperor", "lisbon"]) == []  # not all in one chat
        assert store.search(["nowhere"]) == []
        assert _ids(store.search(["50%"])) == ["odd"] and store.search(["5%"]) == []  # no wildcards
        assert _ids(store.search(["snake_case"])) == ["odd"] and store.search(["snake_cas_"]) == []
        assert _ids(store.search(["CAFÉ"])) == ["odd"]  # case folded beyond ASCII
        assert _ids(store.search([])) == ["odd", "titled", "versions"]
        assert [s.id for s in store.search([])] == [s.id for s in store.list_chats()]  # newest first


def test_search_follows_saves_renames_and_deletes(tmp_path):
    with ChatStore(tmp_path / "h.sqlite3") as store:
        chat = big_chat(3, tokens=3, chat_id="c")
        store.save(chat)
        assert store.search(["zebra"]) == []
        chat.conversation.exchanges[-1].add_version(reply(1, 2))
        chat.conversation.exchanges[-1].reply.text = "a zebra"
        store.save(chat, from_exchange=2)  # autosave of the last exchange only
        assert _ids(store.search(["zebra", "question 0"[:8]])) == ["c"]
        chat.conversation.exchanges.pop()  # shortened: the zebra reply is gone
        store.save(chat)
        assert store.search(["zebra"]) == []
        store.rename("c", "Zebra notes")
        assert _ids(store.search(["zebra"])) == ["c"]
        store.delete("c")
    with sqlite3.connect(tmp_path / "h.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM chat_text").fetchone() == (0,)


def _v1_history(path: Path, chats) -> None:
    """A schema-1 history holding `chats`, as chatapp wrote it before search."""
    with ChatStore(path) as store:
        for chat in chats:
            store.save(chat)
    with sqlite3.connect(path) as source:
        rows = {table: source.execute(f"SELECT * FROM {table}").fetchall() for table in ("chats", "exchanges")}
    source.close()
    path.unlink()
    with sqlite3.connect(path) as db:
        db.executescript(V1_SCHEMA)
        db.executemany("INSERT INTO chats VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows["chats"])
        db.executemany("INSERT INTO exchanges VALUES (?, ?, ?)", rows["exchanges"])
        db.execute("UPDATE exchanges SET record = x'0badf00d' WHERE chat_id = 'titled' AND position = 1")
    db.close()


def test_a_version_1_history_is_migrated_and_searchable(tmp_path):
    path = tmp_path / "h.sqlite3"
    chats = _searchable_chats()
    _v1_history(path, chats)
    with ChatStore(path) as store:
        assert _ids(store.search(["antarctica"])) == ["versions"]  # text of a chat saved before
        assert _ids(store.search(["lisbon"])) == ["titled"]  # its damaged record did not stop the migration
        assert store.load("versions") == chats[1]
        with pytest.raises(StoreError, match="damaged record"):
            store.load("titled")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (2,)
        assert db.execute("SELECT COUNT(*) FROM chat_text").fetchone() == (5,)
    db.close()


@pytest.mark.parametrize("version", [1, 2])
def test_a_read_only_history_lists_and_searches(tmp_path, monkeypatch, version):
    path = tmp_path / "h.sqlite3"
    if version == 1:
        _v1_history(path, _searchable_chats())
    else:
        with ChatStore(path) as store:
            for chat in _searchable_chats():
                store.save(chat)
    before = path.read_bytes()
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)  # as for a user who may not write
    with ChatStore(path) as store:
        assert store.read_only and store.searches_text == (version == 2)
        assert len(store.list_chats()) == 3
        assert _ids(store.search(["LISBON"])) == ["titled"]  # titles always
        assert _ids(store.search(["about", "penguins"])) == ["versions"]  # the first message's first line too
        # Schema 1 cannot be migrated read-only: its message texts are not searched.
        assert _ids(store.search(["antarctica"])) == (["versions"] if version == 2 else [])
    assert path.read_bytes() == before  # never migrated in place


def test_a_chat_s_own_settings_are_kept_and_an_older_history_still_opens(tmp_path, monkeypatch):
    from chatapp.chat.settings import SamplingSettings
    from chatapp.storage import store as store_module

    path = tmp_path / "chats.sqlite3"
    chat, plain = rich_chat(), rich_chat()
    plain.id = "plain"
    chat.settings = SamplingSettings(temperature=0.25, top_p=0.9, stop=("END",))
    with ChatStore(path) as store:
        store.save(chat)
        store.save(plain)
        assert store.load(chat.id).settings == chat.settings
        assert store.load(plain.id).settings is None  # saved without: its latest reply's stand in
        assert store.delete(chat.id)
    with sqlite3.connect(path) as db:  # what a chatapp from before the settings table sees
        assert db.execute("SELECT count(*) FROM chat_settings").fetchone() == (0,)  # deleted with its chat
        db.execute("DROP TABLE chat_settings")
        version = db.execute("PRAGMA user_version").fetchone()[0]
    with monkeypatch.context() as patched:
        patched.setattr(store_module, "writable", lambda path: False)
        with ChatStore(path) as store:  # read-only: the table cannot be made, and is not needed
            assert store.read_only and store.load(plain.id).settings is None
    with ChatStore(path) as store:  # writable: the table is made again, the schema version kept
        assert store.load(plain.id).settings is None
        plain.settings = SamplingSettings(top_k=3)
        store.save(plain)
        assert store.load(plain.id).settings.top_k == 3
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == version == store_module.SCHEMA_VERSION
