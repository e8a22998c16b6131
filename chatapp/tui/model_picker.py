"""The model picker (`/model`, or the palette's "Switch model…"): the models found on this
machine, one of which the chat goes on with.

It lists `chatapp.loading.model_specs.local_models`: the default model, the `.gguf` files and
model folders under the configured folders (`model_folders` in config.toml), and the models of
the local Hugging Face cache. Enter picks one, Esc keeps the current model.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from chatapp.loading.model_specs import ModelChoice, local_models


def choice_label(choice: ModelChoice, current: str) -> Content:
    """One line of the list: the name (marked when it is the model in use), where it is, its size."""
    size = f" · {choice.size_mb:,.0f} MB" if choice.size_mb is not None else ""
    mark = "● " if choice.name == current or choice.spec == current else "  "
    return Content(f"{mark}{choice.name}").append(Content.styled(f"  {choice.where}{size}", "dim"))


class ModelPicker(ModalScreen[str | None]):
    """The models found here; dismissed with the chosen spec, or None."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Keep this model")]
    """Esc keeps the model in use."""

    def __init__(self, folders: tuple[str, ...], current: str) -> None:
        """List the models under `folders` (and the default and cached ones); `current` is the
        name of the model in use."""
        super().__init__()
        self.choices = local_models(folders)
        self.current = current

    def compose(self) -> ComposeResult:
        """The list, or a line saying where models were looked for."""
        with Vertical(id="model-box"):
            yield Static(Content("Switch model: the chat goes on with the one you pick"), classes="title")
            if self.choices:
                yield OptionList(*(Option(choice_label(c, self.current), id=str(i)) for i, c in enumerate(self.choices)))
            yield Static(Content("Enter picks · Esc keeps the current model · /model PATH opens any other; "
                                 "model_folders in config.toml says where to look"), classes="hint")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        """Enter (or a click) on a model picks it."""
        self.dismiss(self.choices[int(event.option.id)].spec)
