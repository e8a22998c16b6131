"""Pilot tests of chatting: send and stream, the panel, stop, regenerate, edit, commands, loading."""

from __future__ import annotations

import threading
from dataclasses import replace
from types import SimpleNamespace

import pytest
from rich.cells import cell_len

from chatapp.chat.settings import SamplingSettings
from chatapp.session import reply_stream
from chatapp.session.reply_stream import StreamPacing
from chatapp.tui import replies
from chatapp.tui.screens import ConfirmQuitScreen, HelpScreen
from chatapp.tui.widgets.chat_log import ChatLog
from chatapp.tui.widgets.loading_panel import LoadingPanel
from chatapp.tui.widgets.messages_view import AssistantMessage
from chatapp.tui.widgets.prompt_input import PromptInput
from chatapp.tui.widgets.status_bar import StatusBar, status_fields
from chatapp.tui.widgets.topk_panel import PanelView, TopKPanel
from tests.tui.conftest import app_loading_until, app_with, ready, send, wait_until
from tests.tui.fakes import FakeEngine

pytestmark = pytest.mark.anyio


def panel_lines(app) -> list[str]:
    """The candidates panel rendered as plain text lines."""
    return app.chat.query_one(TopKPanel).render().plain.splitlines()


def last_reply(app) -> AssistantMessage:
    return app.chat.query_one(ChatLog).replies[-1]


