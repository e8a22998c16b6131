"""Pilot tests of the token inspector, branching, versions and the heatmap."""

from __future__ import annotations

import pytest

from chatapp.tui.widgets import chat_log
from chatapp.tui.widgets.chat_log import ChatLog, Cursor, EarlierMessages
from chatapp.tui.widgets.prompt_input import PromptInput
from chatapp.tui.widgets.token_view import TokenView
from chatapp.tui.widgets.topk_panel import TopKPanel
from tests.tui.conftest import app_with, ready, send, wait_until
from tests.tui.fakes import FakeEngine

pytestmark = pytest.mark.anyio


def panel_step(app):
    return app.chat.query_one(TopKPanel).view.step


async def two_replies(pilot):
    await ready(pilot)
    await send(pilot, "first")
    await send(pilot, "second")


async def test_keyboard_navigation_moves_the_panel():
    engine = FakeEngine(replies=[["Hello", ",", " world", "!"], ["Bye", " now"]])
    app = app_with(engine)
    async with app.run_test() as pilot:
        await two_replies(pilot)
        log = app.chat.query_one(ChatLog)
        await pilot.press("ctrl+t")
        assert log.has_focus and log.cursor == Cursor(1, 2)  # "Bye", " now", stop
        assert panel_step(app).is_stop
        await pilot.press("left")
        assert log.cursor.step == 1 and panel_step(app).text == " now"
        await pilot.press("home")
        assert panel_step(app).text == "Bye"
        await pilot.press("pageup")
        assert log.cursor == Cursor(0, 0) and panel_step(app).text == "Hello"
        await pilot.press("end")
        assert log.cursor == Cursor(0, 4)
        await pilot.press("right")  # clamps at the last token
        assert log.cursor == Cursor(0, 4)
        await pilot.press("pagedown")
        assert log.cursor.exchange == 1
        await pilot.press("down", "down")
        assert log.cursor.row == 2 and app.chat.query_one(TopKPanel).view.cursor == 2
        await pilot.press("escape")
        assert log.cursor is None and app.chat.query_one(PromptInput).has_focus


