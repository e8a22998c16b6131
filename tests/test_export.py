"""Exports: a readable Markdown transcript and the JSON document `/load` reads back."""

from __future__ import annotations

import pytest

from chatapp.chat.export_format import ExportError, export_format
from chatapp.storage.chat_file import dumps, load_chat_file, loads
from chatapp.storage.export import export_chat, render, to_markdown
from tests.chat_samples import reply, rich_chat


def test_markdown_shows_roles_shown_versions_and_marks():
    chat = rich_chat()
    chat.conversation.system = "Be brief.\n\nAlways."
    chat.conversation.exchanges[-1].add_version(reply(8, 5, status="streaming"))
    # Reopening turns the streaming reply into an interrupted one.
    text = to_markdown(loads(dumps(chat)))
    first = chat.conversation.exchanges[0]
    assert text.startswith("# A rich chat\n")
    assert "*Model: SmolLM2-135M-Instruct" in text and "4 turns*" in text
    assert "## System\n\n> Be brief.\n>\n> Always." in text
    assert text.count("## User") == 4
    assert "## Assistant (version 2 of 3)" in text
    assert first.versions[1].text in text and first.versions[0].text not in text
    assert "Hi [b]there[/b]\nsecond line" in text  # markup-like text stays literal
    assert "*[stopped by the user]*" in text
    assert "*[interrupted: the app closed while this reply was being written]*" in text
    assert "*[empty reply]*" in text  # version 2 of exchange 2 has no tokens


def test_markdown_marks_failed_and_branched_replies():
    chat = rich_chat()
    chat.conversation.exchanges[0].current = 2
    chat.conversation.exchanges[1].current = 0
    text = to_markdown(chat)
    assert "## Assistant (version 3 of 3) (branched at token 5)" in text
    assert "*[failed: boom: out of memory]*" in text


@pytest.mark.parametrize("name, fmt", [("t.md", "md"), ("t.markdown", "md"), ("T.JSON", "json")])
def test_export_picks_the_format_from_the_suffix(tmp_path, name, fmt):
    chat = rich_chat()
    assert export_chat(chat, tmp_path / name) == fmt
    written = (tmp_path / name).read_text(encoding="utf-8")
    assert written == render(chat, fmt)
    if fmt == "json":
        assert load_chat_file(tmp_path / name) == chat  # /load reads an export back


def test_export_format_errors_are_one_line(tmp_path):
    with pytest.raises(ExportError, match="use .md or .json"):
        export_chat(rich_chat(), tmp_path / "t.txt")
    with pytest.raises(ExportError, match="choose md or json"):
        export_format("t.md", "html")
    assert list(tmp_path.iterdir()) == []
    assert export_chat(rich_chat(), tmp_path / "t.txt", "md") == "md"
