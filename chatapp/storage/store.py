"""Chat history: every conversation autosaved in one SQLite database in the user data folder.

Why SQLite (standard library, WAL mode) rather than one JSON file per chat:

- Safety: each save is one transaction. A crash, SIGKILL or power cut mid-write leaves the
  previous committed version (the next open rolls the torn write back); no temp-file juggling.
- Speed: the history list reads one small table instead of parsing every chat file, and a save
  rewrites only the exchanges that changed (`from_exchange`), so autosaving the reply being
  written costs one exchange, not a 200-turn chat's megabytes of token records.

Layout: a `chats` row per chat (id, title, model, times, turns, system prompt), an `exchanges`
row per user message holding the exchange's `chat_file` record as zlib-compressed JSON, a
`chat_text` row per exchange with its plain text for search (`history_search`, schema 2), and a
`chat_settings` row per chat with the sampling settings it goes on with.
Pure Python: no torch, no Textual.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

from chatapp.chat.conversation import Conversation, Exchange
from chatapp.chat.settings import SamplingSettings
from chatapp.storage import history_search
from chatapp.storage.chat_file import (
    FORMAT_VERSION,
    JSON_SEPARATORS,
    SavedChat,
    default_title,
    exchange_to_dict,
    exchanges_from_dicts,
    format_version,
    one_line,
    utc_now,
)
from chatapp.storage.history_file import (  # noqa: F401 - APP_NAME, default_store_path and StoreError are the store's API
    APP_NAME,
    StoreError,
    check_header,
    connect_read_only,
    default_store_path,
    writable,
)
from chatapp.support.memory import gc_paused

SCHEMA_VERSION = history_search.TEXT_SCHEMA_VERSION
"""Stored in `PRAGMA user_version`; a newer database is refused, never altered."""
ZLIB_LEVEL = 1
"""Compression of exchange records: the fastest level, as a reply being written is saved every
second on the UI thread, whose time a small CPU takes from the model (README, Performance)."""
READ_ONLY_ERROR = "readonly database"
"""What SQLite's error says when the database cannot be written."""
BUSY_TIMEOUT_S = 5.0
"""How long a save waits for another chatapp process holding the write lock."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS chats (
    id TEXT PRIMARY KEY, title TEXT NOT NULL, preview TEXT NOT NULL, model TEXT NOT NULL,
    created TEXT NOT NULL, updated TEXT NOT NULL, turns INTEGER NOT NULL, system TEXT,
    format_version INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS chats_by_update ON chats (updated);
CREATE TABLE IF NOT EXISTS exchanges (
    chat_id TEXT NOT NULL REFERENCES chats (id) ON DELETE CASCADE, position INTEGER NOT NULL,
    record BLOB NOT NULL, PRIMARY KEY (chat_id, position));
"""
"""Tables of schema version 1 (`history_search.upgrade` adds version 2's)."""
SETTINGS_TABLE = """
CREATE TABLE IF NOT EXISTS chat_settings (
    chat_id TEXT PRIMARY KEY REFERENCES chats (id) ON DELETE CASCADE, settings TEXT NOT NULL)"""
"""Each chat's own sampling settings (what its next reply uses), as JSON. A table of its own,
made at every writable open and not counted in the schema version: an older chatapp, which does
not know it, still opens and saves the history (and leaves the settings as they were)."""
SUMMARY_COLUMNS = "id, title, preview, model, created, updated, turns"
"""What the history list reads, in `ChatSummary` order (title falls back to preview)."""


@dataclass(frozen=True)
class ChatSummary:
    """One row of the history list."""

    id: str
    """The chat's id."""
    title: str
    """Its title, or the first line of its first user message when untitled."""
    model: str
    """The model that wrote it."""
    created: datetime
    """When it began (UTC)."""
    updated: datetime
    """When it was last saved (UTC)."""
    turns: int
    """Number of user messages."""


def _stamp(when: datetime) -> str:
    # One zone for every stored time, so that text order is time order.
    return when.astimezone(timezone.utc).isoformat()


def _pack(exchange: Exchange) -> bytes:
    text = json.dumps(exchange_to_dict(exchange), ensure_ascii=False, separators=JSON_SEPARATORS)
    return zlib.compress(text.encode("utf-8"), ZLIB_LEVEL)


def _summary(row: tuple) -> ChatSummary:
    chat_id, title, preview, model, created, updated, turns = row
    return ChatSummary(chat_id, title or preview, model, datetime.fromisoformat(created),
                       datetime.fromisoformat(updated), turns)


