"""What the screen shows while the model loads: a spinner and the loader's progress lines."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import LoadingIndicator, Static

from chatapp.tui.formatting import literal_text


STARTING = "starting…"
"""Shown until the loader reports its first step."""


class LoadingPanel(Vertical):
    """A spinner above the latest progress lines; errors replace the spinner."""

    def compose(self) -> ComposeResult:
        """Spinner and log."""
        yield LoadingIndicator()
        yield Static(Content(STARTING), id="loading-log")

    def add_line(self, text: str) -> None:
        """Show one more progress line (literal text)."""
        log = self.query_one("#loading-log", Static)
        lines = [*str(log.content).splitlines(), literal_text(text)]
        if lines[0] == STARTING:
            lines.pop(0)
        log.update(Content("\n".join(lines)))

    def fail(self, error: str) -> None:
        """Stop the spinner and show why loading failed."""
        self.query_one(LoadingIndicator).display = False
        self.add_line(f"✗ {error}")
        self.add_class("-failed")