async def test_send_streams_the_reply_and_follows_the_panel(monkeypatch):
    monkeypatch.setattr(reply_stream, "MAX_BATCH_SECONDS", reply_stream.MIN_BATCH_SECONDS)  # a steady pace
    gate = threading.Event()
    # Steps slower than the batch and panel intervals are each posted, and shown, at once.
    engine = FakeEngine(gate=gate, gate_after=2, delay=reply_stream.StreamPacing().panel_seconds + 0.05)
    app = app_with(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi", wait=False)
        await wait_until(pilot, lambda: app.chat.query_one(TopKPanel).view is not None
                         and app.chat.query_one(TopKPanel).view.step.step == 1
                         and app.chat.conversation.last.reply.text == "Hello,", what="two steps")
        assert app.chat.generating
        assert "writing" in str(app.chat.query_one(StatusBar).render())
        # The prompt stays usable while the reply streams.
        await pilot.press(*"next")
        assert app.chat.query_one(PromptInput).text == "next"
        gate.set()
        await wait_until(pilot, lambda: not app.chat.generating)
        reply = app.chat.conversation.last.reply
        assert reply.text == "Hello, world!" and reply.status == "done"
        assert engine.calls[0].messages == [{"role": "user", "content": "hi"}]
        step = app.chat.query_one(TopKPanel).view.step
        assert step.is_stop and step.step == len(reply.steps) - 1
        marked = [line for line in panel_lines(app) if line.lstrip().startswith("▶")]
        assert len(marked) == 1 and "<|im_end|>" in marked[0]
        status = str(app.chat.query_one(StatusBar).render())
        assert "FakeLM-1" in status and "42.0 tok/s" in status and "ctx" in status
        fields = {name: str(text) for name, text in status_fields(app.chat.query_one(StatusBar).data)}
        assert fields["cache"] == "cache 2/5 (40%)"  # a field the 80-column line leaves out


async def test_panel_shows_a_sampled_token_ranked_below_the_list():
    engine = FakeEngine()
    app = app_with(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        step = app.chat.conversation.last.reply.steps[0]
        outside = replace(step, token_id=999, rank=17, prob=0.001, raw_prob=0.0004, piece=b" rare")
        app.chat.query_one(TopKPanel).view = PanelView(outside, 0.7, 50)
        await pilot.pause()
        marked = [line for line in panel_lines(app) if line.lstrip().startswith("▶")]
        assert marked and "17" in marked[0] and "␣rare" in marked[0] and "0.1%" in marked[0]


async def test_the_widest_percentages_keep_each_candidate_on_one_line():
    app = app_with(FakeEngine())
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        step = app.chat.conversation.last.reply.steps[0]
        tiny = tuple(replace(c, prob=4.3e-6, raw_prob=2.1e-7) for c in step.top)  # "0.00043%", "2.1e-05%"
        app.chat.query_one(TopKPanel).view = PanelView(replace(step, top=tiny), 0.7, 50)
        await pilot.pause()
        rows = panel_lines(app)
        assert all("0.00043%" in row and "2.1e-05%" in row for row in rows[1:])
        width = app.chat.query_one(TopKPanel).content_size.width
        assert len(rows) == 1 + len(tiny) and max(cell_len(row) for row in rows) <= width  # no row wraps


async def test_escape_stops_the_reply_and_keeps_it():
    gate = threading.Event()
    engine = FakeEngine(gate=gate, gate_after=1)
    app = app_with(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi", wait=False)
        await wait_until(pilot, lambda: app.chat.conversation.last.reply.steps, what="first step")
        await pilot.press("escape")
        gate.set()
        await wait_until(pilot, lambda: not app.chat.generating)
        reply = app.chat.conversation.last.reply
        assert reply.status == "stopped" and reply.text.startswith("Hello") and reply.text != "Hello, world!"
        assert "stopped" in str(last_reply(app).header())


async def test_regenerate_adds_a_version():
    engine = FakeEngine(replies=[["One"], ["Two"]])
    app = app_with(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: len(app.chat.conversation.last.versions) == 2 and not app.chat.generating)
        assert app.chat.conversation.last.reply.text == "Two"
        assert engine.calls[1].messages == engine.calls[0].messages
        assert "‹ 2/2 ›" in str(last_reply(app).header())
        await app.chat.action_switch_version(0, -1)
        assert app.chat.conversation.last.reply.text == "One"
        assert "‹ 1/2 ›" in str(last_reply(app).header())


async def test_edit_last_message_and_resend():
    engine = FakeEngine(replies=[["A"], ["B"], ["C"]])
    app = app_with(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "first")
        await send(pilot, "secnd")
        await pilot.press("up")  # Up in the empty prompt recalls the last message
        prompt = app.chat.query_one(PromptInput)
        assert prompt.text == "secnd" and app.chat.editing
        await pilot.press("left", "left", "o")
        await send(pilot, "")
        exchanges = app.chat.conversation.exchanges
        assert [e.shown_user for e in exchanges] == ["first", "second"]
        assert exchanges[-1].reply.text == "C" and len(exchanges[-1].versions) == 2  # the old one stays
        assert engine.calls[-1].messages[-1] == {"role": "user", "content": "second"}
        assert engine.calls[-1].messages[-2] == {"role": "assistant", "content": "A"}


async def test_ctrl_l_edits_and_escape_cancels():
    app = app_with(FakeEngine())
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        await pilot.press("ctrl+l")
        assert app.chat.editing and app.chat.query_one(PromptInput).text == "hi"
        await pilot.press("escape")
        assert not app.chat.editing and app.chat.query_one(PromptInput).text == ""


async def test_costly_updates_slow_the_streaming_pace(monkeypatch):
    # Each batch reports what the UI thread spent since the last one; here every update "costs"
    # 1 s of UI CPU, far over the budget, so the pace moves toward its longest interval.
    cpu = iter(range(1000))
    monkeypatch.setattr(replies, "time", SimpleNamespace(thread_time=lambda: float(next(cpu))))
    engine = FakeEngine(replies=[list("abcd")], delay=reply_stream.MIN_BATCH_SECONDS + 0.05)
    app = app_with(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        assert app.chat.session.pacing.batch_seconds == reply_stream.MIN_BATCH_SECONDS
        await send(pilot, "hi")
        assert reply_stream.MIN_BATCH_SECONDS < app.chat.session.pacing.batch_seconds <= reply_stream.MAX_BATCH_SECONDS


async def test_the_decoder_leaves_the_ui_a_core_until_each_batch_is_drawn(monkeypatch):
    # Steps slower than the batch interval are each posted as they come: the step after each
    # finds the UI drawing (the real turn runs it on one thread fewer), and the UI says when it
    # has drawn each batch (the core goes back).
    monkeypatch.setattr(reply_stream, "MAX_BATCH_SECONDS", reply_stream.MIN_BATCH_SECONDS)  # a steady pace
    engine = FakeEngine(replies=[list("abcd")], delay=reply_stream.MIN_BATCH_SECONDS + 0.05)
    app = app_with(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        pacing = app.chat.session.pacing
        drawn = []
        monkeypatch.setattr(pacing, "drawn", lambda: drawn.append(pacing.drawing_since) or StreamPacing.drawn(pacing))
        await send(pilot, "hi")
        await wait_until(pilot, lambda: pacing.drawing_since is None, what="the last batch drawn")
        assert engine.turns[-1].spare_answers == [True] * 4 and engine.turns[-1].cores_back == 5  # given back as drawn
        assert engine.turns[-1].ui_thread == threading.get_native_id()  # the thread that draws, to bind
        assert len(set(drawn) - {None}) == 5  # each of the five batches (four letters, the stop) said drawn


async def test_words_typed_after_enter_are_kept_when_the_submission_is_handled():
    # Keys that reach the prompt before the screen handles an Enter follow the sent text there:
    # sending (or running a command) takes out only what was sent.
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    app = app_with(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        prompt = app.chat.query_one(PromptInput)
        prompt.set_prompt("/temp 0.5next words")
        app.chat.post_message(PromptInput.Submitted("/temp 0.5"))
        await wait_until(pilot, lambda: app.chat.settings.temperature == 0.5, what="command applied")
        assert prompt.text == "next words"
        prompt.set_prompt("hi there, more")
        app.chat.post_message(PromptInput.Submitted("hi there"))
        await wait_until(pilot, lambda: app.chat.generating, what="reply started")
        assert app.chat.conversation.last.user == "hi there" and prompt.text == ", more"
        # Enter again while the reply is written: refused, and the prompt keeps everything.
        app.chat.post_message(PromptInput.Submitted(", more"))
        await pilot.pause()
        assert prompt.text == ", more" and len(app.chat.conversation.exchanges) == 1
        gate.set()
        await wait_until(pilot, lambda: not app.chat.generating, what="reply finished")


async def test_slash_commands_valid_and_invalid():
    engine = FakeEngine()
    app = app_with(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "/temp 0.3", wait=False)
        await send(pilot, "/set topk=7 seed=11", wait=False)
        assert (app.chat.settings.temperature, app.chat.settings.top_k, app.chat.settings.seed) == (0.3, 7, 11)
        assert "T=0.3 k=7 seed=11" in str(app.chat.query_one(StatusBar).render())
        await send(pilot, "/temp hot", wait=False)
        errors = [n for n in app._notifications if n.severity == "error"]
        assert errors and "temperature must be a number" in errors[-1].message and "\n" not in errors[-1].message
        assert app.chat.query_one(PromptInput).text == "/temp hot"  # kept, to fix
        assert app.chat.settings.temperature == 0.3
        app.chat.query_one(PromptInput).clear()
        await send(pilot, "/set temp=0.9 topk=many", wait=False)
        assert app.chat.settings.temperature == 0.3  # all or nothing
        app.chat.query_one(PromptInput).clear()
        await send(pilot, "/system Be brief.", wait=False)
        await send(pilot, "hi")
        assert engine.calls[-1].messages[0] == {"role": "system", "content": "Be brief."}
        assert engine.calls[-1].settings == SamplingSettings(temperature=0.3, top_k=7, seed=11)
        await send(pilot, "/clear", wait=False)
        await pilot.pause()
        assert app.chat.conversation.exchanges == [] and not app.chat.query_one(ChatLog).replies
        await wait_until(pilot, lambda: engine.resets == 1, what="engine reset")
        await send(pilot, "/help", wait=False)
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_loading_shows_progress_and_stays_responsive():
    release = threading.Event()
    engine = FakeEngine()
    app = app_loading_until(release, engine, ("converting model.gguf (first run only)",))
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: "converting" in str(app.chat.query_one("#loading-log").content))
        assert "converting" in str(app.chat.query_one(StatusBar).render())
        await pilot.press(*"early", "enter")  # taken at once: it goes when the model is ready
        assert app.chat.query_one(PromptInput).text == ""
        assert [e.user for e in app.chat.conversation.exchanges] == ["early"]
        assert "early" in str(app.chat.query_one(ChatLog).user_view(0).render())
        assert app.chat.query_one(ChatLog).display  # shown above the loading panel
        assert not app.chat.query_one(ChatLog).reply_view(0).display  # no empty reply under it yet
        await pilot.press(*"second", "enter")  # one message waits at a time; this one is kept
        assert app.chat.query_one(PromptInput).text == "second"
        assert any("already waiting" in n.message for n in app._notifications)
        assert len(app.chat.conversation.exchanges) == 1 and not app.chat.generating
        release.set()
        await ready(pilot)
        assert not app.chat.query(LoadingPanel)
        await wait_until(pilot, lambda: app.chat.conversation.last.reply is not None and not app.chat.generating)
        assert app.chat.conversation.last.reply.text == "Hello, world!"
        assert engine.calls[-1].messages[-1]["content"] == "early"
        assert app.chat.query_one(ChatLog).reply_view(0).display


async def test_a_waiting_message_can_be_edited_before_the_model_is_ready():
    release = threading.Event()
    engine = FakeEngine()
    app = app_loading_until(release, engine)
    async with app.run_test() as pilot:
        await pilot.press(*"frist", "enter")
        await pilot.press("up")  # edit the last message: the one waiting
        prompt = app.chat.query_one(PromptInput)
        assert prompt.text == "frist" and app.chat.editing
        prompt.clear()
        await pilot.press(*"first", "enter")
        assert [e.user for e in app.chat.conversation.exchanges] == ["first"] and not app.chat.editing
        release.set()
        await ready(pilot)
        await wait_until(pilot, lambda: app.chat.conversation.last.reply is not None and not app.chat.generating)
        assert [call.messages[-1]["content"] for call in engine.calls] == ["first"]
        await send(pilot, "second")  # not an edit any more: a new exchange
        assert [e.user for e in app.chat.conversation.exchanges] == ["first", "second"]


async def test_load_failure_is_shown():
    def load(report):
        raise RuntimeError("model 'x' not found: pass 'default' [bold]or[/bold] a folder")

    from chatapp.tui.app import make_app

    app = make_app(settings=SamplingSettings(), load_engine=load)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: app.chat.query_one(LoadingPanel).has_class("-failed"))
        assert "[bold]or[/bold]" in str(app.chat.query_one("#loading-log").content)


async def test_engine_error_is_a_notification_and_the_chat_continues():
    engine = FakeEngine(fail_at=1)
    app = app_with(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        reply = app.chat.conversation.last.reply
        assert reply.status == "error" and reply.text == "Hello"
        assert any("NaN" in n.message for n in app._notifications)
        engine.fail_at = None
        await send(pilot, "again")
        assert app.chat.conversation.last.reply.text == "Hello, world!"


async def test_a_turn_that_cannot_lend_a_core_fails_in_one_line_rather_than_hang():
    # A wrapper around a turn written before `core_back` (as a test's recording engine was).
    engine = FakeEngine()
    start_turn = engine.start_turn

    def without_core_back(*args, **kwargs):
        class Older:
            def __init__(self, turn):
                self.turn, self.stats, self.on_prefill, self.spare_core = turn, turn.stats, None, None

            def __iter__(self):
                return iter(self.turn)

            def cancel(self):
                self.turn.cancel()

        return Older(start_turn(*args, **kwargs))

    engine.start_turn = without_core_back
    app = app_with(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        assert app.chat.conversation.last.reply.status == "error" and not app.chat.generating
        assert any("core_back" in n.message for n in app._notifications)


async def test_a_job_that_fails_outside_its_turn_ends_the_reply_failed(monkeypatch):
    app = app_with(FakeEngine())
    async with app.run_test() as pilot:
        await ready(pilot)

        def broken(job, report):
            raise RuntimeError("the engine thread lost its model")

        monkeypatch.setattr(app.chat.session, "run", broken)
        await send(pilot, "hi")  # waits until the reply is no longer being written
        assert app.chat.conversation.last.reply.status == "error"
        assert any("lost its model" in n.message for n in app._notifications)
        monkeypatch.undo()
        await send(pilot, "again")
        assert app.chat.conversation.last.reply.text == "Hello, world!"


async def test_quit_mid_reply_asks_first():
    gate = threading.Event()
    app = app_with(FakeEngine(gate=gate, gate_after=1))
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi", wait=False)
        await wait_until(pilot, lambda: app.chat.conversation.last.reply.steps)
        await pilot.press("ctrl+c")
        assert isinstance(app.screen, ConfirmQuitScreen)
        await pilot.press("n")
        assert not isinstance(app.screen, ConfirmQuitScreen) and app.is_running
        exits = []
        quit_for_real = app.exit
        app.exit = lambda *args, **kwargs: (exits.append(args), quit_for_real(*args, **kwargs))
        await pilot.press("ctrl+c")
        assert not exits  # asking, not quitting
        await pilot.press("y")
        gate.set()
        await pilot.pause()
        assert exits and app.return_code == 0


async def test_palette_lists_the_chat_actions():
    app = app_with(FakeEngine())
    async with app.run_test() as pilot:
        await ready(pilot)
        titles = {command.title for command in app.get_system_commands(app.screen)}
        assert {"New chat", "Regenerate", "Edit message", "Token inspector", "Heatmap", "Set temperature…"} <= titles
