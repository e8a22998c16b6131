"""Modal screens: help, and the confirmation before quitting mid-reply."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from chatapp.tui.commands import HELP_TEXT


class HelpScreen(ModalScreen[None]):
    """Slash commands and keys."""

    BINDINGS = [Binding("escape,q,enter", "dismiss", "Close")]
    """Any of these closes the help."""

    def compose(self) -> ComposeResult:
        """The help text in a box."""
        with Vertical(id="help-box"):
            yield Static(Content(HELP_TEXT), id="help-text")
            yield Static(Content("Esc closes"), classes="hint")


class ConfirmQuitScreen(ModalScreen[bool]):
    """Ask before quitting while a reply is being written."""

    BINDINGS = [Binding("y", "answer(True)", "Quit"), Binding("n,escape", "answer(False)", "Keep chatting")]
    """y quits, n or Esc goes back."""

    def compose(self) -> ComposeResult:
        """Question and two buttons."""
        with Vertical(id="confirm-box"):
            yield Static(Content("A reply is being written. Quit anyway?"))
            yield Button("Quit (y)", id="quit", variant="error")
            yield Button("Keep chatting (n)", id="stay", variant="primary")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """Answer with the pressed button."""
        self.dismiss(event.button.id == "quit")

    def action_answer(self, quit_app: bool) -> None:
        """Answer from the keyboard."""
        self.dismiss(quit_app)
