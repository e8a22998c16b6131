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
    for exchange in chat.conversation.exchanges:  # the system prompt was in force from the start
        for version in exchange.versions:
            version.system = chat.conversation.system
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


def test_a_system_prompt_set_mid_chat_is_exported_where_it_began_to_apply():
    from chatapp.chat.conversation import Conversation, Exchange, ReplyVersion
    from chatapp.chat.settings import SamplingSettings
    from chatapp.storage.chat_file import SavedChat, dumps, loads

    def answered(user, system, recorded=True):
        version = ReplyVersion(settings=SamplingSettings(), text=f"re: {user}", status="done", system=system,
                               system_recorded=recorded)
        return Exchange(user, [version])

    mid = Conversation(system="Be a pirate.", exchanges=[
        answered("one", None), answered("two", "Be a pirate."), answered("three", "Be a pirate.")])
    text = to_markdown(SavedChat(mid))
    assert text.index("re: one") < text.index("## System (from here on)") < text.index("two")
    assert text.count("Be a pirate.") == 1 and "\n## System\n" not in text

    cleared = Conversation(system=None, exchanges=[answered("one", "Be brief."), answered("two", None)])
    text = to_markdown(SavedChat(cleared))
    assert text.index("## System\n") < text.index("## User\n\none") < text.index("## System prompt cleared") \
        < text.index("## User\n\ntwo")

    later = Conversation(system="Be kind.", exchanges=[answered("one", None)])
    text = to_markdown(SavedChat(later))
    assert text.index("re: one") < text.index("## System (set after the last reply)")

    old = Conversation(system="Be old.", exchanges=[answered("one", None, recorded=False)])  # saved before
    text = to_markdown(SavedChat(old))
    assert text.index("## System\n") < text.index("## User\n\none")  # as it was exported then: from the start

    round_trip = loads(dumps(SavedChat(mid))).conversation
    assert [e.reply.system for e in round_trip.exchanges] == [None, "Be a pirate.", "Be a pirate."]
    assert all(e.reply.system_recorded for e in round_trip.exchanges)


def test_each_finished_reply_carries_its_confidence_line():
    chat = rich_chat()
    text = to_markdown(chat)
    shown = [e.reply for e in chat.conversation.exchanges if e.reply is not None and e.reply.steps]
    assert text.count("*perplexity ") == len(shown) > 0
    for reply_version in shown:
        from chatapp.chat.confidence import reply_confidence

        assert f"perplexity {reply_confidence(reply_version.steps).perplexity:.3g}" in text
