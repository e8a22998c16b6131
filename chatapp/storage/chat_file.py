"""Saved chats: a conversation and its token records as one JSON document, and back, exactly.

The document (format "chatapp-chat") holds the messages in the common `{"role", "content"}`
form (the shown reply versions) so other tools can read it, and beside them everything needed
to reopen the chat: every reply version with its settings, status, branch point, stats and token
records (`chatapp.storage.token_columns`). Reading checks everything; any problem raises `ChatFileError`
with one line for the user and leaves the file alone. Writing is atomic (`chatapp.support.atomic_file`), so a
crash leaves either the old file or the new one.

Pure Python: no torch, no Textual.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Iterable, get_args

from chatapp.chat.conversation import Conversation, Exchange, ReplyStatus, ReplyVersion
from chatapp.chat.records import FinishReason, TurnStats
from chatapp.chat.settings import SamplingSettings
from chatapp.storage.token_columns import columns_to_steps, steps_to_columns
from chatapp.support.atomic_file import atomic_write
from chatapp.support.bounded_read import FileRefused, read_regular_file
from chatapp.support.memory import gc_paused

FORMAT_NAME = "chatapp-chat"
"""The `format` field that marks a JSON document as ours."""
FORMAT_VERSION = 2
"""The newest version of the document layout this chatapp reads; readers refuse newer ones
rather than guess. Version 2 adds the branches put away in a version (`"later"`)."""
PLAIN_FORMAT_VERSION = 1
"""The version written for a chat without put-away branches: chatapp 1-format readers open it
as before (only a chat that has branches needs a reader that keeps them)."""
TITLE_LENGTH = 60
"""Longest default title, taken from the first user message."""
UNTITLED = "Untitled chat"
"""Title of a chat with no user message yet."""
INTERRUPTED_NOTE = "interrupted: the app closed while this reply was being written"
"""Set as `ReplyVersion.error` of a reply saved mid-generation (status "streaming") on reopening."""
REPLY_STATUSES = frozenset(get_args(ReplyStatus))
"""Statuses a saved reply may have."""
FINISH_REASONS = frozenset(get_args(FinishReason))
"""Finish reasons a saved turn may have."""
JSON_SEPARATORS = (",", ":")
"""Compact JSON: indenting would put each of ~400,000 column entries on its own line."""
MAX_CHAT_FILE_BYTES = 64 << 20
"""Largest chat file read (a 200-turn chat with every token's candidates is about 25 MB): a
device or a runaway file must not fill the memory or freeze the app."""


class ChatFileError(ValueError):
    """A chat cannot be read: corrupt, truncated, foreign or from a newer chatapp (one line)."""


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(timezone.utc)


def new_chat_id() -> str:
    """A fresh random chat id (32 hex digits)."""
    return uuid.uuid4().hex


def counted(number: int, noun: str) -> str:
    """"1 turn", "2 turns": `number` and `noun`, plural when it is not one (nouns with an s)."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def default_title(conversation: Conversation) -> str:
    """The first line of the first user message, shortened to `TITLE_LENGTH`."""
    first = next((e.shown_user.strip() for e in conversation.exchanges if e.shown_user.strip()), "")
    line = first.splitlines()[0] if first else UNTITLED
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1] + "…"


@dataclass
class SavedChat:
    """A conversation with what identifies it in history."""

    conversation: Conversation
    """The exchanges, every reply version and its token records."""
    id: str = field(default_factory=new_chat_id)
    """Stable id, used by `chatapp --chat ID` and file names."""
    title: str = ""
    """Shown in the history list; empty means `default_title` of the conversation."""
    model: str = ""
    """Name of the model that wrote the replies."""
    created: datetime = field(default_factory=utc_now)
    """When the chat began (UTC)."""
    updated: datetime = field(default_factory=utc_now)
    """When it was last saved (UTC)."""
    settings: SamplingSettings | None = None
    """The sampling settings the chat goes on with (its next reply's, as last set in it); None
    for a chat saved before chatapp kept them (its latest reply's settings stand in)."""

    def going_on_with(self) -> SamplingSettings | None:
        """The settings the chat goes on with: its own, else its latest reply's (None: neither)."""
        return self.settings or self.conversation.latest_settings()

    @property
    def turns(self) -> int:
        """Number of user messages."""
        return len(self.conversation.exchanges)

    @property
    def display_title(self) -> str:
        """The title, or one made from the first user message."""
        return self.title or default_title(self.conversation)


def shown_messages(conversation: Conversation) -> list[dict]:
    """The conversation as `{"role", "content"}` messages, with the shown version of each reply."""
    messages = [{"role": "system", "content": conversation.system}] if conversation.system else []
    for exchange in conversation.exchanges:
        messages.append({"role": "user", "content": exchange.shown_user})
        if exchange.reply is not None and exchange.reply.text:
            messages.append({"role": "assistant", "content": exchange.reply.text})
    return messages