class ChatStore:
    """The chat history database; safe to share between the UI thread and a worker.

    Args:
        path: the database file; `default_store_path()` when None (tests pass a temp path).

    Raises:
        StoreError: the file is not a SQLite database, is damaged, or was written by a newer
            chatapp; the file is left untouched.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        """The database file."""
        self.read_only = False
        """True when the history cannot be written (its file or folder is read-only): chats
        can be listed, opened and exported, and every write raises `StoreError`."""
        self.searches_text = True
        """False for a read-only history of schema 1 (it has no search text and cannot be
        given one): `search` then matches titles only."""
        self._lock = threading.Lock()
        check_header(self.path)
        self.found_empty = self.path.is_file() and self.path.stat().st_size == 0
        """True when the database file existed but was empty (truncated, or touched): a new
        history starts in it, and `resolve` says so rather than just "no such chat"."""
        try:
            if self.path.exists() and not writable(self.path):
                self._open_read_only()
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                       check_same_thread=False)
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"{self.path}: cannot open chat history ({one_line(error)})") from None
        try:
            history_search.install_functions(self._db)
            self._open_schema()
        except StoreError as error:
            self._db.close()
            if not (self.path.exists() and READ_ONLY_ERROR in str(error)):
                raise
            self._open_read_only()  # e.g. a read-only file system, which access() does not see
        except BaseException:
            self._db.close()
            raise

    def _open_read_only(self) -> None:
        """Open the existing database for reading only (`history_file.connect_read_only`)."""
        self.read_only = True
        self._db, version = connect_read_only(self.path)
        if version > SCHEMA_VERSION:
            self._db.close()
            raise StoreError(f"{self.path}: chat history from a newer chatapp (schema {version}); "
                             "update chatapp to open it")
        history_search.install_functions(self._db)
        self.searches_text = version >= history_search.TEXT_SCHEMA_VERSION

    def _open_schema(self) -> None:
        with self._errors():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: chat history from a newer chatapp (schema {version}; "
                                 f"this one reads up to {SCHEMA_VERSION}); update chatapp to open it")
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before save() returns, so even a power cut keeps it.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            if version < SCHEMA_VERSION:
                with self._transaction() as db:
                    for statement in filter(str.strip, SCHEMA.split(";")):
                        db.execute(statement)
                    history_search.upgrade(db, version)
                    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db.execute(SETTINGS_TABLE)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn SQLite errors into one-line `StoreError`s."""
        try:
            yield
        except sqlite3.Error as error:
            raise StoreError(f"{self.path}: chat history error ({one_line(error)})") from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: all of it is committed, or none of it."""
        if self.read_only:
            raise StoreError(f"{self.path}: the chat history is read-only")
        with self._lock, self._errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:  # SQLite ends it itself on some errors (a full disk)
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the database (pending WAL pages are checkpointed)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> "ChatStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def list_chats(self) -> list[ChatSummary]:
        """Every saved chat, most recently updated first."""
        with self._lock, self._errors():
            rows = self._db.execute(f"SELECT {SUMMARY_COLUMNS} FROM chats ORDER BY updated DESC").fetchall()
        return [_summary(row) for row in rows]

    def count(self) -> int:
        """How many chats are saved."""
        with self._lock, self._errors():
            return self._db.execute("SELECT COUNT(*) FROM chats").fetchone()[0]

    def search(self, words: Sequence[str]) -> list[ChatSummary]:
        """The chats holding every one of `words` (case-insensitive substrings of the title or of
        any message or reply, any version; no wildcards), newest first; all chats for no words.
        A read-only history of schema 1 matches titles only (`searches_text`): it cannot be
        migrated, and decompressing every record per keystroke would be slow on a big history."""
        where, params = history_search.match_clause(words, self.searches_text)
        with self._lock, self._errors():
            rows = self._db.execute(f"SELECT {SUMMARY_COLUMNS} FROM chats WHERE {where} ORDER BY updated DESC",
                                    params).fetchall()
        return [_summary(row) for row in rows]

    def save(self, chat: SavedChat, *, from_exchange: int = 0) -> None:
        """Insert or update `chat` in one transaction, and set `chat.updated` to now.

        Args:
            chat: the chat to save; partial replies (status "streaming" or "stopped") are kept
                with every token they hold.
            from_exchange: exchanges before this index are unchanged since the last save of this
                chat, so only later ones are written (autosave of the reply being written passes
                the last index). Ignored when the stored chat has fewer exchanges.
        """
        chat.updated = utc_now()
        exchanges = chat.conversation.exchanges
        with self._transaction() as db:
            row = db.execute("SELECT turns FROM chats WHERE id = ?", (chat.id,)).fetchone()
            start = max(0, min(from_exchange, row[0])) if row is not None else 0
            db.execute(
                "INSERT INTO chats VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "title = excluded.title, preview = excluded.preview, model = excluded.model, "
                "created = excluded.created, updated = excluded.updated, turns = excluded.turns, "
                "system = excluded.system, format_version = excluded.format_version",
                (chat.id, chat.title, default_title(chat.conversation), chat.model, _stamp(chat.created),
                 _stamp(chat.updated), len(exchanges), chat.conversation.system, format_version(chat.conversation)),
            )
            for table in ("exchanges", "chat_text"):
                db.execute(f"DELETE FROM {table} WHERE chat_id = ? AND position >= ?", (chat.id, start))
            db.executemany("INSERT INTO exchanges VALUES (?, ?, ?)",
                           ((chat.id, i, _pack(e)) for i, e in enumerate(exchanges[start:], start)))
            db.executemany("INSERT INTO chat_text VALUES (?, ?, ?)", ((chat.id, i, history_search.exchange_text(e))
                                                                      for i, e in enumerate(exchanges[start:], start)))
            if chat.settings is not None:
                db.execute("INSERT OR REPLACE INTO chat_settings VALUES (?, ?)",
                           (chat.id, json.dumps(asdict(chat.settings))))

    def load(self, chat_id: str) -> SavedChat:
        """The chat with this id; a reply saved mid-generation comes back stopped, marked interrupted.

        Raises:
            StoreError: no such chat, or its record is damaged or from a newer chatapp.
        """
        with self._lock, self._errors():
            row = self._db.execute("SELECT title, model, created, updated, turns, system, format_version "
                                   "FROM chats WHERE id = ?", (chat_id,)).fetchone()
            records = self._db.execute("SELECT position, record FROM exchanges WHERE chat_id = ? "
                                       "ORDER BY position", (chat_id,)).fetchall()
            settings = self._settings(chat_id)
        if row is None:
            raise StoreError(f"no saved chat with id {chat_id!r}")
        title, model, created, updated, turns, system, version = row
        if version > FORMAT_VERSION:
            raise StoreError(f"chat {chat_id}: saved by a newer chatapp (format version {version}); "
                             "update chatapp to open it")
        if [position for position, _ in records] != list(range(turns)):
            raise StoreError(f"chat {chat_id}: damaged record (exchanges missing)")
        try:
            with gc_paused():
                exchanges = exchanges_from_dicts(json.loads(zlib.decompress(record)) for _, record in records)
        except (ValueError, TypeError, zlib.error) as error:
            raise StoreError(f"chat {chat_id}: damaged record ({one_line(error)})") from None
        return SavedChat(Conversation(system=system, exchanges=exchanges), id=chat_id, title=title, model=model,
                         created=datetime.fromisoformat(created), updated=datetime.fromisoformat(updated),
                         settings=settings)

    def _settings(self, chat_id: str) -> SamplingSettings | None:
        """The chat's own settings; None when it has none (saved before chatapp kept them, or in
        a history only an older chatapp wrote) or they are not valid settings."""
        try:
            row = self._db.execute("SELECT settings FROM chat_settings WHERE chat_id = ?", (chat_id,)).fetchone()
        except sqlite3.OperationalError:  # a read-only history without the table
            return None
        try:
            return SamplingSettings(**json.loads(row[0])).validated() if row is not None else None
        except (ValueError, TypeError):
            return None

    def last(self) -> SavedChat | None:
        """The most recently updated chat (for `chatapp --resume`), or None when there is none."""
        with self._lock, self._errors():
            row = self._db.execute("SELECT id FROM chats ORDER BY updated DESC LIMIT 1").fetchone()
        return None if row is None else self.load(row[0])

    def resolve(self, prefix: str) -> str:
        """The full id of the one chat whose id starts with `prefix` (as `chatapp --chat` takes).

        Raises:
            StoreError: no chat, or several, match.
        """
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._lock, self._errors():
            rows = self._db.execute("SELECT id FROM chats WHERE id LIKE ? ESCAPE '\\' LIMIT 2",
                                    (pattern,)).fetchall()
        if not rows:
            self.check_integrity()  # "no such chat" in a damaged history would mislead
            if self.found_empty:
                raise StoreError(f"no saved chats match id {prefix!r}: the chat history {self.path} was an "
                                 "empty file (truncated?), so its chats are gone")
        if len(rows) != 1 or not prefix:
            raise StoreError(f"{'several' if rows else 'no'} saved chats match id {prefix!r}")
        return rows[0][0]

    def check_integrity(self) -> None:
        """Raise `StoreError` when the database is damaged (SQLite's `quick_check`); it reads
        the whole file, so it runs only where a damaged history would otherwise mislead."""
        try:
            with self._lock, self._errors():
                problems = [row[0] for row in self._db.execute("PRAGMA quick_check(3)").fetchall()]
        except StoreError as error:
            problems = [str(error)]
        if problems != ["ok"]:
            raise StoreError(f"{self.path}: the chat history is damaged ({' '.join('; '.join(problems).split())}); "
                             "move it aside to start a new one (chatapp never repairs it in place)")

    def rename(self, chat_id: str, title: str) -> bool:
        """Set a chat's title; False when there is no such chat."""
        with self._transaction() as db:
            return db.execute("UPDATE chats SET title = ? WHERE id = ?", (title, chat_id)).rowcount > 0

    def delete(self, chat_id: str) -> bool:
        """Delete a chat, its exchanges and their search text; False when there is no such chat."""
        with self._transaction() as db:
            return db.execute("DELETE FROM chats WHERE id = ?", (chat_id,)).rowcount > 0
