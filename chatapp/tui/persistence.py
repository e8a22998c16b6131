"""Keeping the chat on screen: autosave to the history store, save failures, claims, rescue.

A mixin of `ChatScreen` (switching chats and chat files are `chatapp.tui.chat_files`'). The
screen holds one `SavedChat` whose conversation is the one on screen. Whatever changes an exchange calls `mark_changed(index)`; `autosave` then writes only
the exchanges from the first changed one on (`ChatStore.save(from_exchange=...)`): a turn's
save is one exchange, a few milliseconds on the UI thread. While a reply streams, the reply is
saved at most every `AUTOSAVE_SECONDS`, so a kill loses at most about that much of it.
Saves that rewrite many exchanges (a chat just loaded from a file) go to a thread worker, on a
snapshot of the conversation taken on the UI thread: the worker never reads lists that the
UI thread is appending to.

Nothing is lost silently. A chat another chatapp process has open (`chatapp.storage.open_chats`) is
not written to: what is added here goes to a copy, and the user is told. A save that fails
(disk full, a read-only history) leaves a warning on the status line until a save succeeds;
if the app ends with exchanges still unsaved, the chat is written to a rescue file
(`rescue_folder()`), which `run_tui` names on the way out.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from platformdirs import user_data_dir
from textual import work
from textual.css.query import NoMatches

from chatapp.chat.conversation import Conversation, Exchange
from chatapp.storage import open_chats
from chatapp.storage.chat_file import SavedChat, new_chat_id, save_chat_file
from chatapp.storage.store import APP_NAME, ChatStore, StoreError

if TYPE_CHECKING:
    from chatapp.tui.chat_screen import ChatScreen

AUTOSAVE_SECONDS = 1.0
"""Longest gap between saves of a reply being written: what a SIGKILL can lose at most."""
INLINE_SAVE_EXCHANGES = 8
"""Saves writing more exchanges than this run on a thread worker (each costs ~1 ms to pack)."""
COPY_SUFFIX = " (copy)"
"""Added to the title of the copy a chat open elsewhere is continued in."""


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


class ChatKeeping:
    """Autosave, save failures, claims and the rescue file, mixed into `ChatScreen`."""

    def init_keeping(self: "ChatScreen", store_path: Path | None, stored: bool) -> None:
        """Keep the session's chat in the history at `store_path` (opened on mount); `stored`:
        the chat is in it already (a reopened one)."""
        self.store: ChatStore | None = None
        self._store_path = store_path
        self._stored = stored
        self._dirty_from: int | None = None
        self._last_save = time.monotonic()
        self._claim: open_chats.ChatClaim | None = None
        self.save_error: str | None = None
        """Why the last save failed, until one succeeds (the status line shows it)."""
        self.rescued: Path | None = None
        """The file the chat went to when the history could not take it at quit."""

    def open_store(self: "ChatScreen") -> None:
        """Open the history; without one the app still works, unsaved, and says so."""
        try:
            self.store = ChatStore(self._store_path)
        except StoreError as error:
            self.notify(f"{error}; this chat will not be saved", title="History", severity="warning",
                        markup=False)
            return
        if self.store.read_only:
            self.notify(f"{self.store.path} is read-only: chats open, but nothing new is saved",
                        title="History", severity="warning", markup=False)
        if self.store.found_empty:
            self.notify(f"{self.store.path} was an empty file (truncated?): earlier chats are gone, a new "
                        "history starts", title="History", severity="warning", timeout=15, markup=False)
        if self._stored:
            self._claim_chat()

    def close_store(self: "ChatScreen") -> None:
        """Save what changed, or rescue it to a file, and close the history (quit, signals);
        safe to call twice."""
        if self.store is None:
            return
        self.session.stop()
        self.autosave(background=False)
        if self._dirty_from is not None and self.save_error is not None:
            self._rescue()
        if not self.store.read_only:
            open_chats.remember_open(self.store.path, self.session.saved.id if self._stored else None,
                                     asdict(self.session.settings))
        self.store.close()
        self.store = None
        self._release_claim()

    def _rescue(self: "ChatScreen") -> None:
        """Write the whole chat to a file of its own, where the history could not take it."""
        name = f"chat-{self.session.saved.id[:8]}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        for folder in (rescue_folder(), Path(tempfile.gettempdir())):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                save_chat_file(self.session.saved, folder / name)
            except OSError:
                continue
            self.rescued = folder / name
            return

    def keeping_warning(self: "ChatScreen") -> str:
        """What the status line must say about saving: failing, or impossible; "" when saving works."""
        if self.save_error is not None:
            return "not saved: " + self.save_error.split(": ", 1)[-1]
        if self.store is not None and self.store.read_only:
            return "history read-only: not saved"
        return ""

    # -- claims --------------------------------------------------------------------------------

    def _claim_chat(self: "ChatScreen") -> None:
        """Claim the chat on screen; one another app has open is continued as a copy instead."""
        self._release_claim()
        if self.store is None:
            return
        self._claim = open_chats.claim(self.store.path, self.session.saved.id)
        if self._claim is not None:
            return
        title = self.session.saved.display_title
        self.session.saved = replace(self.session.saved, id=new_chat_id(), title=title + COPY_SUFFIX)
        self._stored = False  # written whole at its first change: merely looking adds no copy
        self.notify(f"“{title}” is open in another chatapp: what you add here is saved as a copy, "
                    f"“{title}{COPY_SUFFIX}”.", title="History", severity="warning", timeout=10, markup=False)
        self._claim = open_chats.claim(self.store.path, self.session.saved.id)

    def _release_claim(self: "ChatScreen") -> None:
        if self._claim is not None:
            self._claim.release()
            self._claim = None

    # -- autosave ------------------------------------------------------------------------------

    def mark_changed(self: "ChatScreen", index: int) -> None:
        """Exchange `index` (and perhaps later ones) changed since the last save."""
        self._dirty_from = index if self._dirty_from is None else min(self._dirty_from, index)

    def autosave(self: "ChatScreen", background: bool = True) -> None:
        """Write the changed exchanges to the store; an empty new chat is not saved."""
        exchanges = self.session.conversation.exchanges
        if self.store is None or self._dirty_from is None or not (exchanges or self._stored):
            return
        if not self._stored and self._claim is None:
            self._claim_chat()  # a new chat is claimed as it is first saved
        start = self._dirty_from if self._stored else 0
        self._dirty_from, self._last_save = None, time.monotonic()
        if self.session.engine is not None:
            self.session.saved.model = self.session.engine.info.name
        if background and len(exchanges) - start > INLINE_SAVE_EXCHANGES:
            self.save_in_background(snapshot(self.session.saved), self.store, start)
        else:
            self._saved(_save(self.session.saved, self.store, start), start)

    def autosave_streaming(self: "ChatScreen", index: int) -> None:
        """Save the reply being written (exchange `index`) if the last save is old enough."""
        self.mark_changed(index)
        if time.monotonic() - self._last_save >= AUTOSAVE_SECONDS:
            self.autosave()

    def rescue_save(self: "ChatScreen") -> None:
        """Save a snapshot of the whole chat through a connection of its own: safe on any thread,
        while the UI thread is busy (the exit deadline's last save)."""
        path = self.store.path if self.store is not None else None
        if path is None or not (self.session.conversation.exchanges or self._stored):
            return
        try:
            with ChatStore(path) as store:
                store.save(snapshot(self.session.saved))
        except StoreError:
            self._rescue()

    def _saved(self: "ChatScreen", error: str | None, start: int) -> None:
        """After a save from exchange `start` on: it failed with `error`, or worked (None). The
        first failure is a notification; the status line keeps a warning until a save works."""
        if error is None:
            self._stored = True
            if self.save_error is not None:
                self.save_error = None
                self._show_keeping()
            return
        self.mark_changed(start)  # still to be written: the next save starts from here again
        if self.save_error is None:
            self.notify(f"autosave failed: {error}. The chat stays on screen; if saving still fails at "
                        "quit, it is written to a rescue file.", title="History", severity="error",
                        timeout=15, markup=False)
        self.save_error = error
        self._show_keeping()

    def _show_keeping(self: "ChatScreen") -> None:
        """Refresh the status line's saving warning, unless the screen is already gone (the
        last save runs as the app ends)."""
        with contextlib.suppress(NoMatches):
            self.update_status()

    @work(thread=True, exit_on_error=False, group="save")
    def save_in_background(self: "ChatScreen", chat: SavedChat, store: ChatStore, start: int) -> None:
        """Write a large save off the UI thread (`chat` is a snapshot)."""
        error = _save(chat, store, start)
        self.app.call_from_thread(self._saved, error, start)
