"""Keeping a chat: autosave to the history store, save failures, claims, rescue.

`ChatKeeper` holds the chat (`saved`) that a `ChatSession` has open and decides when it is
written. Whatever changes an exchange calls `mark_changed(index)`; `autosave` then writes only
the exchanges from the first changed one on (`ChatStore.save(from_exchange=...)`): a turn's
save is one exchange, a few milliseconds on the UI thread. While a reply streams, the reply is
saved at most every `AUTOSAVE_SECONDS`, so a kill loses at most about that much of it.
Saves that rewrite many exchanges (a chat just loaded from a file) run off the UI thread (the
`Background` the UI gives), on a snapshot of the conversation taken on the UI thread: the
background save never reads lists that the UI thread is appending to.

Nothing is lost silently. A chat another chatapp process has open (`chatapp.storage.open_chats`) is
not written to: what is added here goes to a copy, and the user is told. A save that fails
(disk full, a read-only history) is told once and leaves `warning()` set until a save succeeds
(the TUI shows it on the status line); if the app ends with exchanges still unsaved, the chat
is written to a rescue file (`rescue_folder()`), which `run_tui` names on the way out.

Plain Python: no Textual. The UI is reached only through the callables it gives (`tell`,
`saving_changed`, `background`).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from platformdirs import user_data_dir

from chatapp.chat.conversation import Conversation, Exchange
from chatapp.storage import open_chats
from chatapp.storage.chat_file import SavedChat, new_chat_id, save_chat_file
from chatapp.storage.store import APP_NAME, ChatStore, StoreError

AUTOSAVE_SECONDS = 1.0
"""Longest gap between saves of a reply being written: what a SIGKILL can lose at most."""
INLINE_SAVE_EXCHANGES = 8
"""Saves writing more exchanges than this run on a thread worker (each costs ~1 ms to pack)."""
COPY_SUFFIX = " (copy)"
"""Added to the title of the copy a chat open elsewhere is continued in."""


Tell = Callable[[str, str, float | None], None]
"""Shows a notice: its text, its severity ("warning" or "error") and how long (None: the default)."""
Background = Callable[[Callable[[], str | None], Callable[[str | None], None]], None]
"""Runs a save off the UI thread, then its callback with the result back on the UI thread."""


def rescue_folder() -> Path:
    """Where a chat the history could not take is written at quit: the user data folder's
    `rescued/`, or the temporary folder when that cannot be written (a full disk)."""
    return Path(user_data_dir(APP_NAME, appauthor=False)) / "rescued"


def snapshot(chat: SavedChat) -> SavedChat:
    """A copy whose lists the UI thread will not touch (the records themselves are immutable)."""
    exchanges = [
        Exchange(e.user, [replace(v, steps=list(v.steps)) for v in e.versions], e.current)
        for e in chat.conversation.exchanges
    ]
    return replace(chat, conversation=Conversation(chat.conversation.system, exchanges))


def _save(chat: SavedChat, store: ChatStore, start: int) -> str | None:
    """Write `chat` from exchange `start` on; None, or why it failed (one line)."""
    try:
        store.save(chat, from_exchange=start)
    except StoreError as error:
        return str(error)
    return None



def _run_here(save: Callable[[], str | None], done: Callable[[str | None], None]) -> None:
    done(save())


class ChatKeeper:
    """The chat a session has open, and when and where it is written."""

    def __init__(self, saved: SavedChat, store_path: Path | None = None, stored: bool = False, *,
                 tell: Tell = lambda text, severity, timeout: None,
                 saving_changed: Callable[[], None] = lambda: None,
                 background: Background = _run_here) -> None:
        """Keep `saved` in the history at `store_path` (None: the user data folder), opened by
        `open()`; `stored`: the chat is in it already (a reopened one)."""
        self.saved = saved
        """The chat: its id, title and conversation."""
        self.store: ChatStore | None = None
        """The open history, or None (not opened yet, or it could not be)."""
        self.stored = stored
        """Whether the history holds this chat (a new one is written whole at its first save)."""
        self.model: str | None = None
        """The name of the model writing the chat's replies, recorded at each save."""
        self.save_error: str | None = None
        """Why the last save failed, until one succeeds."""
        self.rescued: Path | None = None
        """The file the chat went to when the history could not take it at quit."""
        self.dirty_from: int | None = None
        """The first exchange changed since the last save, or None."""
        self._store_path = store_path
        self._last_save = time.monotonic()
        self._claim: open_chats.ChatClaim | None = None
        self._tell, self._saving_changed, self._background = tell, saving_changed, background

    def open(self) -> None:
        """Open the history; without one the chat still works, unsaved, and says so."""
        try:
            self.store = ChatStore(self._store_path)
        except StoreError as error:
            self._tell(f"{error}; this chat will not be saved", "warning", None)
            return
        if self.store.read_only:
            self._tell(f"{self.store.path} is read-only: chats open, but nothing new is saved", "warning", None)
        if self.store.found_empty:
            self._tell(f"{self.store.path} was an empty file (truncated?): earlier chats are gone, a new "
                       "history starts", "warning", 15)
        if self.stored:
            self._claim_chat()

    def close(self, settings: dict[str, Any]) -> None:
        """Save what changed, or rescue it to a file, remember the chat as the one open at quit
        (with `settings`), and close the history; safe to call twice."""
        if self.store is None:
            return
        self.autosave(background=False)
        if self.dirty_from is not None and self.save_error is not None:
            self._rescue()
        if not self.store.read_only:
            open_chats.remember_open(self.store.path, self.saved.id if self.stored else None, settings)
        self.store.close()
        self.store = None
        self._release_claim()

    def replace(self, chat: SavedChat, stored: bool) -> None:
        """Keep `chat` from now on (`stored`: the history holds it); the current one is saved first."""
        self.autosave()
        self.saved, self.stored, self.dirty_from = chat, stored, None
        if not stored:
            self.mark_changed(0)

    def start_new(self) -> None:
        """Save the current chat and keep a new, empty one with the same system prompt (not
        saved until it holds a message)."""
        self.autosave()
        self.saved = SavedChat(Conversation(system=self.saved.conversation.system))
        self.stored, self.dirty_from = False, None

    def forget(self) -> None:
        """The chat was deleted from the history: nothing of it is saved again."""
        self.stored, self.dirty_from = False, None

    def in_store(self, chat_id: str) -> bool:
        """Whether the history holds a chat with `chat_id`."""
        try:
            return self.store is not None and any(s.id == chat_id for s in self.store.list_chats())
        except StoreError:
            return False

    def warning(self) -> str:
        """What the user must know about saving: failing, or impossible; "" when saving works."""
        if self.save_error is not None:
            return "not saved: " + self.save_error.split(": ", 1)[-1]
        if self.store is not None and self.store.read_only:
            return "history read-only: not saved"
        return ""

    def _rescue(self) -> None:
        """Write the whole chat to a file of its own, where the history could not take it."""
        name = f"chat-{self.saved.id[:8]}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        for folder in (rescue_folder(), Path(tempfile.gettempdir())):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                save_chat_file(self.saved, folder / name)
            except OSError:
                continue
            self.rescued = folder / name
            return

    # -- claims --------------------------------------------------------------------------------

    def _claim_chat(self) -> None:
        """Claim the chat; one another app has open is continued as a copy instead."""
        self._release_claim()
        if self.store is None:
            return
        self._claim = open_chats.claim(self.store.path, self.saved.id)
        if self._claim is not None:
            return
        title = self.saved.display_title
        self.saved = replace(self.saved, id=new_chat_id(), title=title + COPY_SUFFIX)
        self.stored = False  # written whole at its first change: merely looking adds no copy
        self._tell(f"“{title}” is open in another chatapp: what you add here is saved as a copy, "
                   f"“{title}{COPY_SUFFIX}”.", "warning", 10)
        self._claim = open_chats.claim(self.store.path, self.saved.id)

    def _release_claim(self) -> None:
        if self._claim is not None:
            self._claim.release()
            self._claim = None

    # -- autosave ------------------------------------------------------------------------------

    def mark_changed(self, index: int) -> None:
        """Exchange `index` (and perhaps later ones) changed since the last save."""
        self.dirty_from = index if self.dirty_from is None else min(self.dirty_from, index)

    def autosave(self, background: bool = True) -> None:
        """Write the changed exchanges to the store; an empty new chat is not saved."""
        exchanges = self.saved.conversation.exchanges
        if self.store is None or self.dirty_from is None or not (exchanges or self.stored):
            return
        if not self.stored and self._claim is None:
            self._claim_chat()  # a new chat is claimed as it is first saved
        start = self.dirty_from if self.stored else 0
        self.dirty_from, self._last_save = None, time.monotonic()
        if self.model is not None:
            self.saved.model = self.model
        store = self.store
        if background and len(exchanges) - start > INLINE_SAVE_EXCHANGES:
            chat = snapshot(self.saved)
            self._background(lambda: _save(chat, store, start), lambda error: self._saved(error, start))
        else:
            self._saved(_save(self.saved, store, start), start)

    def autosave_streaming(self, index: int) -> None:
        """Save the reply being written (exchange `index`) if the last save is old enough."""
        self.mark_changed(index)
        if time.monotonic() - self._last_save >= AUTOSAVE_SECONDS:
            self.autosave()

    def rescue_save(self) -> None:
        """Save a snapshot of the whole chat through a connection of its own: safe on any thread,
        while the UI thread is busy (the exit deadline's last save)."""
        path = self.store.path if self.store is not None else None
        if path is None or not (self.saved.conversation.exchanges or self.stored):
            return
        try:
            with ChatStore(path) as store:
                store.save(snapshot(self.saved))
        except StoreError:
            self._rescue()

    def _saved(self, error: str | None, start: int) -> None:
        """After a save from exchange `start` on: it failed with `error`, or worked (None). The
        first failure is told; `warning()` stays set until a save works."""
        if error is None:
            self.stored = True
            if self.save_error is not None:
                self.save_error = None
                self._saving_changed()
            return
        self.mark_changed(start)  # still to be written: the next save starts from here again
        if self.save_error is None:
            self._tell(f"autosave failed: {error}. The chat stays on screen; if saving still fails at "
                       "quit, it is written to a rescue file.", "error", 15)
        self.save_error = error
        self._saving_changed()
