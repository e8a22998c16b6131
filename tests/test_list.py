"""`chatapp list` prints the saved chats with the ids the other commands take."""

from __future__ import annotations

import json

import pytest

from chatapp.cli import main as cli
from chatapp.storage.store import ChatStore
from tests.tui.test_persistence import saved_chat


@pytest.fixture
def store_with_two(tmp_path, monkeypatch):
    path = tmp_path / "chats.sqlite3"
    monkeypatch.setattr("chatapp.storage.store.default_store_path", lambda: path)
    chats = [saved_chat("first\\nline [bold]", ["A"], title=""), saved_chat("second", ["B"], title="Named")]
    with ChatStore(path) as store:
        for chat in chats:
            store.save(chat)
    return chats


def test_list_prints_ids_dates_turns_models_and_titles(store_with_two, capsys):
    assert cli.main(["list"]) == 0
    header, newest, oldest = capsys.readouterr().out.splitlines()
    assert header.split() == ["ID", "UPDATED", "TURNS", "MODEL", "TITLE"]
    assert newest.startswith(store_with_two[1].id[:8]) and newest.endswith("Named") and "FakeLM-1" in newest
    assert oldest.startswith(store_with_two[0].id[:8]) and " 1  " in oldest


def test_list_json_has_full_ids_and_the_id_works_with_export(store_with_two, capsys):
    assert cli.main(["list", "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in records] == [store_with_two[1].id, store_with_two[0].id]
    assert set(records[0]) == {"id", "title", "model", "turns", "created", "updated"}
    assert cli.main(["export", records[1]["id"][:8]]) == 0
    assert "first" in capsys.readouterr().out


def test_list_of_an_empty_history_prints_the_header_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("chatapp.storage.store.default_store_path", lambda: tmp_path / "chats.sqlite3")
    assert cli.main(["list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["ID        UPDATED           TURNS  MODEL  TITLE"]
