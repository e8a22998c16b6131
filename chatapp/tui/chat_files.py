"""Switching chats and chat files: the history screen, /save, /load, /export.

A mixin of `ChatScreen`, beside `chatapp.tui.persistence` (which saves the chat on screen):
opening another chat saves the current one first and resets the engine's cache; a file that is
not a chat changes nothing.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from chatapp.chat import commands
from chatapp.chat.export_format import ExportError
from chatapp.session.reply_stream import one_line
from chatapp.storage.chat_file import ChatFileError, SavedChat, counted, load_chat_file, save_chat_file
from chatapp.storage.export import export_chat
from chatapp.storage.store import StoreError
from chatapp.support.bounded_read import FileRefused, read_text_file
from chatapp.tui.history_screen import HistoryScreen
from chatapp.tui.screens import HelpScreen
from chatapp.tui.widgets.chat_log import ChatLog
from chatapp.tui.widgets.prompt_input import PromptInput
from chatapp.tui.widgets.topk_panel import TopKPanel

if TYPE_CHECKING:
    from chatapp.tui.chat_screen import ChatScreen

BUSY_OPEN_MESSAGE = "A reply is being written: stop it (Esc) before opening another chat."
"""Shown when a chat is opened mid-reply."""


class ChatSwitching:
    """Open, switch, load and write chats, mixed into `ChatScreen`."""

    # -- switching chats -----------------------------------------------------------------------

    async def show_chat(self: "ChatScreen", chat: SavedChat, stored: bool) -> bool:
        """Save the current chat and show `chat` instead; False (and a message) mid-reply.

        The engine's cache holds the old conversation, so it is reset; it rebuilds the cache
        from the messages on the next turn.
        """
        if self.session.generating:
            self.notify(BUSY_OPEN_MESSAGE, severity="warning")
            return False
        self.session.open_chat(chat, stored)
        self.edit_index = None
        await self.query_one(ChatLog).show_exchanges(chat.conversation.exchanges)
        self.query_one(TopKPanel).view = None
        self.query_one(PromptInput).focus()
        if self.session.engine is not None:
            self.reset_engine()
        self.update_status()
        self.keeper.autosave()
        return True

    async def open_saved(self: "ChatScreen", chat_id: str) -> None:
        """Open a chat from the history."""
        if chat_id == self.session.saved.id or self.keeper.store is None:
            return
        if self.session.generating:
            self.notify(BUSY_OPEN_MESSAGE, severity="warning")
            return
        try:
            chat = self.keeper.store.load(chat_id)
        except StoreError as error:
            self.notify(str(error), title="History", severity="error", markup=False)
            return
        own = chat.going_on_with()  # the chat goes on as it was left
        if await self.show_chat(chat, stored=True):
            self.notify(f"Opened “{chat.display_title}”" + (f" ({own.describe()})." if own else "."), markup=False)
            self.follow_chat_model()

    def action_history(self: "ChatScreen") -> None:
        """Show the saved chats (open, rename, delete)."""
        if self.keeper.store is None:
            self.notify("No chat history: it could not be opened.", severity="warning")
            return
        self.keeper.autosave()
        history = HistoryScreen(self.keeper.store, self.session.saved.id, self._renamed, self._deleted)

        async def chosen(chat_id: str | None) -> None:
            if chat_id is not None:
                await self.open_saved(chat_id)

        self.app.push_screen(history, chosen)

    def _renamed(self: "ChatScreen", chat_id: str, title: str) -> None:
        if chat_id == self.session.saved.id:
            self.session.saved.title = title

    async def _deleted(self: "ChatScreen", chat_id: str) -> None:
        """The open chat was deleted: show a new, empty one (not saved again)."""
        if chat_id == self.session.saved.id:
            self.keeper.forget()
            await self.action_new_chat()

    # -- commands ------------------------------------------------------------------------------

    async def run_keeping_command(self: "ChatScreen", command: commands.Command) -> None:
        """Apply /help, /history, /save, /load or /export."""
        if isinstance(command, commands.ShowHelp):
            self.app.push_screen(HelpScreen())
        elif isinstance(command, commands.ShowHistory):
            self.action_history()
        elif isinstance(command, commands.SaveChat):
            self._write_file(command.path, save_chat_file, "Saved", "Not saved")
        elif isinstance(command, commands.ExportChat):
            self._write_file(command.path, export_chat, "Exported", "Not exported")
        elif isinstance(command, commands.LoadChat):
            await self.load_file(command.path)
        elif isinstance(command, commands.AttachFile):
            await self.attach_file(command.path)

    def _write_file(self: "ChatScreen", path: str, write, done: str, failed: str) -> None:
        """Write the chat to `path` with `write`; the notification says `done` or `failed`."""
        if self.session.engine is not None:
            self.session.saved.model = self.session.engine.info.name
        target = Path(path).expanduser()
        try:
            write(self.session.saved, target)
        except (OSError, ExportError) as error:
            self.notify(f"{target}: {one_line(error)}", title=failed, severity="error", markup=False)
            return
        self.notify(f"{done} to {target}", markup=False)

    async def load_file(self: "ChatScreen", path: str) -> None:
        """Show the chat in a file written by /save; a bad file changes nothing."""
        if self.session.generating:
            self.notify(BUSY_OPEN_MESSAGE, severity="warning")
            return
        try:
            chat = load_chat_file(Path(path).expanduser())
        except ChatFileError as error:
            self.notify(one_line(error), title="Load", severity="error", markup=False)
            return
        if self.keeper.in_store(chat.id):
            # A copy of a chat the history holds: keep both rather than overwrite the newer one.
            chat = replace(chat, id=SavedChat(chat.conversation).id)
        if await self.show_chat(chat, stored=False):
            self.notify(f"Loaded “{chat.display_title}” ({counted(chat.turns, 'message')}).", markup=False)
            self.follow_chat_model()

    async def attach_file(self: "ChatScreen", path: str) -> None:
        """Send the text of the file at `path` as a message; a file that is not text, too large,
        or a moment when nothing can answer, is refused in one line (the file is still there)."""
        target = Path(path).expanduser()
        if self.session.engine is None or self.session.generating:
            busy = "the model is not ready" if self.session.engine is None else "a reply is being written"
            self.notify(f"{busy}: /file {path} again once it is done", title="Not sent", severity="warning",
                        markup=False)
            return
        try:
            text = read_text_file(target)
        except FileRefused as error:
            self.notify(f"{target}: {error}", title="Not sent", severity="error", markup=False)
            return
        await self.send(text)