def format_version(conversation: Conversation) -> int:
    """The document version `conversation` needs: `FORMAT_VERSION` when it holds branches put
    away (a version-1 reader would drop them on its next save), else `PLAIN_FORMAT_VERSION`."""
    return FORMAT_VERSION if conversation.branched else PLAIN_FORMAT_VERSION


def version_to_dict(version: ReplyVersion) -> dict[str, Any]:
    """One reply version as a JSON-ready dict, token records as columns ("user" only for a
    version that answers an edited message: older readers show the exchange's own; "later"
    only for a version with exchanges put away after it)."""
    edited = {} if version.user is None else {"user": version.user}
    later = {"later": [exchange_to_dict(e) for e in version.later]} if version.later else {}
    return {
        **edited,
        **later,
        "model": version.model,
        **({"model_spec": version.model_spec} if version.model_spec else {}),
        "system": version.system,
        "status": version.status,
        "text": version.text,
        "error": version.error,
        "branched_at": version.branched_at,
        "settings": asdict(version.settings),
        "stats": None if version.stats is None else asdict(version.stats),
        "tokens": steps_to_columns(version.steps),
    }


def exchange_to_dict(exchange: Exchange) -> dict[str, Any]:
    """One exchange (user message and reply versions) as a JSON-ready dict."""
    versions = [version_to_dict(v) for v in exchange.versions]
    return {"user": exchange.user, "current": exchange.current, "versions": versions}


def chat_to_dict(chat: SavedChat) -> dict[str, Any]:
    """The whole saved-chat document, ready for `json.dumps`."""
    return {
        "format": FORMAT_NAME,
        "version": format_version(chat.conversation),
        "id": chat.id,
        "title": chat.title,
        "model": chat.model,
        "created": chat.created.isoformat(),
        "updated": chat.updated.isoformat(),
        "system": chat.conversation.system,
        "settings": None if chat.settings is None else asdict(chat.settings),
        "messages": shown_messages(chat.conversation),
        "exchanges": [exchange_to_dict(e) for e in chat.conversation.exchanges],
    }


def _get(data: Any, key: str, kinds: type | tuple[type, ...]) -> Any:
    """`data[key]`, checked to be of `kinds`; ValueError names the key otherwise."""
    if not isinstance(data, dict) or key not in data:
        raise ValueError(f"{key!r} is missing")
    value, kinds = data[key], kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        raise ValueError(f"{key!r} has the wrong type")
    return value


def _stats_from_dict(data: dict) -> TurnStats:
    """TurnStats with every field checked against the type of its default."""
    stats = TurnStats(**data)
    for f in fields(TurnStats):
        kinds = (float, int) if type(f.default) is float else (type(f.default),)
        _get(data, f.name, kinds)
    if stats.finish_reason not in FINISH_REASONS:
        raise ValueError(f"unknown finish reason {stats.finish_reason!r}")
    return stats


def version_from_dict(data: Any) -> ReplyVersion:
    """Rebuild a reply version; one saved mid-generation comes back stopped and marked interrupted.

    Raises:
        ValueError: the record is damaged (the message says where).
    """
    status = _get(data, "status", str)
    if status not in REPLY_STATUSES:
        raise ValueError(f"unknown reply status {status!r}")
    settings = SamplingSettings(**_get(data, "settings", dict)).validated()
    stats_data = _get(data, "stats", (dict, type(None)))
    stats = None if stats_data is None else _stats_from_dict(stats_data)
    branched_at = _get(data, "branched_at", (int, type(None)))
    user = _get(data, "user", str) if "user" in data else None
    model = _get(data, "model", str) if "model" in data else ""  # absent: saved before it was recorded
    model_spec = _get(data, "model_spec", str) if "model_spec" in data else ""
    system_recorded = "system" in data
    system = _get(data, "system", (str, type(None))) if system_recorded else None
    version = ReplyVersion(
        settings=settings,
        steps=columns_to_steps(_get(data, "tokens", dict)),
        text=_get(data, "text", str),
        stats=stats,
        status=status,
        branched_at=branched_at,
        error=_get(data, "error", str),
        user=user,
        model=model,
        model_spec=model_spec,
        system=system,
        system_recorded=system_recorded,
    )
    if "later" in data:
        version.later = exchanges_from_dicts(_get(data, "later", list))
    if status == "streaming":
        version.status, version.error = "stopped", INTERRUPTED_NOTE
    return version


