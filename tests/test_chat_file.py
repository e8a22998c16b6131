"""Saved-chat documents: exact round trips, reopened chats that continue, refusals that touch nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from chatapp.chat.conversation import Exchange, ReplyVersion, branch_version
from chatapp.storage.chat_file import (
    FORMAT_VERSION,
    INTERRUPTED_NOTE,
    ChatFileError,
    SavedChat,
    dumps,
    load_chat_file,
    loads,
    save_chat_file,
)
from tests.chat_samples import big_chat, reply, rich_chat, step

PERSISTENCE_MODULES = (
    "chatapp.storage.chat_file", "chatapp.storage.store", "chatapp.storage.export", "chatapp.cli.config",
    "chatapp.storage.token_columns", "chatapp.support.atomic_file", "chatapp.session.chat_keeper",
    "chatapp.session.chat_session",
)
"""Modules of the persistence layer: plain Python under the UI."""


def test_round_trip_keeps_everything_exactly(tmp_path):
    chat = rich_chat()
    path = tmp_path / "chat.json"
    save_chat_file(chat, path)
    loaded = load_chat_file(path)
    assert loaded == chat  # messages, settings, statuses, versions, branches, stats, every Step field
    first = loaded.conversation.exchanges[0]
    assert first.current == 1 and first.versions[2].branched_at == 4
    assert first.versions[2].steps[4].forced
    pieces = [c.piece for s in first.versions[0].steps for c in s.top]
    assert any(len(p) == 1 and p[0] >= 0x80 for p in pieces)  # partial UTF-8 bytes survive
    assert loaded.conversation.exchanges[0].versions[1].settings.seed == 2**63 - 1


def test_floats_come_back_bit_identical():
    chat = rich_chat()
    tiny = 5e-324  # the smallest subnormal
    step0 = chat.conversation.exchanges[0].versions[0].steps[0]
    chat.conversation.exchanges[0].versions[0].steps[0] = type(step0)(**{**step0.__dict__, "entropy": tiny})
    loaded = loads(dumps(chat))
    assert loaded.conversation.exchanges[0].versions[0].steps[0].entropy == tiny
    assert loaded == chat


def test_document_has_common_messages_and_compact_token_columns():
    chat = rich_chat()
    data = json.loads(dumps(chat))
    assert data["format"] == "chatapp-chat" and data["version"] == FORMAT_VERSION
    assert data["model"] == "SmolLM2-135M-Instruct"
    shown = chat.conversation.exchanges[0].reply.text
    assert data["messages"][:2] == [
        {"role": "user", "content": "Hi [b]there[/b]\nsecond line"},
        {"role": "assistant", "content": shown},
    ]
    assert {m["role"] for m in data["messages"]} == {"user", "assistant"}
    tokens = data["exchanges"][0]["versions"][0]["tokens"]
    assert isinstance(tokens["top_token_id"], list) and isinstance(tokens["top_prob"], str)
    assert not any(isinstance(v, dict) for v in tokens.values())  # columns, not a dict per candidate


def test_token_records_are_compact():
    chat = big_chat(2, tokens=100, top=10)
    candidates = 2 * 100 * 10
    assert len(dumps(chat).encode()) / candidates < 60  # bytes per candidate, its step's share included


def test_reopened_chat_continues_and_branches():
    loaded = loads(dumps(rich_chat()))
    conversation = loaded.conversation
    third = conversation.exchanges[2]
    old = third.reply
    version, prefix_ids = branch_version(old, 1, old.steps[1].top[2], old.settings)
    version.add_steps([step(2, 40), step(3, 40, stop=True)])  # the engine continues after the forced token
    version.status = "done"
    third.add_version(version)
    assert prefix_ids == [old.steps[0].token_id, old.steps[1].top[2].token_id]
    assert version.steps[1].forced and version.steps[0] == old.steps[0]
    conversation.exchanges.append(Exchange(user="and then?"))
    conversation.exchanges[-1].add_version(reply(7, 4))
    messages = conversation.messages_before(len(conversation.exchanges) - 1)
    assert messages[-1] == {"role": "user", "content": "and then?"}
    assert loads(dumps(loaded)) == loaded


def test_interrupted_reply_keeps_every_token_and_is_marked():
    chat = rich_chat()
    partial = reply(11, 37, status="streaming")
    chat.conversation.exchanges[-1].add_version(partial)
    data = json.loads(dumps(chat))
    assert data["exchanges"][-1]["versions"][0]["status"] == "streaming"  # the file says what happened
    loaded = loads(json.dumps(data)).conversation.exchanges[-1].reply
    assert loaded.steps == partial.steps and loaded.text == partial.text
    assert (loaded.status, loaded.error) == ("stopped", INTERRUPTED_NOTE)


def _damaged_documents() -> dict[str, bytes]:
    good = dumps(rich_chat()).encode()
    data = json.loads(good)
    future = {**data, "version": FORMAT_VERSION + 1}
    bad_status = json.loads(good)
    bad_status["exchanges"][0]["versions"][0]["status"] = "dreaming"
    short_column = json.loads(good)
    short_column["exchanges"][0]["versions"][0]["tokens"]["rank"].pop()
    bad_settings = json.loads(good)
    bad_settings["exchanges"][0]["versions"][0]["settings"]["temperature"] = -1
    return {
        "truncated": good[: len(good) // 2],
        "corrupt": good[:100] + b"\x00\xff garbage" + good[110:],
        "empty": b"",
        "binary": bytes(range(256)),
        "foreign": json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(),
        "foreign list": b"[1, 2, 3]",
        "future": json.dumps(future).encode(),
        "bad status": json.dumps(bad_status).encode(),
        "short column": json.dumps(short_column).encode(),
        "bad settings": json.dumps(bad_settings).encode(),
    }


DAMAGED = _damaged_documents()
"""Files that must be refused with one clear line."""
EXPECTED_WORDS = {
    "truncated": "truncated", "corrupt": "corrupt", "empty": "empty", "binary": "corrupt",
    "foreign": "not a chatapp chat", "foreign list": "not a chatapp chat", "future": "newer chatapp",
    "bad status": "dreaming", "short column": "'rank'", "bad settings": "temperature",
}
"""A word each message must contain, so the user learns what is wrong."""


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_bad_files_give_one_clear_line_and_stay_untouched(tmp_path, kind):
    path = tmp_path / "chat.json"
    path.write_bytes(DAMAGED[kind])
    before = os.stat(path)
    with pytest.raises(ChatFileError) as caught:
        load_chat_file(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert EXPECTED_WORDS[kind] in message
    assert path.read_bytes() == DAMAGED[kind]
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.json"]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ChatFileError, match="cannot read"):
        load_chat_file(tmp_path / "nope.json")


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "chat.json"
    save_chat_file(rich_chat(), path)
    before = path.read_bytes()

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        save_chat_file(big_chat(2), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.json"]


def test_untitled_chat_takes_its_first_line_as_title():
    chat = SavedChat(rich_chat().conversation)
    assert chat.display_title == "Hi [b]there[/b]"
    assert len(chat.id) == 32 and chat.created.tzinfo is not None


@pytest.mark.parametrize("module", PERSISTENCE_MODULES)
def test_persistence_imports_neither_torch_nor_textual(module):
    code = f"import sys, {module}; print(' '.join(sys.modules))"
    names = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert not {"torch", "textual", "rich"} & {n.split(".")[0] for n in names.split()}


def test_empty_message_and_empty_reply_round_trip():
    chat = rich_chat()
    empty = ReplyVersion(settings=reply(0, 0).settings, status="done")
    chat.conversation.exchanges.append(Exchange(user="", versions=[empty]))
    assert loads(dumps(chat)) == chat


def test_a_chat_file_keeps_the_chat_s_own_settings_and_reads_files_without_them(tmp_path):
    import json

    from chatapp.chat.settings import SamplingSettings

    chat = rich_chat()
    chat.settings = SamplingSettings(temperature=0.4, min_p=0.05)
    save_chat_file(chat, tmp_path / "chat.json")
    assert load_chat_file(tmp_path / "chat.json").settings == chat.settings
    data = json.loads((tmp_path / "chat.json").read_text())
    del data["settings"]  # a file from before chatapp kept them
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = load_chat_file(tmp_path / "old.json")
    assert old.settings is None and old.going_on_with() == chat.conversation.latest_settings()
    data["settings"] = {"temperature": -1}
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ChatFileError, match="damaged"):
        load_chat_file(tmp_path / "bad.json")