async def test_mouse_picks_tokens_and_rows():
    engine = FakeEngine(replies=[["Hello", ",", " world", "!"]])
    app = app_with(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        log = app.chat.query_one(ChatLog)
        # A click on the reply opens the inspector; then tokens are clickable spans.
        await pilot.click(".reply-body")
        assert log.cursor == Cursor(0, 4)
        await pilot.click(TokenView, offset=(7, 0))  # " world" starts at column 6
        assert log.cursor.step == 2 and panel_step(app).text == " world"
        panel = app.chat.query_one(TopKPanel)
        await pilot.click(TopKPanel, offset=(4, panel.styles.gutter.top + 1 + 3))  # the 4th row
        assert log.cursor.row == 3


async def test_branching_forces_the_candidate_and_keeps_the_old_version():
    engine = FakeEngine(replies=[["Hello", ",", " world", "!"]])
    app = app_with(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        old = app.chat.conversation.last.reply
        await pilot.press("ctrl+t", "home", "right")  # step 1: ","
        await pilot.press("down")  # row 1: " the"
        candidate = old.steps[1].top[1]
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(app.chat.conversation.last.versions) == 2 and not app.chat.generating)
        new = app.chat.conversation.last.reply
        assert engine.calls[-1].prefix_ids == [old.steps[0].token_id, candidate.token_id]
        assert engine.calls[-1].messages == engine.calls[0].messages
        assert new.steps[1].forced and new.steps[1].token_id == candidate.token_id
        assert new.steps[0] == old.steps[0] and [s.step for s in new.steps] == list(range(len(new.steps)))
        assert new.text == "Hello the world!" and new.branched_at == 1
        reply_view = app.chat.query_one(ChatLog).replies[-1]
        assert "‹ 2/2 ›" in str(reply_view.header()) and "branched at token 2" in str(reply_view.header())
        assert panel_step(app).forced  # the cursor stays on the forced token
        await pilot.press("comma")
        assert app.chat.conversation.last.reply is old
        await pilot.press("full_stop")
        assert app.chat.conversation.last.reply is new


async def test_heatmap_shows_tokens_and_back():
    app = app_with(FakeEngine())
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        view = app.chat.query_one(ChatLog).replies[-1]
        await pilot.press("ctrl+o")
        assert view.has_class("-tokens") and view.query_one(TokenView).data.heatmap
        assert "background=" in str(view.query_one(TokenView).render().spans)
        await pilot.press("ctrl+o")
        assert not view.has_class("-tokens")


async def test_inspector_needs_a_reply():
    app = app_with(FakeEngine())
    async with app.run_test() as pilot:
        await ready(pilot)
        await pilot.press("ctrl+t")
        assert app.chat.query_one(ChatLog).cursor is None
        assert any("No reply" in n.message for n in app._notifications)


async def test_older_exchanges_are_unmounted_and_come_back(monkeypatch):
    monkeypatch.setattr(chat_log, "MAX_MOUNTED_EXCHANGES", 3)
    monkeypatch.setattr(chat_log, "EARLIER_BATCH", 2)
    app = app_with(FakeEngine(replies=[["One", " two"]]))
    async with app.run_test() as pilot:
        await ready(pilot)
        for turn in range(6):
            await send(pilot, f"message {turn}")
        log = app.chat.query_one(ChatLog)
        marker = log.query_one(EarlierMessages)
        assert len(app.chat.conversation.exchanges) == 6 and log.first_mounted == 3
        assert [v.index for v in log.replies] == [3, 4, 5] and marker.display
        assert "3 earlier exchanges" in str(marker.render())
        await pilot.press("ctrl+t", "pageup", "pageup")
        assert log.cursor.exchange == 3
        await pilot.press("pageup")  # past the oldest mounted reply: two more are mounted
        assert log.cursor.exchange == 2 and log.first_mounted == 1
        assert [v.index for v in log.replies] == [1, 2, 3, 4, 5]
        assert log.user_view(1).render().plain == "message 1"
        log.scroll_home(animate=False)
        await pilot.pause()
        await pilot.click(EarlierMessages)
        assert log.first_mounted == 0 and not marker.display and len(log.replies) == 6
        await pilot.press("escape")
        await send(pilot, "message 6")  # back to the limit
        assert [v.index for v in log.replies] == [4, 5, 6] and log.first_mounted == 4
        await log.show_exchanges(app.chat.conversation.exchanges)  # a reopened chat
        assert [v.index for v in log.replies] == [4, 5, 6] and "4 earlier" in str(marker.render())


async def test_the_inspector_shows_the_reply_s_confidence():
    from chatapp.tui.widgets.topk_panel import TopKPanel

    app = app_with(FakeEngine(replies=[["Sure", "!", " Yes"]]))
    async with app.run_test(size=(140, 36)) as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        panel = app.chat.query_one(TopKPanel)
        assert "perplexity" not in panel.render().plain  # while chatting: the step's candidates only
        await pilot.press("ctrl+t")
        text = panel.render().plain
        # The fake's raw probability is 0.54 for every token: 0.889 bits, perplexity 1.85.
        assert "reply perplexity 1.85" in text and "mean surprisal 0.89 bits" in text
        assert "step 1 “Sure” 54%" in text


async def test_w_looks_up_any_token_at_the_inspected_step():
    from chatapp.tui.step_questions import StepQuestion

    engine = FakeEngine(replies=[["Sure", "!", " Yes"]])
    app = app_with(engine)
    async with app.run_test(size=(140, 36)) as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        await pilot.press("ctrl+t", "home", "right")  # step 2 of the reply
        await pilot.press("w")
        assert isinstance(app.screen, StepQuestion) and app.screen.step == 2
        app.screen.query_one("Input").value = "Paris"
        await pilot.press("enter")
        await wait_until(pilot, lambda: engine.lookups)
        await wait_until(pilot, lambda: "“Paris” here" in app.chat.query_one(TopKPanel).render().plain)
        prefix, token_id = engine.lookups[-1]
        reply = app.chat.conversation.last.reply
        assert prefix == [reply.steps[0].token_id] and engine.vocab.texts[token_id] == "Paris"
        assert "“Paris” here: p 0% · raw 1.2% · rank 3" in app.chat.query_one(TopKPanel).render().plain
        await pilot.press("right")  # another step: the look-up was for step 2 only
        assert "“Paris” here" not in app.chat.query_one(TopKPanel).render().plain
        await pilot.press("w")
        app.screen.query_one("Input").value = "two words"
        await pilot.press("enter")
        await wait_until(pilot, lambda: any("2 tokens" in n.message for n in app._notifications))


async def test_s_recomputes_the_step_under_other_settings_and_enter_branches_with_them():
    from chatapp.tui.step_questions import StepQuestion

    engine = FakeEngine(replies=[["Sure", "!", " Yes"], ["Sure", " new", " one"]])
    app = app_with(engine)
    async with app.run_test(size=(140, 36)) as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        old = app.chat.conversation.last.reply
        await pilot.press("ctrl+t", "home", "right")  # step 2 of the reply
        await pilot.press("s")
        assert isinstance(app.screen, StepQuestion) and app.screen.step == 2
        assert app.screen.query_one("Input").value == old.settings.sampling_arguments()  # starts from the reply's
        app.screen.query_one("Input").value = "temp=1.5 topk=2"
        await pilot.press("enter")
        panel = app.chat.query_one(TopKPanel)
        await wait_until(pilot, lambda: "What if" in panel.render().plain)
        kind, prefix, tried = engine.probes[-1]
        assert kind == "what_if" and prefix == [old.steps[0].token_id]
        assert tried.temperature == 1.5 and tried.top_k == 2
        text = panel.render().plain
        assert panel.border_title.startswith("what-if 2 · T=1.5 k=2")
        assert "What if T=1.5 k=2 (the reply's: T=0.7 k=50)" in text and "tokens kept 6 → 2" in text
        assert "“!” 60.0% → 40.0%" in text and "\n ▶1 !                  40.0%" in text
        assert "enter: “␣new” 7.0%" in text and "drop: “␣the” 20.0% +2 more" in text
        assert old.steps[1].text == "!"  # the reply itself is unchanged
        await pilot.press("down", "enter")  # the second what-if row, " new": a branch with the tried settings
        await wait_until(pilot, lambda: len(app.chat.conversation.last.versions) == 2 and not app.chat.generating)
        new = app.chat.conversation.last.reply
        assert new.steps[1].text == " new" and new.steps[1].forced
        assert new.settings.temperature == 1.5 and new.settings.top_k == 2
        assert engine.calls[-1].settings.temperature == 1.5
        assert app.chat.session.settings.temperature != 1.5  # the chat's own settings stay
        await pilot.press("s")
        app.screen.query_one("Input").value = "temp=banana"
        await pilot.press("enter")
        await wait_until(pilot, lambda: any("temp" in n.message for n in app._notifications))


async def test_l_shows_each_layer_s_top_token_and_l_again_the_candidates():
    engine = FakeEngine(replies=[["Sure", "!", " Yes"]])
    app = app_with(engine)
    async with app.run_test(size=(140, 36)) as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        reply = app.chat.conversation.last.reply
        await pilot.press("ctrl+t", "home", "right", "right")  # step 3
        await pilot.press("l")
        panel = app.chat.query_one(TopKPanel)
        await wait_until(pilot, lambda: panel.view.lens)
        kind, prefix, _ = engine.probes[-1]
        assert kind == "lens" and prefix == [s.token_id for s in reply.steps[:2]]
        text = panel.render().plain
        assert panel.border_title.startswith("lens 3 ·") and panel.border_subtitle == "3 layers, raw p"
        assert "␣L1#2" in text and "\n  2 ?                           54.0%" in text and "L again" in text
        await pilot.press("l")
        assert not panel.view.lens and "␣L1#2" not in panel.render().plain
        await pilot.press("l")
        await wait_until(pilot, lambda: panel.view.lens)
        await pilot.press("left")  # another step: its candidates, not the lens
        assert not panel.view.lens


async def test_the_palette_and_help_reach_w_s_and_l():
    from chatapp.chat.commands import HELP_TEXT

    assert "W look up" in HELP_TEXT and "S what-if" in HELP_TEXT and "L logit lens" in HELP_TEXT
    engine = FakeEngine(replies=[["Sure", "!", " Yes"]])
    app = app_with(engine)
    async with app.run_test(size=(140, 36)) as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        commands = {command.title: command for command in app.get_system_commands(app.screen)}
        assert {"Look up a token's odds", "What if", "Logit lens"} <= set(commands)
        commands["Logit lens"].callback()  # no inspector open: it opens at the last step
        panel = app.chat.query_one(TopKPanel)
        await wait_until(pilot, lambda: panel.view.lens)
        reply = app.chat.conversation.last.reply
        assert app.chat.query_one(ChatLog).cursor.step == len(reply.steps) - 1
        assert engine.probes[-1][1] == [s.token_id for s in reply.steps[:-1]]
