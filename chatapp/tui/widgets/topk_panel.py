"""The candidates panel: what the LM head weighed at one step, with the chosen row highlighted."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from textual import events
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

from chatapp.records import Step
from chatapp.tui.formatting import format_percent, prob_bar, token_label

BAR_WIDTH = 8
"""Cells of the probability bar when the panel has room."""
NARROW_BAR_WIDTH = 3
"""Cells of the bar in a narrow panel, leaving room for the token text."""
NARROW_PANEL = 44
"""Content widths below this get the narrow bar."""
PERCENT_WIDTH = 7
"""Cells of a formatted percentage such as "0.0022%"."""
TOKEN_COLUMN_MIN = 6
"""Narrowest the token column gets before the bar gives way."""
HEADER_ROWS = 1
"""Rows above the first candidate (the column header)."""


@dataclass(frozen=True)
class PanelView:
    """Everything the panel shows: one step and how it was sampled."""

    step: Step
    """The step whose candidates are listed."""
    temperature: float
    """Temperature the step was sampled with."""
    top_k: int
    """Top-k the step was sampled with."""
    cursor: int | None = None
    """Row picked in the inspector for branching, if any."""


class TopKPanel(Widget):
    """Rank, visible token text, sampled probability (bar and %), raw probability."""

    COMPONENT_CLASSES = {"topk-panel--sampled", "topk-panel--cursor", "topk-panel--header", "topk-panel--bar"}
    """Row and cell styles, set in app.tcss."""

    view: reactive[PanelView | None] = reactive(None)
    """What to show; None before the first token."""
    placeholder: reactive[str] = reactive("Candidates appear here as the model writes.")
    """Text shown when there is no step."""

    @dataclass
    class RowClicked(Message):
        """A candidate row was clicked."""

        row: int
        """0-based index into the step's candidates."""

    def watch_view(self, view: PanelView | None) -> None:
        """Keep the border title in step with the view."""
        if view is None:
            self.border_title = "Candidates"
            self.border_subtitle = ""
            return
        step = view.step
        kind = "forced" if step.forced else "step"
        self.border_title = f"{kind} {step.step + 1} · T={view.temperature:g} k={view.top_k} · H={step.entropy:.2f} bits"
        self.border_subtitle = f"chosen: raw rank {step.rank}"

    def render(self) -> RenderableType:
        """The candidate table for `view` (pure function of it)."""
        view = self.view
        if view is None:
            return Text(self.placeholder, style="dim")
        step = view.step
        bar_width = BAR_WIDTH if self.content_size.width >= NARROW_PANEL else NARROW_BAR_WIDTH
        sampled = self.get_component_rich_style("topk-panel--sampled")
        cursor = self.get_component_rich_style("topk-panel--cursor")
        bar_style = self.get_component_rich_style("topk-panel--bar")
        table = Table(box=None, padding=(0, 1), pad_edge=False, expand=True, show_edge=False,
                      header_style=self.get_component_rich_style("topk-panel--header"))
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("token", ratio=1, min_width=TOKEN_COLUMN_MIN, no_wrap=True, overflow="ellipsis")
        table.add_column("p", no_wrap=True)
        table.add_column("raw", justify="right", no_wrap=True)
        listed = False
        for row, candidate in enumerate(step.top):
            chosen = candidate.token_id == step.token_id
            listed = listed or chosen
            style = cursor if row == view.cursor else sampled if chosen else None
            mark = "▶" if chosen else " "
            table.add_row(
                Text(f"{mark}{row + 1}"),
                Text(token_label(candidate.text, candidate.piece)),
                Text.assemble((prob_bar(candidate.prob, bar_width), bar_style), f" {format_percent(candidate.prob):>{PERCENT_WIDTH}}"),
                Text(format_percent(candidate.raw_prob)),
                style=style,
            )
        if not listed:
            # The sampled token ranked below the list: show it anyway, with its rank.
            label = token_label(step.piece.decode("utf-8", errors="replace"), step.piece)
            table.add_row(
                Text(f"▶{step.rank}"),
                Text(label),
                Text.assemble((prob_bar(step.prob, bar_width), bar_style), f" {format_percent(step.prob):>{PERCENT_WIDTH}}"),
                Text(format_percent(step.raw_prob)),
                style=sampled,
            )
        return table

    def on_click(self, event: events.Click) -> None:
        """Report which candidate row was clicked."""
        if self.view is None:
            return
        row = event.y - HEADER_ROWS - self.styles.gutter.top
        if 0 <= row < len(self.view.step.top):
            self.post_message(self.RowClicked(row))
