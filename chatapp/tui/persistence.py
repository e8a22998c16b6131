"""The chat screen's side of keeping a chat: what the `ChatKeeper` tells, and its large saves.

A mixin of `ChatScreen`. The keeping itself (autosave, claims, failures, the rescue file) is
`chatapp.session.chat_keeper`'s, plain Python; the screen gives it three callables: notices
become notifications, a change in what saving can do refreshes the status line, and a save of
many exchanges runs on a thread worker, its result handed back on the UI thread.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from textual import work
from textual.css.query import NoMatches

from chatapp.session.chat_keeper import ChatKeeper
from chatapp.storage.chat_file import SavedChat

if TYPE_CHECKING:
    from chatapp.tui.chat_screen import ChatScreen


class ChatKeeping:
    """The keeper's notices, status refreshes and background saves, mixed into `ChatScreen`."""

    def make_keeper(self: "ChatScreen", chat: SavedChat, store_path: Path | None, stored: bool) -> ChatKeeper:
        """A keeper of `chat` in the history at `store_path` that reports to this screen."""
        return ChatKeeper(chat, store_path, stored, tell=self._tell_keeping, saving_changed=self._show_keeping,
                          background=self.save_in_background)

    @property
    def keeper(self: "ChatScreen") -> ChatKeeper:
        """The session's keeper of the chat on screen."""
        return self.session.keeper

    def close_store(self: "ChatScreen") -> None:
        """Stop the reply, save what changed (or rescue it) and close the history (quit,
        signals); safe to call twice."""
        self.session.stop()
        self.keeper.close(asdict(self.session.settings))

    def _tell_keeping(self: "ChatScreen", text: str, severity: str, timeout: float | None) -> None:
        self.notify(text, title="History", severity=severity, timeout=timeout, markup=False)

    def _show_keeping(self: "ChatScreen") -> None:
        """Refresh the status line's saving warning, unless the screen is already gone (the
        last save runs as the app ends)."""
        with contextlib.suppress(NoMatches):
            self.update_status()

    @work(thread=True, exit_on_error=False, group="save")
    def save_in_background(self: "ChatScreen", save: Callable[[], str | None],
                           done: Callable[[str | None], None]) -> None:
        """Run a large save off the UI thread (on a snapshot), then `done` with its result on it."""
        result = save()
        self.app.call_from_thread(done, result)
