"""The status line: model, device, speed, context, cache hit and sampling settings."""

from __future__ import annotations

from dataclasses import dataclass

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

from chatapp.records import ModelInfo

SEPARATOR = " │ "
"""Between status fields."""
WARNING_STYLE = "bold $text-error"
"""How a lasting problem stands out."""


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
    warning: str = ""
    """A lasting problem, shown first in the error colour until it is over (e.g. "not saved")."""


class StatusBar(Widget):
    """One line of facts about the model and the last turn."""

    data: reactive[StatusData] = reactive(StatusData)
    """Everything shown."""

    def render(self) -> Content:
        """The status line (pure function of `data`)."""
        data = self.data
        fields: list[str] = []
        if data.info is None:
            fields.append(data.activity or "loading…")
        else:
            info = data.info
            weights = f" {info.quantization} weights" if info.quantization else ""
            fields += [info.name, f"{info.device} {info.dtype}{weights}"]
            fields.append(f"{data.tok_per_s:.1f} tok/s" if data.tok_per_s else "– tok/s")
            fields.append(f"ctx {data.context_used}/{info.context_length}")
            if data.cached is not None and data.prompt:
                fields.append(f"cache {data.cached}/{data.prompt} ({100 * data.cached / data.prompt:.0f}%)")
            if data.activity:
                fields.append(data.activity)
        if data.settings:
            fields.append(data.settings)
        line = Content(SEPARATOR.join(fields))
        if data.warning:
            line = Content.assemble((f"⚠ {data.warning}", WARNING_STYLE), SEPARATOR, line)
        return line
