"""The candidates panel: what the LM head weighed at one step, with the chosen row highlighted."""

from __future__ import annotations

from dataclasses import dataclass, replace

from rich.cells import set_cell_size
from textual import events
from textual.binding import Binding
from textual.content import Content
from textual.message import Message
from textual.reactive import reactive
from textual.style import Style
from textual.widget import Widget

from chatapp.chat.records import LensEntry, Step
from chatapp.tui.formatting import PERCENT_CHARS, format_percent, prob_bar, token_label

BAR_WIDTH = 8
"""Cells of the probability bar when the panel has room."""
NARROW_BAR_WIDTH = 3
"""Cells of the bar in a narrow panel, leaving room for the token text."""
NARROW_PANEL = 44
"""Content widths below this get the narrow bar."""
RANK_WIDTH = 3
"""Cells of the rank column ("▶17")."""
PERCENT_WIDTH = PERCENT_CHARS
"""Cells of a formatted percentage: the longest, such as "0.00043%", fits."""
TOKEN_COLUMN_MIN = 6
"""Narrowest the token column gets."""
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
    notes: tuple[str, ...] = ()
    """Lines shown below the candidates (the inspector's: the reply's confidence)."""
    label: str = ""
    """What the title calls the step ("what-if 3"), when it is not the step as sampled."""
    lens: tuple[LensEntry, ...] = ()
    """The step's logit lens, shown instead of the candidates when there is one."""


