"""A reply shown token by token: the inspector's view and the probability heatmap."""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.content import Content
from textual.message import Message
from textual.reactive import reactive
from textual.style import Style
from textual.widget import Widget

from chatapp.chat.records import Step
from chatapp.tui.formatting import heat_color, literal_text

EMPTY_TOKEN_MARK = "▯"
"""Stands for a token that adds no text (a partial character, or the end-of-turn token)."""
NEWLINE_MARK = "↵"
"""Shown before each newline of a token so newline tokens are visible and clickable."""
META_KEY = "step"
"""Key of the step index stored in each token's style, read back on click."""


@dataclass(frozen=True)
class TokenViewData:
    """What the token view shows."""

    steps: tuple[Step, ...] = ()
    """The reply's steps."""
    cursor: int | None = None
    """Index of the inspected step, if any."""
    heatmap: bool = False
    """Colour tokens by the probability they were sampled with."""
    plain: bool = False
    """Show the text as it reads (completion mode outside the inspector): newlines as they are,
    no mark for a token without text."""


class TokenView(Widget):
    """The reply's tokens as separate, clickable spans."""

    COMPONENT_CLASSES = {"token-view--cursor", "token-view--forced", "token-view--mark"}
    """Cursor, forced-token and placeholder-mark styles, set in app.tcss."""

    data: reactive[TokenViewData] = reactive(TokenViewData, layout=True)
    """The steps, cursor and heatmap switch."""

    @dataclass
    class TokenClicked(Message):
        """A token was clicked."""

        view: "TokenView"
        """The view clicked in."""
        step: int
        """Index of the clicked step."""

    def render(self) -> Content:
        """The tokens as spans (pure function of `data`)."""
        data = self.data
        cursor_style = Style.from_rich_style(self.get_component_rich_style("token-view--cursor"))
        forced_style = Style.from_rich_style(self.get_component_rich_style("token-view--forced"))
        mark_style = Style.from_rich_style(self.get_component_rich_style("token-view--mark"))
        parts: list[tuple[str, Style] | str] = []
        for index, step in enumerate(data.steps):
            text = literal_text(step.text)
            style = Style.from_meta({META_KEY: index})
            if data.plain:
                pass
            elif not text:
                text, style = EMPTY_TOKEN_MARK, style + mark_style
            else:
                text = text.replace("\n", NEWLINE_MARK + "\n")
            if data.heatmap:
                style = style + Style.parse(f"on {heat_color(step.prob)}")
            if step.forced:
                style = style + forced_style
            if index == data.cursor:
                style = style + cursor_style
            parts.append((text, style))
        return Content.assemble(*parts)

    def on_click(self, event: events.Click) -> None:
        """Report the clicked token (its index travels in the span's style)."""
        meta = event.style.meta if event.style else {}
        if META_KEY in meta:
            event.stop()
            self.post_message(self.TokenClicked(self, int(meta[META_KEY])))
