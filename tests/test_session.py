"""`ChatSession` without a UI: a reply's job, the one way to stop it, and the engine protocol."""

from __future__ import annotations

import copy
import threading

import pytest

from chatapp.chat.conversation import Conversation, Exchange, ReplyVersion
from chatapp.chat.settings import SamplingSettings
from chatapp.session.chat_engine import ChatEngine, ChatTurn
from chatapp.session.chat_keeper import ChatKeeper
from chatapp.session.chat_session import ChatSession
from chatapp.session.reply_stream import TokensGenerated, TurnFailed, TurnFinished
from chatapp.storage.chat_file import SavedChat
from tests.tui.fakes import FakeEngine

SETTINGS = SamplingSettings(temperature=0)


def session_with(engine: FakeEngine, *messages: str) -> ChatSession:
    session = ChatSession(SETTINGS, ChatKeeper(SavedChat(Conversation(exchanges=[Exchange(m) for m in messages]))))
    session.engine = engine
    return session


def apply(session: ChatSession, events) -> None:
    """What the screen does with the events, on its own thread."""
    for event in events:
        if isinstance(event, TokensGenerated):
            session.add_steps(event)
        elif isinstance(event, TurnFinished):
            session.finish(event)
        else:
            session.fail(event)


def test_both_engines_implement_the_protocol(default_model):
    from chatapp.engine.engine import Engine

    real = Engine(default_model)
    assert isinstance(real, ChatEngine) and isinstance(FakeEngine(), ChatEngine)
    turn = real.start_turn([{"role": "user", "content": "Hi"}], SamplingSettings(max_new_tokens=1))
    assert isinstance(turn, ChatTurn) and isinstance(FakeEngine().start_turn([], SETTINGS), ChatTurn)


def test_a_reply_runs_on_another_thread_without_touching_the_conversation():
    session = session_with(FakeEngine(replies=[["Hel", "lo"]]), "Hi")
    job = session.start_reply(0, ReplyVersion(settings=SETTINGS))
    before = copy.deepcopy(session.conversation)
    events, threads = [], set()

    def report(event):
        threads.add(threading.current_thread())
        events.append(event)

    worker = threading.Thread(target=session.run, args=(job, report))
    worker.start()
    worker.join(5)

    assert session.conversation == before  # only the UI thread changes it, through the events
    assert threads == {worker}
    apply(session, events)
    assert session.version.text == "Hello" and session.version.status == "done"
    assert session.end_job() == 0 and not session.generating


def test_stop_ends_the_reply_before_its_next_step_and_keeps_it_as_stopped():
    gate = threading.Event()
    session = session_with(FakeEngine(replies=[list("abcdef")], gate=gate, gate_after=2), "Hi")
    job = session.start_reply(0, ReplyVersion(settings=SETTINGS))
    events: list = []
    worker = threading.Thread(target=session.run, args=(job, events.append))
    worker.start()

    assert session.stop()  # from this thread, while the engine thread waits at its third step
    gate.set()
    worker.join(5)

    apply(session, events)
    assert isinstance(events[-1], TurnFinished) and events[-1].stats.finish_reason == "cancelled"
    assert session.version.status == "stopped" and session.version.text in {"ab", "abc"}
    session.end_job()
    assert not session.stop()  # nothing left to stop


def test_a_reply_stopped_before_it_starts_writes_nothing():
    session = session_with(FakeEngine(replies=[list("abc")]), "Hi")
    job = session.start_reply(0, ReplyVersion(settings=SETTINGS))
    session.stop()
    events: list = []
    session.run(job, events.append)
    apply(session, events)
    assert session.version.steps == [] and session.version.status == "stopped"


def test_events_of_an_abandoned_job_change_nothing():
    session = session_with(FakeEngine(replies=[list("abc")]), "Hi", "Again")
    old_job = session.start_reply(0, ReplyVersion(settings=SETTINGS))
    old_version = session.version
    events: list = []
    session.run(old_job, events.append)

    assert session.abandon_job() == 0  # e.g. /clear mid-reply: kept as stopped, forgotten now
    assert old_version.status == "stopped" and old_job.stopped.is_set()
    session.start_reply(1, ReplyVersion(settings=SETTINGS))
    apply(session, events)  # the old job's late events

    assert old_version.steps == [] and session.version.steps == []
    assert session.conversation.exchanges[1].reply is session.version


def test_a_failed_turn_is_reported_and_the_chat_is_kept():
    session = session_with(FakeEngine(replies=[list("abc")], fail_at=1), "Hi")
    job = session.start_reply(0, ReplyVersion(settings=SETTINGS))
    events: list = []
    session.run(job, events.append)
    apply(session, events)
    assert isinstance(events[-1], TurnFailed) and "NaN" in events[-1].error
    assert session.version.status == "error" and session.version.text == "a"


@pytest.mark.parametrize("index", [0, 1])
def test_a_job_answers_the_conversation_up_to_its_exchange(index):
    session = session_with(FakeEngine(), "first", "second")
    job = session.start_reply(index, ReplyVersion(settings=SETTINGS))
    assert job.messages[-1] == {"role": "user", "content": ["first", "second"][index]}
    assert job.exchange == index and job.settings == SETTINGS


def test_the_session_saves_a_reply_when_it_ends_and_when_it_is_stopped(tmp_path):
    from chatapp.storage.store import ChatStore

    store_path = tmp_path / "history.sqlite3"
    keeper = ChatKeeper(SavedChat(Conversation(exchanges=[Exchange("Hi"), Exchange("Again")])), store_path)
    keeper.open()
    session = ChatSession(SETTINGS, keeper)
    session.use_engine(FakeEngine(replies=[["Hel", "lo"]]))

    job = session.start_reply(0, ReplyVersion(settings=SETTINGS))
    events: list = []
    session.run(job, events.append)
    apply(session, events)
    session.end_job()
    with ChatStore(store_path) as store:
        saved = store.load(keeper.saved.id)
    assert saved.conversation.exchanges[0].reply.text == "Hello" and saved.model == FakeEngine().info.name

    session.start_reply(1, ReplyVersion(settings=SETTINGS))
    session.add_steps(TokensGenerated(session.job.job, [FakeEngine().step(0, "Par")]))
    assert session.stop_and_save() and session.job.stopped.is_set()
    with ChatStore(store_path) as store:
        assert store.load(keeper.saved.id).conversation.exchanges[1].reply.text == "Par"
    keeper.close({})
