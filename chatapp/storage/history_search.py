"""Searching the chat history: the plain-text table that `ChatStore` keeps beside its compressed
records, its migration, and the SQL that matches the words typed.

Contract:

- `chat_text` holds one row per exchange (the same `chat_id, position` as `exchanges`): its user
  message, the edited messages its versions answer and the text of every reply version, joined
  by newlines and case-folded. The store writes and deletes these rows in the same transactions
  as the exchange rows, so the two never disagree after a commit.
- A word matches a chat when it is a case-insensitive substring of its title (or first-message
  preview) or of any of its `chat_text` rows; a chat is found when every word matches somewhere
  in it. `instr` does the matching, so `%`, `_` and `\\` in a word are plain characters.
- Schema 2 added `chat_text`; `upgrade` fills it for chats saved before, decompressing each
  record once, inside the caller's transaction.

Pure Python and SQL: no Textual, no torch.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from chatapp.chat.conversation import walk
from chatapp.support.memory import gc_paused

if TYPE_CHECKING:
    from chatapp.chat.conversation import Exchange

TEXT_SCHEMA_VERSION = 2
"""The first schema version with the `chat_text` table."""
TEXT_SCHEMA = """
CREATE TABLE IF NOT EXISTS chat_text (
    chat_id TEXT NOT NULL REFERENCES chats (id) ON DELETE CASCADE, position INTEGER NOT NULL,
    text TEXT NOT NULL, PRIMARY KEY (chat_id, position))
"""
"""The search text of each exchange (schema 2)."""
CASEFOLD_FUNCTION = "casefold"
"""SQL name of Python's `str.casefold`, registered on each connection (SQLite's own `lower`
folds ASCII only, so "CAFÉ" would not find "café")."""
TITLE_MATCH = f"instr({CASEFOLD_FUNCTION}(title || char(10) || preview), ?) > 0"
"""A word in the chat's title or its first message's first line (one parameter: the word)."""
TEXT_MATCH = "EXISTS (SELECT 1 FROM chat_text WHERE chat_id = chats.id AND instr(text, ?) > 0)"
"""A word anywhere in the chat's messages and replies (one parameter: the word)."""
MIGRATION_BATCH = 64
"""Exchange records decompressed per batch during `upgrade` (bounds the memory it holds)."""


def search_text(messages: Iterable[str | None]) -> str:
    """The case-folded text that search matches for one exchange's `messages` (None and
    repeats left out). Newlines separate them, so a word never matches across two."""
    return "\n".join(dict.fromkeys(m for m in messages if m)).casefold()


def exchange_text(exchange: "Exchange") -> str:
    """`search_text` of an exchange: its user message, every version's edited message and
    reply, and those of the exchanges its versions put away (other branches)."""
    return search_text([part for e in walk([exchange])
                        for part in (e.user, *(part for v in e.versions for part in (v.user, v.text)))])


def record_text(record: dict[str, Any]) -> str:
    """`search_text` of an exchange record as `chat_file.exchange_to_dict` wrote it."""
    versions = record.get("versions") or []
    return search_text([record.get("user"), *(v.get(key) for v in versions for key in ("user", "text"))])


def _stored_text(blob: bytes) -> str:
    """The search text of one compressed record; empty when it is damaged (opening that chat
    reports the damage; the migration must not fail the whole history for it)."""
    try:
        record = json.loads(zlib.decompress(blob))
        return record_text(record) if isinstance(record, dict) else ""
    except (ValueError, TypeError, AttributeError, zlib.error):
        return ""


def _old_rows(db: sqlite3.Connection) -> Iterator[tuple[str, int, str]]:
    cursor = db.execute("SELECT chat_id, position, record FROM exchanges ORDER BY chat_id, position")
    while batch := cursor.fetchmany(MIGRATION_BATCH):
        with gc_paused():
            texts = [_stored_text(record) for _, _, record in batch]
        yield from ((chat_id, position, text) for (chat_id, position, _), text in zip(batch, texts))


def upgrade(db: sqlite3.Connection, version: int) -> None:
    """Bring a database of schema `version` (0: new, 1: before search) up to schema 2, inside
    the caller's transaction: create `chat_text` and fill it from every stored exchange."""
    if version >= TEXT_SCHEMA_VERSION:
        return
    db.execute(TEXT_SCHEMA)
    rows = list(_old_rows(db))  # read fully first: inserting while a SELECT steps is fragile
    db.executemany("INSERT OR REPLACE INTO chat_text VALUES (?, ?, ?)", rows)


def install_functions(db: sqlite3.Connection) -> None:
    """Register the SQL functions the match clauses use (on every connection, read-only too)."""
    db.create_function(CASEFOLD_FUNCTION, 1, lambda text: text.casefold() if isinstance(text, str) else text,
                       deterministic=True)


def match_clause(words: Sequence[str], with_text: bool) -> tuple[str, list[str]]:
    """A `WHERE` clause on `chats` finding the chats that hold every word, and its parameters.

    Args:
        words: what was typed, split on whitespace (empty: every chat matches).
        with_text: search messages and replies too; False searches titles only (a read-only
            history of schema 1, which has no `chat_text` and cannot be given one).
    """
    terms = [word.casefold() for word in words if word.strip()]
    one = f"({TITLE_MATCH} OR {TEXT_MATCH})" if with_text else TITLE_MATCH
    params = [term for term in terms for _ in range(2 if with_text else 1)]
    return " AND ".join([one] * len(terms)) or "1", params
