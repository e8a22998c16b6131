"""`chatapp --resume` and `--chat ID` reopen a saved chat; a bad id stops before the TUI starts."""

from __future__ import annotations

import pytest

from chatapp.cli import main as cli
from chatapp.storage.store import ChatStore
from tests.tui.test_persistence import saved_chat


@pytest.fixture
def tui_calls(monkeypatch, tmp_path) -> list[dict]:
    """The arguments `run_tui` would have been called with (the TUI itself does not start)."""
    calls: list[dict] = []
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr("chatapp.tui.app.run_tui", lambda **kwargs: calls.append(kwargs) or 0)
    monkeypatch.setattr("chatapp.cli.main.terminal_problem", lambda: None)  # pytest gives the TUI no terminal
    return calls


@pytest.fixture
def two_chats(private_data_dir):
    """Two chats in the (temporary) default store; the second is the most recent."""
    chats = [saved_chat("older", ["A"]), saved_chat("newer", ["B"])]
    with ChatStore() as store:
        for chat in chats:
            store.save(chat)
    return chats


def test_resume_opens_the_last_chat_and_passes_system_and_theme(tui_calls, two_chats):
    assert cli.main(["--resume", "--system", "Be brief."]) == 0
    [call] = tui_calls
    assert call["chat"].id == two_chats[1].id and call["chat"].conversation.last.user == "newer"
    assert call["system"] == "Be brief." and call["theme"] == "textual-dark"


def test_chat_takes_a_unique_id_prefix(tui_calls, two_chats):
    assert cli.main(["--chat", two_chats[0].id[:8]]) == 0
    assert tui_calls[0]["chat"].id == two_chats[0].id


def test_no_flag_starts_a_new_chat(tui_calls, two_chats):
    assert cli.main([]) == 0
    assert tui_calls[0]["chat"] is None


@pytest.mark.parametrize("args", [["--chat", "nope"], ["--chat", ""], ["--chat", "x\ny"]])
def test_a_bad_id_is_one_line_and_exit_2(tui_calls, two_chats, capsys, args):
    assert cli.main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "match id" in lines[0] and not tui_calls


def test_resume_with_no_saved_chat(tui_calls, capsys):
    assert cli.main(["--resume"]) == 2
    assert "no saved chat" in capsys.readouterr().err and not tui_calls
