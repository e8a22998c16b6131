"""Switching the model inside the app: `/model SPEC`, or the picker that `/model` opens.

A mixin of `ChatScreen`. The spec is checked first (`check_model_spec`: milliseconds, nothing
loaded), so a bad one costs one line and changes nothing. The new model then loads on the
engine thread while the old one still answers nothing (messages wait for the switch); once it
is ready the chat goes on with it: the whole conversation is read again at the next message
(the old KV cache belongs to the old model), and each reply records the model that wrote it.
A load that fails leaves the old model in place. Handlers are found by Textual's naming
convention (`on_model_switched`): `@on` is only collected on widget classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from textual import work

from chatapp.engine.thread import on_engine_thread, submit
from chatapp.loading.model_specs import check_model_spec
from chatapp.session.reply_stream import one_line
from chatapp.support.errors import ModelLoadError
from chatapp.tui.messages import ModelProgress, ModelSwitched, ModelSwitchFailed
from chatapp.tui.model_picker import ModelPicker

if TYPE_CHECKING:
    from chatapp.tui.chat_screen import ChatScreen

ModelOpener = Callable[[str, Callable[[str], None]], object]
"""Loads the model a spec names, reporting progress lines; runs on the engine thread."""
DEFAULT_MODEL_FOLDERS = ("~/models",)
"""Where the picker looks for `.gguf` files and model folders when config.toml says nothing."""


class ModelSwitching:
    """`/model`, the picker, and the switch itself, mixed into `ChatScreen`."""

    switching: str | None
    """The spec being loaded, while a switch is under way."""

    def follow_chat_model(self: "ChatScreen", at_start: bool = False) -> None:
        """A reopened chat goes on with the model that wrote its latest reply: switched to when
        its spec is recorded and can be loaded here (at start, only when `--model` was not given:
        `follow_model_at_start`); otherwise the chat says which model wrote it, and goes on with
        the one loaded now."""
        engine = self.session.engine
        name, spec = self.session.written_with()
        if engine is None or not name or (spec == engine.info.spec if spec else name == engine.info.name):
            return
        why = ""
        if spec and self._open_model is not None and (self.follow_model_at_start or not at_start):
            try:
                check_model_spec(spec)
            except ModelLoadError as error:
                why = f" ({error})"
            else:
                self.notify(f"This chat's latest reply was written by {name}: going on with it "
                            f"(/model switches).", title="Model", markup=False)
                self.switch_model(spec)
                return
        self.notify(f"This chat's latest reply was written by {name}{why}; it goes on with {engine.info.name}. "
                    "/model switches (alone, it lists the models found here).", title="Model", markup=False)

    def choose_model(self: "ChatScreen") -> None:
        """Open the picker of the models found here."""
        if self._open_model is None:
            self.notify("This app cannot switch models.", severity="warning")
            return
        current = getattr(getattr(self.session.engine, "info", None), "name", "")

        def picked(spec: str | None) -> None:
            if spec is not None:
                self.switch_model(spec)

        self.app.push_screen(ModelPicker(self.model_folders, current), picked)

    def switch_model(self: "ChatScreen", spec: str) -> None:
        """Load the model `spec` names and go on with it; refused in one line when it cannot be
        done now or the spec cannot load."""
        if self._open_model is None:
            self.notify("This app cannot switch models.", severity="warning")
            return
        busy = ("a reply is being written: stop it (Esc) first" if self.session.generating else
                f"{self.switching} is still loading" if self.switching else
                "the first model is still loading" if self.session.engine is None and self.load_error is None else "")
        if busy:
            self.notify(f"Not now: {busy}.", title="Model", severity="warning", markup=False)
            return
        try:
            check_model_spec(spec)
        except ModelLoadError as error:
            self.notify(str(error), title="Model not switched", severity="error", markup=False)
            return
        self.switching = spec
        self.update_status(f"loading {spec}…")
        self.load_other_model(spec)

    @work(exclusive=True, exit_on_error=False, group="switch")
    async def load_other_model(self: "ChatScreen", spec: str) -> None:
        """Load `spec` on the engine thread, forwarding its progress lines."""
        try:
            engine = await on_engine_thread(self._open_model, spec, lambda text: self.post_message(ModelProgress(text)))
        except Exception as error:  # shown; the chat goes on with the model it had
            self.post_message(ModelSwitchFailed(spec, one_line(error)))
            return
        self.post_message(ModelSwitched(spec, engine))

    def on_model_progress(self: "ChatScreen", message: ModelProgress) -> None:
        """Say what the load is doing."""
        self.update_status(message.text)

    def on_model_switched(self: "ChatScreen", message: ModelSwitched) -> None:
        """Go on with the new model."""
        self.switching = None
        old = self.session.engine
        self.session.use_engine(message.engine)
        self.show_mode()
        self.load_error = None
        self.add_class("-ready")
        self.keeper.mark_changed(len(self.session.conversation.exchanges))  # the chat's model
        self.keeper.autosave()
        self.update_status()
        name = message.engine.info.name
        again = " (the conversation is read again at your next message)" if self.session.conversation.exchanges else ""
        self.notify(f"Now answering with {name}{again}.", title="Model", markup=False)
        if old is not None:
            submit(old.reset)  # its KV cache goes now, the rest with the last reference

    def on_model_switch_failed(self: "ChatScreen", message: ModelSwitchFailed) -> None:
        """Say why; the chat keeps its model."""
        self.switching = None
        self.update_status()
        kept = f" The chat goes on with {self.session.engine.info.name}." if self.session.engine else ""
        self.notify(f"{message.spec}: {message.error}.{kept}", title="Model not switched", severity="error",
                    markup=False)
