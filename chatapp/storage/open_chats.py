"""Which chats are open: a claim on each chat an app has open, and the chat open at the last quit.

Claims keep two chatapp processes from writing the same chat (the last writer used to win,
silently). A claim is an advisory lock (`flock`) on a small file beside the history database,
one per chat id: the system releases it when its process ends, however it ends, so a crash
never leaves a chat locked. A second process that opens a chat claimed by another is told so
and writes to a copy. Where `fcntl` is missing (Windows) every claim is granted.

The last-open record (`last-open.json`) names the chat on screen when the app last quit, with
its sampling settings, so `chatapp --resume` reopens that chat as it was, not merely the most
recently saved one.

Pure Python: no torch, no Textual.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from chatapp.support.atomic_file import atomic_write

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here
    fcntl = None

CLAIMS_FOLDER = "open-chats"
"""Folder beside the database holding one lock file per claimed chat."""
LAST_OPEN_FILE = "last-open.json"
"""File beside the database naming the chat open at the last quit."""


class ChatClaim:
    """This process's claim on one chat, held until `release` or the process ends."""

    def __init__(self, chat_id: str, handle: int | None) -> None:
        """A claim on `chat_id` holding the locked file descriptor `handle` (None: no locks here)."""
        self.chat_id = chat_id
        """The claimed chat."""
        self._handle = handle

    def release(self) -> None:
        """Give the chat up (safe to call twice)."""
        if self._handle is not None:
            os.close(self._handle)  # closing the descriptor drops its lock
            self._handle = None


def claim(store_path: Path, chat_id: str) -> ChatClaim | None:
    """Claim `chat_id` of the history at `store_path`; None when another claim holds it (another
    chatapp process, or another app in this one). A history whose folder cannot be written (a
    read-only history) grants every claim: nothing will be written to it anyway."""
    if fcntl is None:
        return ChatClaim(chat_id, None)
    folder = store_path.parent / CLAIMS_FOLDER
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = os.open(folder / f"{chat_id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return ChatClaim(chat_id, None)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(handle)
        return None
    return ChatClaim(chat_id, handle)


def remember_open(store_path: Path, chat_id: str | None, settings: dict[str, Any]) -> None:
    """Record `chat_id` (None: a new chat nobody saved) and `settings` as what was open at quit;
    a failure to write only costs `--resume` its precision."""
    record = json.dumps({"chat_id": chat_id, "settings": settings}).encode()
    with contextlib.suppress(OSError):
        atomic_write(store_path.parent / LAST_OPEN_FILE, record)


def last_open(store_path: Path) -> tuple[str, dict[str, Any]] | None:
    """The chat id and settings `remember_open` recorded, or None (none recorded, unreadable)."""
    try:
        record = json.loads((store_path.parent / LAST_OPEN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("chat_id"), str):
        return None
    settings = record.get("settings")
    return record["chat_id"], settings if isinstance(settings, dict) else {}
