"""Pilot tests of step mode (F5): the model proposes each token, the user picks it."""

from __future__ import annotations

import pytest

from chatapp.tui.widgets.prompt_input import PromptInput
from chatapp.tui.widgets.topk_panel import TopKPanel
from tests.tui.conftest import app_with, ready, send, wait_until
from tests.tui.fakes import FakeEngine

pytestmark = pytest.mark.anyio


async def proposal_at(pilot, app, step: int):
    """Wait until the proposal for 0-based `step` waits in the panel."""
    await wait_until(pilot, lambda: app.chat.proposal is not None and app.chat.proposal.step == step)
    return app.chat.query_one(TopKPanel)


async def test_each_token_is_picked_then_the_model_finishes():
    engine = FakeEngine(replies=[["Sure", "!", " Yes", "."]])
    app = app_with(engine)
    async with app.run_test(size=(140, 36)) as pilot:
        await ready(pilot)
        await pilot.press("f5")
        assert app.chat.step_mode
        await send(pilot, "hi", wait=False)
        panel = await proposal_at(pilot, app, 0)
        assert panel.has_focus and panel.view.label == "pick" and "Step mode: Enter takes" in panel.render().plain
        assert panel.view.cursor == 0  # the model's draw is highlighted
        await pilot.press("enter")  # take the draw
        panel = await proposal_at(pilot, app, 1)
        await pilot.press("down", "enter")  # the second row, " the"
        panel = await proposal_at(pilot, app, 2)
        await pilot.press("3")  # the third row, " a"
        await proposal_at(pilot, app, 3)
        reply = app.chat.conversation.last.reply
        assert reply.text == "Sure the a" and reply.status == "streaming"
        assert not reply.steps[0].forced and reply.steps[1].forced and reply.steps[2].forced
        one_step_calls = engine.calls[-4:]
        assert all(call.settings.max_new_tokens == 1 for call in one_step_calls)
        assert [len(call.prefix_ids) for call in one_step_calls] == [0, 1, 2, 3]
        await pilot.press("f5")  # let the model finish
        await wait_until(pilot, lambda: not app.chat.generating)
        assert not app.chat.step_mode and app.chat.proposal is None
        assert reply.status == "done" and reply.text == "Sure the a." and reply.steps[-1].is_stop
        assert engine.calls[-1].prefix_ids == [s.token_id for s in reply.steps[:3]]
        assert engine.calls[-1].settings.max_new_tokens == 512 - 3
        assert app.focused is app.chat.query_one(PromptInput) and not panel.can_focus


async def test_esc_stops_a_step_mode_reply_and_picking_the_stop_token_ends_it():
    engine = FakeEngine(replies=[["Sure", "!"]])
    app = app_with(engine)
    async with app.run_test(size=(140, 36)) as pilot:
        await ready(pilot)
        await pilot.press("f5")
        await send(pilot, "hi", wait=False)
        await proposal_at(pilot, app, 0)
        await pilot.press("enter")
        await proposal_at(pilot, app, 1)
        await pilot.press("escape")
        await wait_until(pilot, lambda: not app.chat.generating)
        reply = app.chat.conversation.last.reply
        assert reply.status == "stopped" and reply.text == "Sure"
        assert app.focused is app.chat.query_one(PromptInput)
        assert app.chat.step_mode  # still on for the next reply
        await send(pilot, "again", wait=False)
        for step in range(3):  # "Sure", "!", then the stop token, each the model's draw
            await proposal_at(pilot, app, step)
            await pilot.press("enter")
        await wait_until(pilot, lambda: not app.chat.generating)
        reply = app.chat.conversation.last.reply
        assert reply.status == "done" and reply.text == "Sure!" and reply.steps[-1].is_stop


async def test_the_palette_and_help_reach_step_mode():
    from chatapp.chat.commands import HELP_TEXT

    assert "F5 step mode" in HELP_TEXT
    app = app_with(FakeEngine())
    async with app.run_test() as pilot:
        await ready(pilot)
        commands = {command.title: command for command in app.get_system_commands(app.screen)}
        commands["Step mode"].callback()
        assert app.chat.step_mode
