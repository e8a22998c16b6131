"""The status line: model, device, speed, context, cache hit, activity and sampling settings.

When the line is wider than the widget, whole fields are left out in `DROP_ORDER`; if what
is left still does not fit, the line ends in an ellipsis rather than being clipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

from chatapp.chat.records import ModelInfo

SEPARATOR = " │ "
"""Between status fields."""
WARNING_STYLE = "bold $text-error"
"""How a lasting problem stands out."""
DROP_ORDER = ("cache", "device", "system", "settings", "speed")
"""The fields left out when the line does not fit, first left out first. The cache hit is a
detail of one turn's prompt; the device and dtype do not change while the app runs (and show
while it loads); the system prompt and the sampling settings are the user's own choice and
change only when asked; the speed is the last to go because it moves while a reply is written. The warning, the model
name, the context used and the activity are never left out: they say what is wrong, what is
running, how close the conversation is to its limit, and what is happening now."""


@dataclass(frozen=True)
class StatusData:
    """What the status line shows."""

    info: ModelInfo | None = None
    """The loaded model, or None while loading."""
    activity: str = ""
    """What is happening now, e.g. "loading…" or "writing…"."""
    tok_per_s: float | None = None
    """Decode speed of the last turn."""
    context_used: int = 0
    """Tokens of the conversation the model last saw, reply included."""
    cached: int | None = None
    """Prompt tokens of the last turn the KV cache already held."""
    prompt: int = 0
    """Prompt tokens of the last turn."""
    settings: str = ""
    """Sampling settings, e.g. "T=0.7 k=50 max=512"."""
    system: str = ""
    """The start of the system prompt in force, "" when there is none."""
    warning: str = ""
    """A lasting problem, shown first in the error colour until it is over (e.g. "not saved")."""


def status_fields(data: StatusData) -> list[tuple[str, Content]]:
    """The fields of the line in display order, each with its name (as `DROP_ORDER` names it)."""
    fields: list[tuple[str, Content]] = []
    if data.warning:
        fields.append(("warning", Content.styled(f"⚠ {data.warning}", WARNING_STYLE)))
    if data.info is None:
        fields.append(("activity", Content(data.activity or "loading…")))
    else:
        info = data.info
        weights = f" {info.quantization} weights" if info.quantization else ""
        fields.append(("model", Content(f"{info.name} (completion)" if info.completion else info.name)))
        fields.append(("device", Content(f"{info.device} {info.dtype}{weights}")))
        fields.append(("speed", Content(f"{data.tok_per_s:.1f} tok/s" if data.tok_per_s else "– tok/s")))
        fields.append(("context", Content(f"ctx {data.context_used}/{info.context_length}")))
        if data.cached is not None and data.prompt:
            cache = f"cache {data.cached}/{data.prompt} ({100 * data.cached / data.prompt:.0f}%)"
            fields.append(("cache", Content(cache)))
        if data.activity:
            fields.append(("activity", Content(data.activity)))
    if data.system:
        fields.append(("system", Content(f"system: {data.system}")))
    if data.settings:
        fields.append(("settings", Content(data.settings)))
    return fields


def fitted_line(fields: list[tuple[str, Content]], width: int) -> Content:
    """`fields` joined into one line of at most `width` cells (0: no limit).

    Fields are left out in `DROP_ORDER` until the line fits; if it still does not, it is cut
    and ends in "…".
    """
    contents = [content for _, content in fields]
    for name in DROP_ORDER:
        if not width or _joined_length(contents) <= width:
            break
        fields = [field for field in fields if field[0] != name]
        contents = [content for _, content in fields]
    line = Content(SEPARATOR).join(contents)
    if width and line.cell_length > width:
        line = line.truncate(width, ellipsis=True)
    return line


def _joined_length(contents: list[Content]) -> int:
    """Cells of `contents` joined with `SEPARATOR`."""
    return sum(content.cell_length for content in contents) + len(SEPARATOR) * max(len(contents) - 1, 0)


class StatusBar(Widget):
    """One line of facts about the model and the last turn."""

    data: reactive[StatusData] = reactive(StatusData)
    """Everything shown."""

    def render(self) -> Content:
        """The status line: a pure function of `data` and the width (Textual renders again when
        the size changes; the width is 0 before the first layout, and then nothing is left out)."""
        return fitted_line(status_fields(self.data), self.size.width)
