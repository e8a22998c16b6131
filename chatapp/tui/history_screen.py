"""The history screen: every saved chat, to search, open, rename or delete (after a confirmation).

The search field above the list filters it live as the user types (`ChatStore.search`: every
word, in the title or any message or reply). The list has the focus on open, so its one-letter
keys work at once; `/` goes to the field, and ↓ or Enter come back to the list. Esc cancels a
rename, then clears the search, then closes.

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

from chatapp.storage.chat_file import counted
from chatapp.storage.history_listing import DATE_FORMAT, ID_WIDTH
from chatapp.storage.store import ChatStore, ChatSummary, StoreError
from chatapp.tui.screens import ConfirmScreen

HISTORY_BOX_WIDTH = 100
"""The box's width where the terminal allows (app.tcss: `#history-box`)."""
MODEL_WIDTH = 24
"""Widest the model column gets; longer names are cut."""
FIXED_COLUMNS = 16 + 5 + 8 + 5 * 2 + 2 + 2
"""Cells of the date ("2026-12-02 16:44"), turns and id columns, the five columns' padding, the
box's border and its padding."""
MIN_TITLE_WIDTH = 16
"""Narrowest the title column gets in a small terminal."""
TITLE_WIDTH = 50
"""Width of the title column; longer titles are cut."""
MAX_TITLE_LENGTH = 200
"""Longest title a rename keeps."""
CURRENT_MARK = "● "
"""Marks the chat on screen."""
HINT = ("/ search · Enter open · r rename · d delete · Esc close (clears a search first) · "
        "chatapp --chat ID reopens one, chatapp export ID writes it")
"""Keys, under the list."""
SEARCH_PLACEHOLDER = "/ Search titles, messages and replies (↓ or Enter: the list)"
"""What the empty search field says."""
TITLES_ONLY_NOTE = " · titles only (read-only history)"
"""Added to the match count where `ChatStore.searches_text` is False."""

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
        Binding("slash", "search", "Search"),
        Binding("down", "to_list", show=False),
    ]
    """Enter (on the table) opens; these do the rest. The search field takes every printable
    key itself, so `r`, `d` and `/` act only from the list; ↓ reaches the screen from the field."""

    def __init__(self, store: ChatStore, current_id: str, renamed: Renamed, deleted: Deleted) -> None:
        """List `store`'s chats; `current_id` is the chat on screen."""
        super().__init__()
        self.store = store
        self.current_id = current_id
        self._renamed = renamed
        self._deleted = deleted
        self.chats: list[ChatSummary] = []
        """The rows listed: every chat, or those the search found."""

    def compose(self) -> ComposeResult:
        """The search field, the list, the rename field (hidden) and the keys."""
        with Vertical(id="history-box"):
            yield Input(id="search", placeholder=SEARCH_PLACEHOLDER)
            yield DataTable(cursor_type="row", zebra_stripes=True)
            yield Input(id="rename", placeholder="New title (Enter saves, Esc cancels)")
            yield Static(Content(HINT), classes="hint")

    def on_mount(self) -> None:
        """Fill the list."""
        self.query_one("#history-box").border_title = "Saved chats"
        self.query_one(DataTable).add_columns("Title", "Updated", "Model", "Turns", "ID")
        self.refresh_list()
        self.query_one(DataTable).focus()

    @property
    def words(self) -> list[str]:
        """What the search field holds, split into words (empty: no search)."""
        return self.query_one("#search", Input).value.split()

    def _column_widths(self) -> tuple[int, int]:
        """Widths of the title and model columns for the box as wide as the terminal lets it be,
        so that every column (the id included) fits down to 80 columns."""
        room = min(self.app.size.width, HISTORY_BOX_WIDTH) - FIXED_COLUMNS
        model = max(len("Model"), min(MODEL_WIDTH, room // 3))
        return max(MIN_TITLE_WIDTH, min(TITLE_WIDTH, room - model - len(CURRENT_MARK))), model

    def refresh_list(self, select: str | None = None) -> None:
        """Reread the store (the chats the search finds, when there is one); keep the cursor on
        `select` (or the current row) when it is there. The focus stays where it is."""
        table = self.query_one(DataTable)
        keep = select or self.selected_id
        words = self.words
        try:
            self.chats = self.store.search(words) if words else self.store.list_chats()
            total = self.store.count() if words else len(self.chats)
        except StoreError as error:
            self.notify(str(error), title="History", severity="error", markup=False)
            self.chats, total = [], 0
        title_width, model_width = self._column_widths()
        table.clear()
        for chat in self.chats:
            mark = CURRENT_MARK if chat.id == self.current_id else ""
            table.add_row(
                Text(mark + _cut(chat.title, title_width)),
                Text(chat.updated.astimezone().strftime(DATE_FORMAT)),
                Text(_cut(chat.model, model_width)),
                Text(str(chat.turns), justify="right"),
                Text(chat.id[:ID_WIDTH]),
                key=chat.id,
            )
        ids = [chat.id for chat in self.chats]
        if keep in ids:
            table.move_cursor(row=ids.index(keep))
        self.query_one("#history-box").border_subtitle = self._count_line(len(ids), total, bool(words))

    def _count_line(self, shown: int, total: int, searching: bool) -> str:
        """ "3 of 40 chats" while searching, "40 chats" otherwise."""
        if not searching:
            return counted(total, "chat") if total else "no saved chats yet"
        return f"{shown} of {counted(total, 'chat')}" + ("" if self.store.searches_text else TITLES_ONLY_NOTE)

    @on(Input.Changed, "#search")
    def search_changed(self, event: Input.Changed) -> None:
        """Filter the list as the user types."""
        event.stop()
        self.refresh_list()

    @on(Input.Submitted, "#search")
    def search_submitted(self, event: Input.Submitted) -> None:
        """Enter in the search field goes to the list (a second Enter opens the chat)."""
        event.stop()
        self.query_one(DataTable).focus()

    def action_search(self) -> None:
        """`/`: type a search."""
        if not self.query_one("#history-box").has_class("-renaming"):
            self.query_one("#search", Input).focus()

    def action_to_list(self) -> None:
        """↓ in the search field goes to the list."""
        if self.focused is self.query_one("#search", Input):
            self.query_one(DataTable).focus()

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
        """Esc leaves a rename, else clears the search (back to the list), else leaves the screen."""
        box = self.query_one("#history-box")
        search = self.query_one("#search", Input)
        if box.has_class("-renaming"):
            box.remove_class("-renaming")
            self.query_one(DataTable).focus()
        elif search.value:
            search.value = ""  # Input.Changed refreshes the list, keeping the cursor's chat
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
        self.query_one(DataTable).focus()
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
