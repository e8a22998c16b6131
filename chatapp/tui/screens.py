"""Modal screens: help, the confirmation before quitting mid-reply, and a yes/no question."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import ScrollableContainer, Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from chatapp.chat.commands import HELP_TEXT


class HelpScreen(ModalScreen[None]):
    """Slash commands and keys."""

    BINDINGS = [Binding("escape,q,enter", "dismiss", "Close")]
    """Any of these closes the help."""

    def compose(self) -> ComposeResult:
        """The help text in a box that scrolls where the terminal is smaller (80×24)."""
        with ScrollableContainer(id="help-box"):
            yield Static(Content(HELP_TEXT), id="help-text")
            yield Static(Content("Esc closes · arrows, PgUp/PgDn or the wheel scroll"), classes="hint")

    def on_mount(self) -> None:
        """Arrows and page keys scroll the help."""
        self.query_one("#help-box").focus()


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


class ConfirmScreen(ModalScreen[bool]):
    """Ask a yes/no question (e.g. before deleting a saved chat); y/Enter says yes, n/Esc no."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]
    """y answers yes, n or Esc no."""

    def __init__(self, question: str, yes: str, no: str = "Cancel") -> None:
        """`question` is shown literally; `yes` and `no` label the buttons."""
        super().__init__()
        self.question = question
        self.labels = (yes, no)

    def compose(self) -> ComposeResult:
        """Question and two buttons; the safe one has focus."""
        with Vertical(id="confirm-box"):
            yield Static(Content(self.question))
            yield Button(f"{self.labels[0]} (y)", id="yes", variant="error")
            yield Button(f"{self.labels[1]} (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        """Enter on the focused button keeps things as they are."""
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """Answer with the pressed button."""
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        """Answer from the keyboard."""
        self.dismiss(yes)
