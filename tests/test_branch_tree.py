"""The reply tree: a new version of an earlier reply starts a branch, and the switch moves
between whole branches; saved and reopened (file and history), the tree is intact."""

from __future__ import annotations

import json

from chatapp.chat.conversation import Conversation, Exchange, ReplyVersion
from chatapp.chat.settings import SamplingSettings
from chatapp.storage.chat_file import FORMAT_VERSION, PLAIN_FORMAT_VERSION, SavedChat, dumps, loads
from chatapp.storage.store import ChatStore
from tests.chat_samples import big_chat


def _reply(text: str) -> ReplyVersion:
    version = ReplyVersion(SamplingSettings(), text=text)
    version.status = "done"
    return version


def _chat() -> Conversation:
    """Three exchanges, each with one reply: a b c."""
    exchanges = []
    for name in "abc":
        exchange = Exchange(f"ask {name}")
        exchange.add_version(_reply(f"reply {name}"))
        exchanges.append(exchange)
    return Conversation(exchanges=exchanges)


def _shown(conversation: Conversation) -> list[str]:
    return [e.reply.text if e.reply else f"({e.user})" for e in conversation.exchanges]


def test_a_new_version_of_an_earlier_reply_starts_a_branch_and_the_switch_moves_whole_branches():
    conversation = _chat()
    later = conversation.exchanges[1:]
    conversation.add_version(0, _reply("reply a2"))
    assert _shown(conversation) == ["reply a2"]  # the new branch has nothing after it yet
    assert conversation.exchanges[0].versions[0].later == later  # the old branch is kept whole
    assert conversation.branched
    follow = Exchange("ask d")
    follow.add_version(_reply("reply d"))
    conversation.exchanges.append(follow)
    assert conversation.switch(0, -1)
    assert _shown(conversation) == ["reply a", "reply b", "reply c"]
    assert conversation.exchanges[0].reply.later == []  # the shown branch's exchanges are the conversation's
    assert conversation.exchanges[0].versions[1].later == [follow]
    assert not conversation.switch(0, -1)  # no version before the first: nothing moves
    assert conversation.switch(0, 1) and _shown(conversation) == ["reply a2", "reply d"]


def test_branches_nest_and_messages_follow_the_branch_shown():
    conversation = _chat()
    conversation.add_version(1, _reply("reply b2"))  # a branch at b: c goes with b's first version
    assert _shown(conversation) == ["reply a", "reply b2"]
    conversation.add_version(0, _reply("reply a2"))  # a branch at a: b (both versions) goes with a
    assert _shown(conversation) == ["reply a2"]
    conversation.switch(0, -1)
    assert _shown(conversation) == ["reply a", "reply b2"]  # b's own choice of version is kept
    conversation.switch(1, -1)
    assert _shown(conversation) == ["reply a", "reply b", "reply c"]
    assert [m["content"] for m in conversation.messages_before(2)] == ["ask a", "reply a", "ask b", "reply b", "ask c"]


def test_an_exchange_without_a_reply_keeps_what_follows():
    conversation = _chat()
    conversation.exchanges[1] = Exchange("unanswered")
    conversation.add_version(1, _reply("late reply"))
    assert _shown(conversation) == ["reply a", "late reply", "reply c"]  # nothing to put them away with


def test_the_tree_survives_a_file_and_the_history(tmp_path):
    conversation = _chat()
    conversation.exchanges[2].reply.text = "zebras"
    conversation.add_version(1, _reply("reply b2"))
    conversation.add_version(0, _reply("reply a2"))
    chat = SavedChat(conversation, id="tree")
    data = json.loads(dumps(chat))
    assert data["version"] == FORMAT_VERSION == 2  # a version-1 reader would drop the put-away branches
    assert data["exchanges"][0]["versions"][0]["later"][0]["versions"][0]["later"][0]["user"] == "ask c"
    assert loads(dumps(chat)) == chat
    with ChatStore(tmp_path / "h.sqlite3") as store:
        store.save(chat)
        store.save(big_chat(1, tokens=2, chat_id="other"))
        reopened = store.load("tree")
        assert reopened == chat
        assert [s.id for s in store.search(["zebras"])] == ["tree"]  # text of a put-away branch is found
        reopened.conversation.switch(0, -1)
        reopened.conversation.switch(1, -1)
        store.save(reopened, from_exchange=0)
        assert _shown(store.load("tree").conversation) == ["reply a", "reply b", "zebras"]


def test_a_chat_without_put_away_branches_stays_readable_by_version_1_readers(tmp_path):
    chat = big_chat(2, tokens=3)
    chat.conversation.exchanges[1].add_version(_reply("another"))  # versions of the last reply: no branch
    assert json.loads(dumps(chat))["version"] == PLAIN_FORMAT_VERSION == 1
    with ChatStore(tmp_path / "h.sqlite3") as store:
        store.save(chat)
        version = store._db.execute("SELECT format_version FROM chats").fetchone()[0]
    assert version == PLAIN_FORMAT_VERSION
