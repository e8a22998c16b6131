"""Exports of a saved chat: a readable Markdown transcript, or the JSON document `/load` reads.

Pure Python: no torch, no Textual. Files are written atomically (`chatapp.support.atomic_file`).
"""

from __future__ import annotations

import os

from chatapp.chat.confidence import reply_confidence
from chatapp.chat.conversation import ReplyVersion
from chatapp.chat.export_format import export_format
from chatapp.storage.chat_file import INTERRUPTED_NOTE, SavedChat, counted, dumps
from chatapp.support.atomic_file import atomic_write

TIME_FORMAT = "%Y-%m-%d %H:%M UTC"
"""How the transcript shows dates."""
STATUS_NOTES = {"stopped": "stopped by the user", "error": "failed", "streaming": "still being written"}
"""What the transcript says about a reply that did not finish normally."""

EMPTY_NOTE = "empty reply"
"""Shown for a finished reply without text (e.g. the model stopped at once)."""


def _quote(text: str) -> str:
    """`text` as a Markdown block quote, blank lines included."""
    return "\n".join(f"> {line}".rstrip() for line in text.splitlines() or [""])


def reply_note(version: ReplyVersion) -> str:
    """Why a reply is incomplete ("stopped by the user", "interrupted: …"), or "" when it finished."""
    if version.error == INTERRUPTED_NOTE:
        return INTERRUPTED_NOTE
    if version.cut_at_limit:
        return version.limit_note
    note = STATUS_NOTES.get(version.status, "")
    return f"{note}: {version.error}" if note and version.error else note


def _reply_heading(version: ReplyVersion, index: int, count: int) -> str:
    parts = ["Assistant"]
    if count > 1:
        parts.append(f"(version {index + 1} of {count})")
    if version.branched_at is not None:
        parts.append(f"(branched at token {version.branched_at + 1})")
    return " ".join(parts)


def to_markdown(chat: SavedChat) -> str:
    """A readable transcript: title, model and dates, then each message with the shown reply.

    Incomplete replies carry an italic note (stopped, interrupted, failed); other versions of a
    reply are counted in its heading but not shown.
    """
    conversation = chat.conversation
    models = sorted({e.reply.model for e in conversation.exchanges if e.reply is not None and e.reply.model})
    several_models = len(models) > 1  # then each reply names the model that wrote it
    lines = [
        f"# {chat.display_title}",
        "",
        f"*Model: {', '.join(models) if several_models else chat.model or 'unknown'} · "
        f"started {chat.created.strftime(TIME_FORMAT)} · "
        f"updated {chat.updated.strftime(TIME_FORMAT)} · {counted(chat.turns, 'turn')}*",
        "",
    ]
    changes = dict(conversation.system_changes())  # where the system prompt the replies read changed
    for index, exchange in enumerate(conversation.exchanges):
        if index in changes:
            lines += _system_lines(changes[index], index)
        lines += ["## User", "", exchange.shown_user, ""]
        reply = exchange.reply
        if reply is None:
            continue
        heading = _reply_heading(reply, exchange.current, len(exchange.versions))
        if several_models and reply.model:
            heading += f" ({reply.model})"
        lines += [f"## {heading}", ""]
        note = reply_note(reply) or ("" if reply.text else EMPTY_NOTE)
        if reply.text:
            lines += [reply.text, ""]
        if note:
            lines += [f"*[{note}]*", ""]
        confidence = reply_confidence(reply.steps)
        if confidence is not None:
            lines += [f"*{_literal(confidence.describe())}*", ""]
    if len(conversation.exchanges) in changes:  # set after the last reply (or in an empty chat)
        lines += _system_lines(changes[len(conversation.exchanges)], -1 if conversation.exchanges else 0)
    return "\n".join(lines).rstrip("\n") + "\n"


def _literal(text: str) -> str:
    """`text` with Markdown's emphasis and escape characters escaped, to show as written."""
    return "".join("\\" + c if c in "\\*_`[]<>" else c for c in text.replace("\n", " "))


def _system_lines(system: str | None, index: int) -> list[str]:
    """The system prompt as it changed before exchange `index` (0: the start, -1: after the last
    reply, read from the next message on)."""
    if system is None:
        return ["## System prompt cleared", ""]
    heading = {0: "## System", -1: "## System (set after the last reply)"}.get(index, "## System (from here on)")
    return [heading, "", _quote(system), ""]


def to_json(chat: SavedChat) -> str:
    """The full chat document (messages, settings, model, token records), as `/save` writes it."""
    return dumps(chat)


def render(chat: SavedChat, fmt: str) -> str:
    """The chat as text in format `fmt` ("md" or "json"), e.g. for printing to stdout."""
    return to_markdown(chat) if export_format("", fmt) == "md" else to_json(chat)


def export_chat(chat: SavedChat, path: str | os.PathLike, fmt: str | None = None) -> str:
    """Write `chat` to `path` atomically as Markdown or JSON; return the format written."""
    fmt = export_format(path, fmt)
    atomic_write(path, render(chat, fmt).encode("utf-8"))
    return fmt
