"""The heatmap's legend: which colour stands for which probability (Ctrl+O shows both)."""

from __future__ import annotations

from textual.content import Content
from textual.widget import Widget

from chatapp.tui.formatting import HEAT_STOPS, heat_color

LEGEND_TITLE = "heatmap, p sampled:"
"""What the colours measure: the probability each token was sampled with."""
SWATCH = "  "
"""One colour sample."""


class HeatLegend(Widget):
    """One line under the conversation's top edge: the heatmap's colour scale, with its stops."""

    DEFAULT_CSS = """
    HeatLegend {
        height: 1;
        display: none;
    }
    """

    def render(self) -> Content:
        """The scale from the least to the most likely, a swatch per stop (a pure function)."""
        parts: list[Content | str] = [LEGEND_TITLE]
        for prob, _rgb in HEAT_STOPS:
            parts += [" ", Content.styled(SWATCH, f"on {heat_color(prob)}"), f" {prob:.0%}"]
        return Content.assemble(*parts)
