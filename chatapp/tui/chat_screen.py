"""The chat screen: shows a `ChatSession` and turns its events and the user's keys into updates.

The session (`chatapp.session.chat_session`, no Textual) owns the chat, its settings, the engine
and the reply being written; the screen asks it to start, stop or end a reply and updates the
widgets that view the plain conversation (`chatapp.chat.conversation`). The model never runs on
the UI thread, and nothing of the screen runs on the engine thread (`chatapp.engine.thread`):
loading and `ChatSession.run` run there, waited on by Textual workers, and report only through
the small messages of `chatapp.tui.messages`. The screen's parts: the reply's views in
`chatapp.tui.replies`, completion mode in `chatapp.tui.completion_mode`, the actions in
`chatapp.tui.actions`, saving the chat in
`chatapp.tui.persistence`, switching chats and chat files in `chatapp.tui.chat_files`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.worker import get_current_worker

from chatapp.chat import commands
from chatapp.chat.conversation import Conversation, Exchange, ReplyVersion
from chatapp.chat.records import Step
from chatapp.chat.settings import SamplingSettings
from chatapp.engine.thread import on_engine_thread
from chatapp.session.chat_session import ChatSession
from chatapp.session.reply_stream import one_line
from chatapp.storage.chat_file import SavedChat
from chatapp.tui.actions import ConversationActions
from chatapp.tui.chat_files import ChatSwitching
from chatapp.tui.completion_mode import PROMPT_PLACEHOLDER, CompletionMode
from chatapp.tui.inspector import InspectorPanel, StepAnswer
from chatapp.tui.messages import EngineLoaded, LoadFailed, LoadProgress
from chatapp.tui.model_switch import DEFAULT_MODEL_FOLDERS, ModelOpener, ModelSwitching
from chatapp.tui.persistence import ChatKeeping
from chatapp.tui.replies import ReplyStreaming
from chatapp.tui.status_line import status_data
from chatapp.tui.step_picking import StepPicking
from chatapp.tui.widgets.chat_log import ChatLog
from chatapp.tui.widgets.heat_legend import HeatLegend
from chatapp.tui.widgets.key_bar import KeyBar
from chatapp.tui.widgets.loading_panel import LoadingPanel
from chatapp.tui.widgets.prompt_input import PromptInput
from chatapp.tui.widgets.status_bar import StatusBar
from chatapp.tui.widgets.topk_panel import TopKPanel

EngineLoader = Callable[[Callable[[str], None]], object]
"""Builds the engine, reporting progress lines; runs on the engine thread."""


class ChatScreen(ChatKeeping, ChatSwitching, CompletionMode, ConversationActions, InspectorPanel, ModelSwitching, ReplyStreaming,
                 StepPicking, Screen):
    """Conversation, candidates panel, prompt, status line and footer."""

    BINDINGS = [
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+r", "regenerate", "Regenerate"),
        Binding("ctrl+l", "edit_last", "Edit"),
        Binding("ctrl+n", "new_chat", "New chat"),
        Binding("ctrl+t", "inspect", "Inspect"),
        Binding("ctrl+o", "heatmap", "Heatmap"),
        Binding("f1", "help", "Help"),
        Binding("f2", "history", "History"),  # not Ctrl+H: some terminals send it for Backspace
        Binding("f3", "toggle_panel", "Panel"),
        Binding("f4", "copy_reply", "Copy", show=False),  # Ctrl+Y is the prompt's redo
        Binding("f5", "step_mode", "Step mode", show=False),
    ]
    """Chat keys (the inspector's own keys live on `ChatLog`)."""

    def __init__(self, settings: SamplingSettings, load_engine: EngineLoader, top_n: int, *,
                 store_path: Path | None = None, chat: SavedChat | None = None, system: str | None = None,
                 open_model: ModelOpener | None = None,
                 model_folders: tuple[str, ...] = DEFAULT_MODEL_FOLDERS, follow_model_at_start: bool = True) -> None:
        """A chat that will load its engine with `load_engine` once mounted.

        `chat` is a reopened chat to show (else a new one starts, with `system` as its system
        prompt); `store_path` is the history database (None: the user data folder);
        `open_model` loads another model for `/model` (None: the app cannot switch), and the
        picker looks for models under `model_folders`. A reopened `chat` goes on with the model
        that wrote its latest reply, switched to once the first model is loaded, unless
        `follow_model_at_start` is off (`--model` given).
        """
        super().__init__()
        keeper = self.make_keeper(chat or SavedChat(Conversation(system=system)), store_path, stored=chat is not None)
        self.session = ChatSession(settings, keeper)
        """The chat, its settings, its engine and the reply being written (no Textual)."""
        self.session.pacing.ui_says_drawn = True  # each batch drawn, `ReplyStreaming._show_steps` says so
        self.top_n = top_n
        self.edit_index: int | None = None
        """The exchange whose user message the prompt holds for editing, or None."""
        self._load_engine = load_engine
        self._open_model = open_model
        self.model_folders = model_folders
        """Where the model picker looks for `.gguf` files and model folders."""
        self.follow_model_at_start = follow_model_at_start
        """Whether the chat reopened at start switches to the model that wrote it."""
        self.switching: str | None = None
        self.step_mode = False
        """Whether the next replies are written in step mode (F5): the user picks each token."""
        self.proposal: Step | None = None
        """The step-mode proposal waiting for the user's pick, if any."""
        self.step_answer: StepAnswer | None = None
        """The answer to the last question asked in the inspector (W, S or L), with its step."""
        self._update_cpu_at: float | None = None
        self._waiting: Exchange | None = None
        """A message sent while the model was loading; its reply starts once the model is ready."""
        self.panel_shown = True
        """Whether the candidates panel is shown (F3 toggles it)."""
        self.load_error: str | None = None
        """Why the model could not be loaded, once that is known (messages are then refused)."""

    # Read-only views of the session, for the app, the bench and the tests.
    conversation = property(lambda self: self.session.conversation, doc="The conversation on screen.")
    generating = property(lambda self: self.session.generating, doc="True while a reply is being written.")
    engine = property(lambda self: self.session.engine, doc="The loaded engine, or None.")
    saved = property(lambda self: self.session.saved, doc="The chat on screen.")
    settings = property(lambda self: self.session.settings, doc="The settings of the next reply.")

    def compose(self) -> ComposeResult:
        """Conversation beside the panel; prompt, status and footer below."""
        with Horizontal(id="main"):
            with Vertical(id="conversation"):
                yield LoadingPanel()
                yield HeatLegend()
                yield ChatLog()
            yield TopKPanel()
        yield PromptInput(placeholder=PROMPT_PLACEHOLDER)
        yield StatusBar()
        yield KeyBar()

    async def on_mount(self) -> None:
        """Open the history and show a reopened chat; the prompt is usable right away."""
        self.query_one(TopKPanel).border_title = "Candidates"
        self.session.pacing.ui_thread = threading.get_native_id()  # this thread draws the batches
        self.keeper.open()
        await self.query_one(ChatLog).show_exchanges(self.session.conversation.exchanges)
        self.query_one(PromptInput).focus()
        self.update_status("loading…")  # `ChatApp.on_ready` starts loading after the first frame

    def place_panel(self) -> None:
        """Show the candidates panel as F3 left it; the inspector always shows it, as it is the
        inspector's view of a step."""
        inspecting = self.query_one(ChatLog).cursor is not None
        self.query_one(TopKPanel).display = inspecting or self.panel_shown

    def on_unmount(self) -> None:
        """Last save, whichever way the app ends."""
        self.close_store()

    # -- loading -------------------------------------------------------------------------------

    @work(exclusive=True, exit_on_error=False, group="load")
    async def load(self) -> None:
        """Build the engine on the engine thread, forwarding progress lines."""
        worker = get_current_worker()
        try:
            engine = await on_engine_thread(self._load_engine, lambda text: self.post_message(LoadProgress(text)))
        except Exception as error:  # a load failure is shown, never raised into the UI
            self.post_message(LoadFailed(one_line(error)))
            return
        if not worker.is_cancelled:
            self.post_message(EngineLoaded(engine))

    @on(LoadProgress)
    def load_progress(self, message: LoadProgress) -> None:
        """Show what loading is doing."""
        self.query_one(LoadingPanel).add_line(message.text)
        self.update_status(message.text)

    @on(EngineLoaded)
    async def engine_loaded(self, message: EngineLoaded) -> None:
        """Swap the loading panel for the conversation."""
        self.session.use_engine(message.engine)
        self.show_mode()
        self.query_one(LoadingPanel).remove()
        self.add_class("-ready")
        self.remove_class("-waiting")
        self.update_status()
        self.follow_chat_model(at_start=True)
        if self._still_waiting():
            await self.start_reply(len(self.session.conversation.exchanges) - 1,
                                   ReplyVersion(settings=self.session.settings))
        self._waiting = None

    def _still_waiting(self) -> bool:
        """Whether a message sent while loading is still the chat's last, unanswered message
        (a new chat or a reopened one leaves it behind)."""
        exchanges = self.session.conversation.exchanges
        return self._waiting is not None and bool(exchanges) and exchanges[-1] is self._waiting \
            and not self._waiting.versions

    @on(LoadFailed)
    async def load_failed(self, message: LoadFailed) -> None:
        """Say why the model could not be loaded; a message waiting for it goes back to the
        prompt (nothing is lost, and no chat is saved that nobody can answer)."""
        self.load_error = message.error
        self.query_one(LoadingPanel).fail(message.error)
        if self._still_waiting():
            self.session.conversation.exchanges.pop()
            self.keeper.mark_changed(len(self.session.conversation.exchanges))
            await self.query_one(ChatLog).show_exchanges(self.session.conversation.exchanges)
            prompt = self.query_one(PromptInput)
            prompt.set_prompt("\n".join(filter(None, [self._waiting.user, prompt.text])))
        self._waiting = None
        self.remove_class("-waiting")
        self.update_status("model failed to load")
        self.notify(message.error, title="Model not loaded", severity="error", markup=False)

    def update_status(self, activity: str | None = None) -> None:
        """Refresh the status line from the session (`activity`: what to say instead of what
        the reply is doing), and the prompt's cursor, steady while a reply is written."""
        self.query_one(PromptInput).show_writing(self.session.generating)
        self.query_one(StatusBar).data = status_data(self.session, activity, self.switching)

    # -- sending and commands ------------------------------------------------------------------

    @on(PromptInput.Submitted)
    async def submitted(self, event: PromptInput.Submitted) -> None:
        """Run a slash command or send a message."""
        prompt = self.query_one(PromptInput)
        text = event.text.strip()
        if not text:
            if not event.text and self._can_continue():
                await self.send("")  # completion mode: Enter alone lets the model write on
            return
        if commands.is_command(text):
            await self.run_command(text, event.text)
            return
        if self.session.engine is None and self.load_error is not None:
            self.notify(f"The model could not be loaded, so nothing can answer; your message stays in the "
                        f"prompt. Restart chatapp with another --model. ({self.load_error})",
                        title="Model not loaded", severity="error", markup=False)
            return
        if self.session.engine is None:
            if self.editing and self._editing_answered():
                self.notify("The model is still loading: send the edit once it is ready.", severity="warning")
                return
            if self._still_waiting() and not self.editing:
                self.notify("A message is already waiting for the model; yours is kept.", severity="warning")
                return
            prompt.take(event.text)
            self._waiting = await self.put_user_message(commands.message_text(text))
            self.add_class("-waiting")
            self.update_status("loading… your message goes as soon as the model is ready")
            return
        if self.session.generating:
            self.notify("A reply is being written: wait, or press Esc to stop it.", severity="warning")
            return
        if self.switching:
            self.notify(f"{self.switching} is loading: send once it is ready (your message stays).",
                        severity="warning", markup=False)
            return
        prompt.take(event.text)
        # Plain text is continued exactly as typed: a leading space or a trailing newline counts.
        await self.send(commands.message_text(event.text if self.completion else text))

    def _can_continue(self) -> bool:
        """Whether an empty Enter continues the text: in completion mode, once the model has
        written, while nothing else is going on."""
        exchanges = self.session.conversation.exchanges
        return (self.completion and not self.session.generating and not self.switching and not self.editing
                and bool(exchanges) and bool(exchanges[-1].versions))

    @property
    def editing(self) -> bool:
        """Whether the prompt holds a user message being edited (`edit_index`)."""
        return self.edit_index is not None

    async def send(self, text: str) -> None:
        """Add the user's message and generate the reply. An edit of a message, once answered,
        becomes a new version of its exchange, a branch there: the old message, its replies
        and what followed stay (‹ › switches between them)."""
        if self.editing and self._editing_answered():
            index, self.edit_index = self.edit_index, None
            self.query_one(ChatLog).user_view(index).set_text(text)
            await self.start_reply(index, ReplyVersion(settings=self.session.settings, user=text))
            return
        await self.put_user_message(text)
        await self.start_reply(len(self.session.conversation.exchanges) - 1, ReplyVersion(settings=self.session.settings))

    def _editing_answered(self) -> bool:
        """Whether the message being edited has a reply (so the edit must not replace it)."""
        exchanges = self.session.conversation.exchanges
        return self.edit_index is not None and self.edit_index < len(exchanges) \
            and bool(exchanges[self.edit_index].versions)

    async def put_user_message(self, text: str) -> Exchange:
        """Add the user's message, or when editing a message still waiting for the model (no
        reply to lose), change it."""
        index, self.edit_index = self.edit_index, None
        exchanges = self.session.conversation.exchanges
        if index is None or index >= len(exchanges) or exchanges[index].versions:
            return await self.add_user_message(text)
        exchange = exchanges[index]
        exchange.user = text
        self.query_one(ChatLog).user_view(index).set_text(text)
        self.keeper.mark_changed(index)
        return exchange

    async def add_user_message(self, text: str) -> Exchange:
        """Append a new exchange holding the user's `text` (no reply yet) and show it."""
        exchange = Exchange(text)
        self.session.conversation.exchanges.append(exchange)
        index = len(self.session.conversation.exchanges) - 1
        await self.query_one(ChatLog).add_exchange(exchange, index)
        self.keeper.mark_changed(index)
        return exchange

    async def run_command(self, text: str, submitted: str) -> None:
        """Apply a slash command, or show its one-line error (the prompt keeps the text, selected).

        `submitted` is the prompt text that carried it, taken out of the prompt once it applies.
        """
        try:
            command = commands.parse_command(text, self.session.settings)
            if isinstance(command, commands.SetSystem) and command.text and self.completion:
                raise commands.CommandError("completion mode continues plain text, which has no system prompt")
        except commands.CommandError as error:
            self.notify(str(error), title="Command", severity="error", markup=False)
            self.query_one(PromptInput).select_all()  # kept to mend, and replaced by whatever is typed next
            return
        self.query_one(PromptInput).take(submitted)
        if isinstance(command, commands.ApplySettings):
            self.session.change_settings(command.settings)
            self.notify(command.summary, title="Settings", markup=False)
            self.update_status()
        elif isinstance(command, commands.SetSystem):
            self.session.conversation.system = command.text
            self.keeper.mark_changed(len(self.session.conversation.exchanges))
            self.keeper.autosave()
            self.update_status()
            self.notify("System prompt set: the model reads it before the whole conversation from the next "
                        "message on." if command.text else "System prompt cleared.", markup=False)
        elif isinstance(command, commands.ClearChat):
            await self.action_new_chat()
        elif isinstance(command, commands.SwitchModel):
            self.choose_model() if command.spec is None else self.switch_model(command.spec)
        else:
            await self.run_keeping_command(command)

    # -- the candidates panel ------------------------------------------------------------------

    @on(TopKPanel.RowClicked)
    def panel_row_clicked(self, message: TopKPanel.RowClicked) -> None:
        """A click on a candidate takes it in step mode, else picks it for branching (inspector only)."""
        if self.proposal is not None:
            self.take_row(message.row)
        else:
            self.query_one(ChatLog).pick_row(message.row)