class TopKPanel(Widget):
    """Rank, visible token text, sampled probability (bar and %), raw probability."""

    COMPONENT_CLASSES = {"topk-panel--sampled", "topk-panel--cursor", "topk-panel--header", "topk-panel--bar"}
    """Row and cell styles, set in app.tcss."""

    can_focus = False
    """Focusable only while a step-mode proposal waits (`StepPicking`)."""

    view: reactive[PanelView | None] = reactive(None)
    """What to show; None before the first token."""
    placeholder: reactive[str] = reactive("Candidates appear here as the model writes.")
    """Text shown when there is no step."""

    BINDINGS = [
        Binding("up", "move_row(-1)", "Up", show=False),
        Binding("down", "move_row(1)", "Down", show=False),
        Binding("enter", "take", "Take"),
        *(Binding(str(digit), f"take({digit - 1})", str(digit), show=False) for digit in range(1, 10)),
    ]
    """Step mode's keys, live while the panel has focus (only while a proposal waits for a pick)."""

    @dataclass
    class Taken(Message):
        """Step mode: a row was taken as the next token (Enter on the highlighted row, or a digit)."""

        row: int | None
        """0-based index into the step's candidates; None: the step's own draw (not listed)."""

    def action_move_row(self, delta: int) -> None:
        """Move the highlighted row."""
        view = self.view
        if view is not None and view.step.top:
            row = view.cursor if view.cursor is not None else 0
            self.view = replace(view, cursor=max(0, min(len(view.step.top) - 1, row + delta)))

    def action_take(self, row: int | None = None) -> None:
        """Take row `row` (the highlighted one when None) as the next token."""
        view = self.view
        row = view.cursor if row is None and view is not None else row
        if view is not None and (row is None or 0 <= row < len(view.step.top)):
            self.post_message(self.Taken(row))

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
        kind = view.label or ("forced" if step.forced else "step")
        self.border_title = f"{kind} {step.step + 1} · T={view.temperature:g} k={view.top_k} · H={step.entropy:.2f} bits"
        self.border_subtitle = f"{len(view.lens)} layers, raw p" if view.lens else f"chosen: raw rank {step.rank}"

    def render(self) -> Content:
        """The candidate rows for `view` (pure function of it and the panel width)."""
        view = self.view
        if view is None:
            return Content(self.placeholder)
        step = view.step
        width = max(self.content_size.width, TOKEN_COLUMN_MIN + 2 * PERCENT_WIDTH + 6)
        bar_width = BAR_WIDTH if width >= NARROW_PANEL else NARROW_BAR_WIDTH
        token_width = width - RANK_WIDTH - bar_width - 2 * PERCENT_WIDTH - 4
        styles = {name: Style.from_rich_style(self.get_component_rich_style(f"topk-panel--{name}"))
                  for name in ("sampled", "cursor", "header", "bar")}

        def row(rank: str, label: str, prob: float, raw: float, style: Style | None) -> Content:
            line = Content.assemble(
                f"{rank:>{RANK_WIDTH}} {set_cell_size(label, token_width)} {format_percent(prob):>{PERCENT_WIDTH}} ",
                (prob_bar(prob, bar_width), styles["bar"]),
                f" {format_percent(raw):>{PERCENT_WIDTH}}",
            )
            # Under the bar's own colour, so the highlighted row keeps its bar visible.
            return line.stylize_before(style) if style else line

        if view.lens:
            return self._lens_rows(view, width, styles)
        header = (f"{'#':>{RANK_WIDTH}} {set_cell_size('token', token_width)} {'p':>{PERCENT_WIDTH}} "
                  f"{'':{bar_width}} {'raw':>{PERCENT_WIDTH}}")
        lines = [Content(header).stylize(styles["header"])]
        listed = False
        for index, candidate in enumerate(step.top):
            chosen = candidate.token_id == step.token_id
            listed = listed or chosen
            style = styles["cursor"] if index == view.cursor else styles["sampled"] if chosen else None
            label = token_label(candidate.text, candidate.piece)
            lines.append(row(f"{'▶' if chosen else ''}{index + 1}", label, candidate.prob, candidate.raw_prob, style))
        if not listed:
            # The sampled token ranked below the list: show it anyway, with its rank.
            label = token_label(step.piece.decode("utf-8", errors="replace"), step.piece)
            lines.append(row(f"▶{step.rank}", label, step.prob, step.raw_prob, styles["sampled"]))
        if view.notes:
            lines += [Content(""), *(Content(note).stylize(styles["header"]) for note in view.notes)]
        return Content("\n").join(lines)

    def _lens_rows(self, view: PanelView, width: int, styles: dict[str, Style]) -> Content:
        """The lens table: layer, its top token, that token's raw probability (bar and %); evenly
        spaced layers, the last always among them, when the panel is too short for all."""
        bar_width = BAR_WIDTH if width >= NARROW_PANEL else NARROW_BAR_WIDTH
        token_width = width - RANK_WIDTH - bar_width - PERCENT_WIDTH - 3
        room = max(2, self.content_size.height - HEADER_ROWS - (len(view.notes) + 1 if view.notes else 0))
        entries = lens_rows_to_show(view.lens, room)
        header = f"{'L':>{RANK_WIDTH}} {set_cell_size('top token', token_width)} {'raw':>{PERCENT_WIDTH}}"
        lines = [Content(header).stylize(styles["header"])]
        for entry in entries:
            label = token_label(entry.text, entry.text.encode())
            line = Content.assemble(
                f"{entry.layer:>{RANK_WIDTH}} {set_cell_size(label, token_width)} {format_percent(entry.prob):>{PERCENT_WIDTH}} ",
                (prob_bar(entry.prob, bar_width), styles["bar"]),
            )
            lines.append(line.stylize_before(styles["sampled"]) if entry.token_id == view.step.token_id else line)
        if view.notes:
            lines += [Content(""), *(Content(note).stylize(styles["header"]) for note in view.notes)]
        return Content("\n").join(lines)

    def on_click(self, event: events.Click) -> None:
        """Report which candidate row was clicked."""
        if self.view is None:
            return
        row = event.y - HEADER_ROWS - self.styles.gutter.top
        if not self.view.lens and 0 <= row < len(self.view.step.top):
            self.post_message(self.RowClicked(row))


def lens_rows_to_show(lens: tuple[LensEntry, ...], room: int) -> tuple[LensEntry, ...]:
    """All of `lens` when `room` rows hold it, else `room` evenly spaced entries ending with the last."""
    if len(lens) <= room:
        return lens
    last = len(lens) - 1
    picks = sorted({round(i * last / (room - 1)) for i in range(room)})
    return tuple(lens[i] for i in picks)
