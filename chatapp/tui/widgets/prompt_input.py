"""The prompt: Enter sends, Shift+Enter or Ctrl+J adds a newline, Up in an empty prompt edits."""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.message import Message
from textual.widgets import TextArea

SUBMIT_KEY = "enter"
"""Sends the prompt."""
NEWLINE_KEYS = ("shift+enter", "ctrl+j")
"""Insert a newline: Shift+Enter where the terminal reports it, Ctrl+J everywhere."""
EDIT_LAST_KEY = "up"
"""In an empty prompt, recalls the last message for editing (as in common chat apps)."""


class PromptInput(TextArea):
    """A multi-line prompt that stays usable while a reply streams."""

    @dataclass
    class Submitted(Message):
        """The user pressed Enter."""

        text: str
        """The prompt's text."""

    class EditLastRequested(Message):
        """Up was pressed in an empty prompt."""

    def __init__(self, placeholder: str = "") -> None:
        """An empty prompt showing `placeholder`."""
        super().__init__(placeholder=placeholder, soft_wrap=True, show_line_numbers=False, compact=True)
        self.blinks = True
        """Whether the cursor blinks while no reply is being written (snapshots turn it off)."""

    def show_writing(self, writing: bool) -> None:
        """Hold the cursor steady while a reply is written: each blink redraws the prompt, twice
        a second, on the UI thread that shares a small CPU with the model."""
        self.cursor_blink = self.blinks and not writing

    async def _on_key(self, event: events.Key) -> None:
        if event.key == SUBMIT_KEY:
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self.text))
        elif event.key in NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.insert("\n")
        elif event.key == EDIT_LAST_KEY and not self.text:
            event.stop()
            event.prevent_default()
            self.post_message(self.EditLastRequested())
        else:
            await super()._on_key(event)

    def take(self, submitted: str) -> None:
        """Remove `submitted`, the text an Enter sent, keeping whatever was typed after that Enter.

        The screen handles a submission after the keys that reached the prompt before it, so a
        fast typist's next words may already follow the sent text; clearing would lose them.
        """
        text = self.text
        self.set_prompt(text[len(submitted):] if text.startswith(submitted) else text)

    def set_prompt(self, text: str) -> None:
        """Replace the text and put the cursor at its end."""
        self.text = text
        self.move_cursor(self.document.end)
