"""The inspector's look-up of any token (W): type a token, see its odds at the inspected step.

`TokenLookup` asks for the token; `lookup_line` says what the model gave it at that step, as
the panel shows it below the candidates. The numbers come from the model itself, running that
step again from the cache (`Engine.odds_at`): not guessed from the listed candidates.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from chatapp.chat.records import WatchedToken
from chatapp.tui.formatting import format_percent, token_label


def lookup_line(odds: WatchedToken) -> str:
    """E.g. `“␣Paris” here: p 0% · raw 0.57% · rank 23`."""
    label = token_label(odds.text, odds.text.encode())
    return f"“{label}” here: p {format_percent(odds.prob)} · raw {format_percent(odds.raw_prob)} · rank {odds.rank}"


class TokenLookup(ModalScreen[str | None]):
    """Asks which token to look up at step `step`; dismissed with the text, or None."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]
    """Esc looks nothing up."""

    def __init__(self, step: int) -> None:
        """`step` is the inspected step, counted from 1 as the panel does."""
        super().__init__()
        self.step = step

    def compose(self) -> ComposeResult:
        """A line of explanation and the field."""
        with Vertical(id="lookup-box"):
            yield Static(Content(f"Look up a token at step {self.step}: its odds there, whatever its rank"))
            yield Input(placeholder="a token, e.g. ' Paris' with its leading space (Enter looks up, Esc cancels)")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter looks the typed token up (an empty field looks nothing up)."""
        self.dismiss(event.value or None)
