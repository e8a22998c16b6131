"""The history screen: every saved chat, to open, rename or delete (after a confirmation).

It reads and writes the `ChatStore` directly (each call is a small SQLite query). It dismisses
with the id of the chat to open, or None; renames and deletes are reported through callbacks so
the chat screen can follow when they touch the chat it shows.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Static

from chatapp.chat_file import counted
from chatapp.store import ChatStore, ChatSummary, StoreError
from chatapp.tui.screens import ConfirmScreen

DATE_FORMAT = "%Y-%m-%d %H:%M"
"""How the list shows when a chat was last saved (local time)."""
TITLE_WIDTH = 50
"""Width of the title column; longer titles are cut."""
MAX_TITLE_LENGTH = 200
"""Longest title a rename keeps."""
CURRENT_MARK = "● "
"""Marks the chat on screen."""
HINT = "Enter open · r rename · d delete · Esc close · chatapp --chat ID reopens one, chatapp export ID writes it"
"""Keys, under the list."""
ID_WIDTH = 8
"""Characters of a chat's id shown: a prefix that `--chat` and `export` take."""

Renamed = Callable[[str, str], None]
"""Told (chat id, new title) after a rename."""
Deleted = Callable[[str], Awaitable[None]]
"""Told the chat id after a delete."""


def _cut(text: str, width: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


class HistoryScreen(ModalScreen[str | None]):
    """Saved chats, most recent first."""

    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("r", "rename", "Rename"),
        Binding("d,delete", "delete", "Delete"),
    ]
    """Enter (on the table) opens; these do the rest."""

    def __init__(self, store: ChatStore, current_id: str, renamed: Renamed, deleted: Deleted) -> None:
        """List `store`'s chats; `current_id` is the chat on screen."""
        super().__init__()
        self.store = store
        self.current_id = current_id
        self._renamed = renamed
        self._deleted = deleted
        self.chats: list[ChatSummary] = []

    def compose(self) -> ComposeResult:
        """The list, the rename field (hidden) and the keys."""
        with Vertical(id="history-box"):
            yield DataTable(cursor_type="row", zebra_stripes=True)
            yield Input(id="rename", placeholder="New title (Enter saves, Esc cancels)")
            yield Static(Content(HINT), classes="hint")

    def on_mount(self) -> None:
        """Fill the list."""
        self.query_one("#history-box").border_title = "Saved chats"
        self.query_one(DataTable).add_columns("Title", "Updated", "Model", "Turns", "ID")
        self.refresh_list()

    def refresh_list(self, select: str | None = None) -> None:
        """Reread the store; keep the cursor on `select` (or the current row) when it is there."""
        table = self.query_one(DataTable)
        keep = select or self.selected_id
        try:
            self.chats = self.store.list_chats()
        except StoreError as error:
            self.notify(str(error), title="History", severity="error", markup=False)
            self.chats = []
        table.clear()
        for chat in self.chats:
            mark = CURRENT_MARK if chat.id == self.current_id else ""
            table.add_row(
                Text(mark + _cut(chat.title, TITLE_WIDTH)),
                Text(chat.updated.astimezone().strftime(DATE_FORMAT)),
                Text(chat.model),
                Text(str(chat.turns), justify="right"),
                Text(chat.id[:ID_WIDTH]),
                key=chat.id,
            )
        ids = [chat.id for chat in self.chats]
        if keep in ids:
            table.move_cursor(row=ids.index(keep))
        self.query_one("#history-box").border_subtitle = counted(len(ids), "chat") if ids else "no saved chats yet"
        table.focus()

    @property
    def selected(self) -> ChatSummary | None:
        """The chat under the cursor."""
        row = self.query_one(DataTable).cursor_row
        return self.chats[row] if self.chats and 0 <= row < len(self.chats) else None

    @property
    def selected_id(self) -> str | None:
        """Its id."""
        return self.selected.id if self.selected else None

    @on(DataTable.RowSelected)
    def row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter (or a click) opens the chat."""
        event.stop()
        self.dismiss(event.row_key.value)

    def action_close(self) -> None:
        """Esc leaves a rename, or the screen."""
        box = self.query_one("#history-box")
        if box.has_class("-renaming"):
            box.remove_class("-renaming")
            self.query_one(DataTable).focus()
        else:
            self.dismiss(None)

    def action_rename(self) -> None:
        """Edit the selected chat's title."""
        if self.selected is None:
            return
        field = self.query_one("#rename", Input)
        field.value = self.selected.title
        self.query_one("#history-box").add_class("-renaming")
        field.focus()
        field.select_all()

    @on(Input.Submitted, "#rename")
    def rename_submitted(self, event: Input.Submitted) -> None:
        """Store the new title (an empty one goes back to the first message)."""
        event.stop()
        chat = self.selected
        self.query_one("#history-box").remove_class("-renaming")
        if chat is None:
            return
        title = " ".join(event.value.split())[:MAX_TITLE_LENGTH]
        try:
            self.store.rename(chat.id, title)
        except StoreError as error:
            self.notify(str(error), title="Rename", severity="error", markup=False)
            return
        self._renamed(chat.id, title)
        self.refresh_list(chat.id)

    def action_delete(self) -> None:
        """Delete the selected chat, once confirmed."""
        chat = self.selected
        if chat is None or self.query_one("#history-box").has_class("-renaming"):
            return

        async def answered(yes: bool | None) -> None:
            if not yes:
                return
            try:
                self.store.delete(chat.id)
            except StoreError as error:
                self.notify(str(error), title="Delete", severity="error", markup=False)
                return
            await self._deleted(chat.id)
            self.refresh_list()

        question = f"Delete “{_cut(chat.title, TITLE_WIDTH)}” ({counted(chat.turns, 'turn')})? This cannot be undone."
        self.app.push_screen(ConfirmScreen(question, "Delete"), answered)
