"""The Textual application: built by `make_app` from settings and an engine loader.

Nothing happens at import time. `make_app` wires the chat screen to whatever `load_engine`
returns (the real `Engine`, or a scripted fake in tests); `run_tui` runs it for the CLI.
"""

from __future__ import annotations

from typing import Callable, Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from chatapp.settings import SamplingSettings
from chatapp.tui.chat_screen import ChatScreen, EngineLoader
from chatapp.tui.screens import ConfirmQuitScreen
from chatapp.tui.widgets.prompt_input import PromptInput

DEFAULT_TOP_N = 10
"""Candidates listed per step unless the caller asks otherwise."""
NARROW_WIDTH = 110
"""Terminals narrower than this get the compact layout (`-narrow` in app.tcss)."""
SETTING_COMMANDS = (
    ("Set temperature…", "/temp ", "0 is greedy; higher is more random"),
    ("Set top-k…", "/topk ", "keep only the k likeliest tokens (0 = all)"),
    ("Set top-p…", "/topp ", "nucleus sampling, or off"),
    ("Set min-p…", "/minp ", "drop tokens below min-p × the best, or off"),
    ("Set repetition penalty…", "/rep ", "penalise tokens already said, or off"),
    ("Set max reply length…", "/max ", "longest reply in tokens"),
    ("Set seed…", "/seed ", "fixed seed for reproducible replies, or off"),
    ("Set several settings…", "/set ", "e.g. temp=0.5 topk=40"),
    ("Set system prompt…", "/system ", "sent before the conversation; empty clears it"),
)
"""Palette entries that put a slash command in the prompt for the user to complete."""


class ChatApp(App):
    """chatapp's terminal UI."""

    CSS_PATH = "app.tcss"
    TITLE = "chatapp"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (NARROW_WIDTH, "-wide")]
    BINDINGS = [
        Binding("ctrl+q", "quit_safely", "Quit", priority=True),
        Binding("ctrl+c", "copy_or_quit", "Quit", show=False, priority=True),
    ]
    """Quitting asks first while a reply is being written."""

    def __init__(self, settings: SamplingSettings, load_engine: EngineLoader, top_n: int = DEFAULT_TOP_N) -> None:
        """An app that loads its engine with `load_engine` once running."""
        super().__init__()
        self.chat = ChatScreen(settings.validated(), load_engine, top_n)

    def get_default_screen(self) -> Screen:
        """The chat screen is the app."""
        return self.chat

    def action_quit_safely(self) -> None:
        """Quit, asking first if a reply would be cut off."""
        if not self.chat.generating:
            self.exit()
            return

        def answered(quit_app: bool | None) -> None:
            if quit_app:
                self.exit()

        if not isinstance(self.screen, ConfirmQuitScreen):
            self.push_screen(ConfirmQuitScreen(), answered)

    def action_copy_or_quit(self) -> None:
        """Ctrl+C copies a selection in the prompt; otherwise it quits (asking mid-reply)."""
        focused = self.focused
        if isinstance(focused, PromptInput) and focused.selected_text:
            focused.action_copy()
            return
        self.action_quit_safely()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The palette: Textual's own commands plus every chat action and setting."""
        yield from super().get_system_commands(screen)
        chat = self.chat
        yield SystemCommand("New chat", "Forget the conversation (/clear)", chat.action_new_chat)
        yield SystemCommand("Regenerate", "Write a new version of the last reply", chat.action_regenerate)
        yield SystemCommand("Edit last message", "Change the last message and resend it", chat.action_edit_last)
        yield SystemCommand("Stop reply", "Stop the reply being written", chat.action_stop)
        yield SystemCommand("Token inspector", "Move through a reply's tokens and branch", chat.action_inspect)
        yield SystemCommand("Heatmap", "Colour reply tokens by probability", chat.action_heatmap)
        yield SystemCommand("Help", "Slash commands and keys (/help)", chat.action_help)
        for title, command, help_text in SETTING_COMMANDS:
            yield SystemCommand(title, help_text, self._prefill(command))

    def _prefill(self, command: str) -> Callable[[], None]:
        def prefill() -> None:
            prompt = self.chat.query_one(PromptInput)
            prompt.set_prompt(command)
            prompt.focus()

        return prefill


def make_app(*, settings: SamplingSettings, load_engine: EngineLoader, top_n: int = DEFAULT_TOP_N) -> ChatApp:
    """Build the TUI.

    Args:
        settings: initial sampling settings (validated).
        load_engine: called on a worker thread with a progress callback; returns an engine.
        top_n: candidates listed per step.
    """
    return ChatApp(settings, load_engine, top_n)


def run_tui(settings: SamplingSettings, load_engine: EngineLoader, top_n: int = DEFAULT_TOP_N) -> int:
    """Run the TUI until the user quits; return the process exit code."""
    app = make_app(settings=settings, load_engine=load_engine, top_n=top_n)
    app.run()
    return app.return_code or 0
