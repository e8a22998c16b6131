"""Step mode on screen: each proposal in the candidates panel, waiting for the user's pick.

A mixin of `ChatScreen`. F5 turns step mode on for the replies that follow (new ones,
regenerations and branches); while a step-mode reply waits, the panel holds the model's
proposal with its draw highlighted and has focus: Enter takes the highlighted row, ↑/↓ move
it, a digit or a click takes that row, F5 lets the model finish the reply, Esc stops it. The
session's job (`chatapp.session.step_mode`) does the rest on the engine thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chatapp.chat.records import Candidate
from chatapp.session.step_mode import StepProposed
from chatapp.tui.widgets.prompt_input import PromptInput
from chatapp.tui.widgets.topk_panel import PanelView, TopKPanel

if TYPE_CHECKING:
    from chatapp.tui.chat_screen import ChatScreen

STEP_HINT = "Step mode: Enter takes the ▶ row (the model's draw) · ↑/↓, 1–9 or a click pick · F5 the model finishes · Esc stops"
"""The line below a proposal's candidates."""


class StepPicking:
    """F5's step mode, mixed into `ChatScreen`."""

    def action_step_mode(self: "ChatScreen") -> None:
        """F5: turn step mode on or off; during a step-mode reply, let the model finish it."""
        job = self.session.job
        if job is not None and job.picks is not None:
            self.step_mode = False
            self.leave_proposal()
            job.picks.finish()
            self.notify("Step mode off: the model writes the rest of the reply.")
            return
        self.step_mode = not self.step_mode
        self.notify("Step mode on: you pick each token of the next replies (F5 again: off)." if self.step_mode
                    else "Step mode off.")

    def show_proposal(self: "ChatScreen", event: StepProposed) -> None:
        """Show the model's proposal in the panel, its draw highlighted, and give the panel the keys."""
        if not self.session.is_current(event):
            return
        step, settings = event.step, self.session.job.settings
        self.proposal = step
        row = next((i for i, c in enumerate(step.top) if c.token_id == step.token_id), None)
        panel = self.query_one(TopKPanel)
        panel.view = PanelView(step, settings.temperature, settings.top_k, row, (STEP_HINT,), label="pick")
        panel.can_focus = True
        panel.focus()

    def on_top_kpanel_taken(self: "ChatScreen", message: TopKPanel.Taken) -> None:
        """Enter or a digit in the panel: that row is the next token."""
        self.take_row(message.row)

    def take_row(self: "ChatScreen", row: int | None) -> None:
        """Answer the waiting proposal with its row `row` (None: the model's own draw)."""
        job, step = self.session.job, self.proposal
        if job is None or job.picks is None or step is None:
            return
        self.proposal = None
        if row is None:
            job.picks.pick(Candidate(step.token_id, step.text, step.prob, step.raw_prob, step.piece))
        else:
            job.picks.pick(step.top[row])

    def leave_proposal(self: "ChatScreen") -> None:
        """No proposal waits any more: the panel gives the keys back to the prompt."""
        self.proposal = None
        panel = self.query_one(TopKPanel)
        if panel.has_focus:
            self.query_one(PromptInput).focus()
        panel.can_focus = False
