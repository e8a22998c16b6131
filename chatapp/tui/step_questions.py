"""The inspector's questions about one step, and how their answers read.

W looks up any token's odds there, S recomputes the step under other sampling settings
(what-if), L shows the logit lens. `StepQuestion` asks for the token or the settings; the
answers come from the model itself, that step run again from the cache (`Engine.odds_at`,
`what_if_at`, `lens_at`), never guessed from the listed candidates.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from chatapp.chat.records import Candidate, WatchedToken, WhatIf
from chatapp.chat.settings import SamplingSettings
from chatapp.tui.formatting import format_percent, token_label

LISTED_IN_A_LINE = 3
"""Tokens named in the what-if's "enter" and "drop" lines."""


def quoted(text: str) -> str:
    """A token as the panel shows it, in quotes: `“␣Paris”`."""
    return f"“{token_label(text, text.encode())}”"


def lookup_line(odds: WatchedToken) -> str:
    """E.g. `“␣Paris” here: p 0% · raw 0.57% · rank 23`."""
    return f"{quoted(odds.text)} here: p {format_percent(odds.prob)} · raw {format_percent(odds.raw_prob)} · rank {odds.rank}"


def _named(candidates: tuple[Candidate, ...], more: int) -> str:
    names = ", ".join(f"{quoted(c.text)} {format_percent(c.prob)}" for c in candidates[:LISTED_IN_A_LINE])
    return names + (f" +{more} more" if more > 0 else "")


def what_if_lines(answer: WhatIf, before: SamplingSettings, after: SamplingSettings) -> tuple[str, ...]:
    """The lines below the what-if's candidates: the settings compared, the reply's token's
    probability then and now, and which tokens enter or drop."""
    lines = [
        f"What if {after.describe_sampling()} (the reply's: {before.describe_sampling()})",
        f"{quoted(answer.chosen.text)} {format_percent(answer.chosen_before)} → {format_percent(answer.chosen.prob)}"
        f" · tokens kept {answer.kept_before} → {answer.kept_after}",
    ]
    if answer.entered:
        lines.append("enter: " + _named(answer.entered, answer.entered_count - LISTED_IN_A_LINE))
    if answer.dropped:
        lines.append("drop: " + _named(answer.dropped, answer.dropped_count - LISTED_IN_A_LINE))
    lines.append("Enter branches here with these settings · S again · Esc")
    return tuple(lines)


class StepQuestion(ModalScreen[str | None]):
    """Asks what to find out at step `step` (a token, or settings); dismissed with the text, or None."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]
    """Esc asks nothing."""

    def __init__(self, step: int, question: str, placeholder: str, value: str = "") -> None:
        """`step` is the inspected step, counted from 1 as the panel does; `value` fills the field."""
        super().__init__()
        self.step = step
        self.question = question
        self.placeholder = placeholder
        self.value = value

    def compose(self) -> ComposeResult:
        """A line of explanation and the field."""
        with Vertical(id="lookup-box"):
            yield Static(Content(self.question))
            yield Input(self.value, placeholder=self.placeholder)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter answers with the typed text (an empty field asks nothing)."""
        self.dismiss(event.value or None)


def token_question(step: int) -> StepQuestion:
    """W: which token to look up at `step`."""
    return StepQuestion(step, f"Look up a token at step {step}: its odds there, whatever its rank",
                        "a token, e.g. ' Paris' with its leading space (Enter looks up, Esc cancels)")


def settings_question(step: int, settings: SamplingSettings) -> StepQuestion:
    """S: which settings to try at `step`, starting from the reply's own."""
    return StepQuestion(step, f"What if step {step} were sampled otherwise? Settings as /set takes them",
                        "e.g. temp=1.2 topk=10 top_p=0.9 (Enter recomputes, Esc cancels)", settings.sampling_arguments())
