"""What the screen shows while the model loads: a spinner and the loader's progress lines."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Static

from chatapp.tui.formatting import literal_text

STARTING = "starting…"
"""Shown until the loader reports its first step."""
SPINNER_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
"""One braille pattern per frame, as terminal spinners draw them."""
SPINNER_SECONDS = 0.2
"""Time between frames. Five a second read as motion and cost the loader thread little: the
redraws run on the UI thread and hold the interpreter lock that loading (mostly `import torch`)
needs, and Textual's `LoadingIndicator`, which redraws its whole row 16 times a second, slowed a
warm start by 0.1-0.2 s."""


class Spinner(Widget):
    """One character that turns while something runs."""

    DEFAULT_CSS = """
    Spinner {
        width: 100%;
        height: 1;
    }
    """

    frame: reactive[int] = reactive(0)
    """Index into `SPINNER_FRAMES`."""

    def on_mount(self) -> None:
        """Start turning."""
        self._timer = self.set_interval(SPINNER_SECONDS, self._advance)

    def _advance(self) -> None:
        self.frame = (self.frame + 1) % len(SPINNER_FRAMES)

    def stop(self) -> None:
        """Stop turning and disappear."""
        self._timer.stop()
        self.display = False

    def render(self) -> Content:
        """The current frame."""
        return Content(SPINNER_FRAMES[self.frame])


class LoadingPanel(Vertical):
    """A spinner above the latest progress lines; errors replace the spinner."""

    def compose(self) -> ComposeResult:
        """Spinner and log."""
        yield Spinner()
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
        self.query_one(Spinner).stop()
        self.add_line(f"✗ {error}")
        self.add_class("-failed")
