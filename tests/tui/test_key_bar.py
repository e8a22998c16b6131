"""The key bar: the screen's keys on one line, following the focus; a click presses a key; when
the keys do not fit, the least important are left out."""

from __future__ import annotations

import pytest
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.screen import Screen

from chatapp.tui.screens import HelpScreen
from chatapp.tui.widgets.key_bar import IMPORTANCE, KeyBar, KeyHint, by_importance, importance
from tests.tui.conftest import app_with, ready, send, wait_until
from tests.tui.fakes import FakeEngine

pytestmark = pytest.mark.anyio


def bar_text(app) -> str:
    return app.chat.query_one(KeyBar).render().plain


async def test_the_bar_follows_the_focus_and_fits_the_width():
    app = app_with(FakeEngine())
    async with app.run_test(size=(160, 30)) as pilot:
        await ready(pilot)
        text = bar_text(app)
        assert "^r Regenerate" in text and "f1 Help" in text and "^q Quit" in text and "palette" in text
        await send(pilot, "hi")
        await pilot.press("ctrl+t")  # the inspector's own keys come first while it has the focus
        await wait_until(pilot, lambda: "Leave inspector" in bar_text(app), what="inspector keys")
        await pilot.press("escape")
        await wait_until(pilot, lambda: "Leave inspector" not in bar_text(app), what="back to the prompt's keys")
        await pilot.resize_terminal(60, 30)
        await pilot.pause()
        text = bar_text(app)
        # Whole hints are left out, the least important first: Quit and Help stay, Regenerate goes.
        assert len(text) <= 60 and "^q Quit" in text and "f1 Help" in text and "Regenerate" not in text


async def test_a_click_on_a_hint_presses_its_key():
    app = app_with(FakeEngine())
    async with app.run_test(size=(160, 30)) as pilot:
        await ready(pilot)
        text = bar_text(app)
        await pilot.click(KeyBar, offset=(text.index("Help"), 0))
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), what="the help screen")


CHAT_KEYS = (
    ("escape", "stop", "Stop"),
    ("ctrl+r", "regenerate", "Regenerate"),
    ("ctrl+l", "edit_last", "Edit"),
    ("ctrl+n", "new_chat", "New chat"),
    ("ctrl+t", "inspect", "Inspect"),
    ("f3", "toggle_panel", "Panel"),
    ("ctrl+o", "heatmap", "Heatmap"),
    ("f1", "help", "Help"),
    ("f2", "history", "History"),
)
"""The chat screen's keys, in their order."""
QUIT_KEY = ("ctrl+q", "quit_safely", "Quit")
"""The app's own key (Textual lists it after the screen's)."""


class KeysScreen(Screen):
    """A key bar alone, over the chat screen's keys; each action only records that it ran."""

    BINDINGS = [Binding(key, action, description) for key, action, description in CHAT_KEYS]

    def compose(self) -> ComposeResult:
        yield KeyBar()


class KeysApp(App):
    """The key bar's screen, with the app's quit key; `ran` lists the actions run."""

    BINDINGS = [Binding(*QUIT_KEY, priority=True)]

    def __init__(self) -> None:
        super().__init__()
        self.ran: list[str] = []

    def on_mount(self) -> None:
        self.push_screen(KeysScreen())


for _key, _action, _description in (*CHAT_KEYS, QUIT_KEY):
    setattr(KeysScreen if _action != QUIT_KEY[1] else KeysApp, f"action_{_action}",
            lambda self, action=_action: self.app.ran.append(action))


def lone_bar_text(app: KeysApp) -> str:
    return app.screen.query_one(KeyBar).render().plain


async def test_at_80_columns_the_least_important_keys_are_left_out():
    app = KeysApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        text = lone_bar_text(app)
        assert len(text) <= 80
        assert text == " esc Stop  ^r Regenerate  ^t Inspect  f1 Help  f2 History  ^q Quit  ^p palette "
        bar = app.screen.query_one(KeyBar)
        every = [hint.action for hint in bar.hints]
        shown = [hint.action for hint, _ in bar._fitted()]
        # The most important keys are kept, in the bar's own order; the ones left out rank lowest.
        assert set(shown) == set(sorted(every, key=importance)[: len(shown)])
        assert shown == [action for action in every if action in shown]
        assert set(every) - set(shown) == {"toggle_panel", "edit_last", "new_chat", "heatmap"}


async def test_at_140_columns_every_key_shows_in_its_order():
    app = KeysApp()
    async with app.run_test(size=(140, 24)) as pilot:
        await pilot.pause()
        text = lone_bar_text(app)
        positions = [text.index(f" {description} ") for _key, _action, description in (*CHAT_KEYS, QUIT_KEY)]
        assert positions == sorted(positions) and text.rstrip().endswith("^p palette")


async def test_a_click_presses_the_key_of_the_hint_under_it_when_keys_are_left_out():
    app = KeysApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        text = lone_bar_text(app)
        for description, action in (("Help", "help"), ("Quit", "quit_safely"), ("Inspect", "inspect")):
            await pilot.click(KeyBar, offset=(text.index(description), 0))
            await wait_until(pilot, lambda: app.ran and app.ran[-1] == action, what=f"{action} to run")
        assert app.ran == ["help", "quit_safely", "inspect"]


def test_importance_ignores_arguments_and_namespaces_and_ranks_unknown_actions_last():
    assert importance("version(-1)") == importance("version(1)") == IMPORTANCE.index("version")
    assert importance("app.quit_safely") == 0
    assert importance("toggle_panel") == IMPORTANCE.index("inspect") + 1
    assert importance("something_new") == len(IMPORTANCE)
    hints = (KeyHint("x", "x", "X", action="something_new"), KeyHint("f1", "f1", "Help", action="help"))
    assert by_importance(hints) == (1, 0)


async def test_the_app_at_80x24_keeps_help_and_quit_and_the_inspector_keys():
    app = app_with(FakeEngine())
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        text = bar_text(app)
        assert len(text) <= 80 and "f1 Help" in text and "^q Quit" in text and "^p palette" in text
        assert "Heatmap" not in text and "New chat" not in text  # the least important go first
        await pilot.press("ctrl+t")
        await wait_until(pilot, lambda: "Leave inspector" in bar_text(app), what="inspector keys")
        text = bar_text(app)
        assert len(text) <= 80 and "f1 Help" in text and "^q Quit" in text and "Branch here" in text