def exchange_from_dict(data: Any) -> Exchange:
    """Rebuild an exchange; ValueError when the record is damaged."""
    versions = [version_from_dict(v) for v in _get(data, "versions", list)]
    current = _get(data, "current", int)
    if versions and not 0 <= current < len(versions) or not versions and current != 0:
        raise ValueError(f"shown version {current} does not exist")
    return Exchange(user=_get(data, "user", str), versions=versions, current=current)


def exchanges_from_dicts(records: Iterable[Any]) -> list[Exchange]:
    """Rebuild exchanges in order; the ValueError of a damaged one says which (1-based)."""
    exchanges = []
    for number, record in enumerate(records, 1):
        try:
            exchanges.append(exchange_from_dict(record))
        except (ValueError, TypeError) as error:
            raise ValueError(f"exchange {number}: {one_line(error)}") from None
    return exchanges


def check_format(data: Any, source: str) -> None:
    """Raise `ChatFileError` unless `data` is a chatapp document this version can read."""
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ChatFileError(f"{source}: not a chatapp chat (valid JSON, but no \"format\": \"{FORMAT_NAME}\")")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ChatFileError(f"{source}: damaged chat file (bad format version {version!r})")
    if version > FORMAT_VERSION:
        raise ChatFileError(f"{source}: saved by a newer chatapp (format version {version}; "
                            f"this one reads up to {FORMAT_VERSION}); update chatapp to open it")


def _time(data: dict, key: str) -> datetime:
    when = datetime.fromisoformat(_get(data, key, str))
    if when.tzinfo is None:
        raise ValueError(f"{key!r} has no time zone")
    return when


def one_line(error: Exception) -> str:
    """An exception's message on one line."""
    return " ".join(str(error).split()) or type(error).__name__


def chat_from_dict(data: Any, source: str = "chat") -> SavedChat:
    """Rebuild a saved chat from its document.

    Args:
        data: the parsed JSON document.
        source: what to call it in error messages (a file name, "chat ID").

    Raises:
        ChatFileError: foreign, future-version or damaged document (one line).
    """
    check_format(data, source)
    try:
        with gc_paused():
            exchanges = exchanges_from_dicts(_get(data, "exchanges", list))
            conversation = Conversation(system=_get(data, "system", (str, type(None))), exchanges=exchanges)
            return SavedChat(
                conversation=conversation,
                id=_get(data, "id", str),
                title=_get(data, "title", str),
                model=_get(data, "model", str),
                created=_time(data, "created"),
                updated=_time(data, "updated"),
                settings=_chat_settings(data),
            )
    except (ValueError, TypeError) as error:
        raise ChatFileError(f"{source}: damaged chat file ({one_line(error)})") from None


def _chat_settings(data: dict) -> SamplingSettings | None:
    """The document's own settings (absent in files from before chatapp kept them)."""
    settings = _get(data, "settings", (dict, type(None))) if "settings" in data else None
    return None if settings is None else SamplingSettings(**settings).validated()


def dumps(chat: SavedChat) -> str:
    """The chat as JSON text (UTF-8 safe, newline-terminated)."""
    with gc_paused():
        return json.dumps(chat_to_dict(chat), ensure_ascii=False, separators=JSON_SEPARATORS) + "\n"


def loads(text: str | bytes, source: str = "chat") -> SavedChat:
    """Parse JSON text written by `dumps`; `ChatFileError` on any problem."""
    if not text.strip():
        raise ChatFileError(f"{source}: empty file, not a chat")
    try:
        with gc_paused():
            data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ChatFileError(f"{source}: not valid JSON, truncated or corrupt ({error.msg} at "
                            f"line {error.lineno} column {error.colno})") from None
    except ValueError:  # undecodable bytes
        raise ChatFileError(f"{source}: not text, corrupt file") from None
    except RecursionError:
        raise ChatFileError(f"{source}: nested too deeply, not a chat") from None
    return chat_from_dict(data, source)


def save_chat_file(chat: SavedChat, path: str | os.PathLike) -> None:
    """Save `chat` as a JSON document at `path`, atomically."""
    atomic_write(path, dumps(chat).encode("utf-8"))


def load_chat_file(path: str | os.PathLike) -> SavedChat:
    """Read a chat saved by `save_chat_file`; never writes.

    Only a regular file of at most `MAX_CHAT_FILE_BYTES` is read (not a device such as
    /dev/zero, a pipe or a folder).

    Raises:
        ChatFileError: unreadable, corrupt, truncated, foreign or future-version file, or not a
            regular file, or too large (one line).
    """
    try:
        data = read_regular_file(path, MAX_CHAT_FILE_BYTES)
    except FileRefused as error:
        raise ChatFileError(f"{path}: cannot read ({error})") from None
    return loads(data, str(path))
