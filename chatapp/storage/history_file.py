"""The chat history's database as a file: where it lives, whether this process may write it,
whether it is a SQLite database at all, and a read-only connection to one.

Pure Python: no torch, no Textual.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from platformdirs import user_data_dir

from chatapp.storage.chat_file import ChatFileError, one_line

APP_NAME = "chatapp"
"""Folder name under the platform's user data directory."""
DB_FILE_NAME = "chats.sqlite3"
"""The history database's file name."""
SQLITE_HEADER = b"SQLite format 3\x00"
"""First bytes of every SQLite database file."""
READ_ONLY_MODES = ("mode=ro", "immutable=1")
"""How a read-only history is opened, in turn: `immutable=1` where even reading a WAL database
needs files its folder cannot take."""


class StoreError(ChatFileError):
    """The history database cannot be opened or a chat in it cannot be read (one line)."""


def default_store_path() -> Path:
    """Where the history lives: `chats.sqlite3` in the user data folder."""
    return Path(user_data_dir(APP_NAME, appauthor=False)) / DB_FILE_NAME


def writable(path: Path) -> bool:
    """Whether this process may write the database file and create its journal beside it."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)


def check_header(path: Path) -> None:
    """Refuse a file that is not a SQLite database (an empty or missing one is fine: a new
    history starts there), leaving it untouched.

    Raises:
        StoreError: unreadable, or not a SQLite database.
    """
    try:
        with path.open("rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as error:
        raise StoreError(f"{path}: cannot read chat history ({one_line(error)})") from None
    if header and header != SQLITE_HEADER:
        raise StoreError(f"{path}: not a chat history database (corrupt or foreign file); "
                         "move it aside to start a new history")


def connect_read_only(path: Path) -> tuple[sqlite3.Connection, int]:
    """A read-only connection to the existing database at `path`, and its schema version.

    Raises:
        StoreError: it cannot be opened or read in any of `READ_ONLY_MODES`.
    """
    failure: Exception | None = None
    for flags in READ_ONLY_MODES:
        connection = None
        try:
            connection = sqlite3.connect(f"{path.resolve().as_uri()}?{flags}", uri=True, isolation_level=None,
                                         check_same_thread=False)
            return connection, connection.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as error:
            failure = error
            if connection is not None:
                with contextlib.suppress(Exception):
                    connection.close()
    raise StoreError(f"{path}: cannot open chat history ({one_line(failure)})") from None
