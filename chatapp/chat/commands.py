"""Slash commands typed in the prompt: parsed and validated here, applied by the screen.

`/temp 0.8`, `/topk 40`, `/topp 0.9`, `/minp 0.05`, `/rep 1.1`, `/max 256`, `/seed 7` (or
`off`), `/set temp=0.5 topk=40` (several at once, all or nothing), `/system TEXT`, `/clear`,
`/save PATH`, `/load PATH`, `/export PATH.md|.json`, `/history`, `/help`. A bad command raises
`CommandError` whose message is one short line for the user: anything the user typed is quoted
through `chatapp.chat.settings.shown`, so a pasted newline or a huge paste never breaks that line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chatapp.chat.export_format import ExportError, export_format
from chatapp.chat.settings import SETTING_NAMES, SamplingSettings, SettingError, shown

COMMAND_PREFIX = "/"
"""A message starting with this is a command."""
LITERAL_PREFIX = "//"
"""A message starting with this is sent as a message, minus one slash (`//etc` sends `/etc`)."""
SETTING_ALIASES = {
    "temp": "temperature",
    "topk": "top_k",
    "topp": "top_p",
    "minp": "min_p",
    "rep": "repetition_penalty",
    "max": "max_new_tokens",
    "seed": "seed",
    "stop": "stop",
}
"""Short command names of the sampling settings."""
COMMAND_PATTERN = re.compile(r"(\S*)(.*)", re.DOTALL)
"""A command's name (up to the first whitespace of any kind) and its argument."""
FILE_EXAMPLES = {"save": "chat.json", "load": "chat.json", "export": "chat.md", "file": "notes.txt"}
"""Example paths shown when a file command is missing its path."""
HELP_TEXT = """\
Slash commands
  /temp X       temperature (0 = greedy)    /topk N    keep the N best
  /topp X       nucleus, or off             /minp X    min-p, or off
  /rep X        repetition penalty, or off  /max N     longest reply
  /seed N       fixed seed, or off          /set temp=0.5 topk=40 ...
  /stop TEXT    end replies where TEXT appears (\\n a newline), or off
  /system TEXT  system prompt (empty clears) /clear    new chat
  /save PATH    save the chat as JSON       /load PATH open a /save file
  /export PATH.md  Markdown transcript (or .json)  /history  saved chats
  /file PATH    send a text file as a message (UTF-8, at most 1 MiB)
  /model SPEC   go on with another model (default, a .gguf file, a
                folder, ORG/NAME); /model alone lists them
  /help         this help                   //text     send "/text"

Keys
  Enter send · Shift+Enter or Ctrl+J newline · Esc stop, leave inspector
  Ctrl+R regenerate · Ctrl+L (Up in an empty prompt) edit the message
  (the inspected one, else the last) · Ctrl+N new chat
  Ctrl+T token inspector · Ctrl+O heatmap · Ctrl+P palette · Ctrl+Q quit
  F2 saved chats: Enter open · r rename · d delete · / search
  F3 show or hide the candidates panel · F4 copy the reply
  F5 step mode: you pick each token (Enter the model's draw, ↑/↓ or
  1–9 another, F5 again: the model finishes, Esc stops)

Token inspector
  ←/→ token · Home/End first/last · PgUp/PgDn previous/next reply
  ↑/↓ pick a candidate · Enter branch from it, in any reply
  ,/. previous/next version: the whole branch that followed it
  R regenerate this reply · E edit its message (both start a branch)
  W look up any token's odds here · S what-if: the step under other
  settings (Enter then branches with them) · L logit lens: each layer's
  top token (L again: back) · Del delete this exchange (asks)
  Clicks work too: a token, a candidate row, ‹ ›

Completion mode (--raw, the palette, or a model with no chat template):
what you send extends the plain text; Enter alone lets the model go on
"""
"""What `/help` shows."""


class CommandError(ValueError):
    """A slash command is unknown or malformed; the message is one line for the user."""


@dataclass(frozen=True)
class ApplySettings:
    """Replace the sampling settings."""

    settings: SamplingSettings
    """The new, validated settings."""
    summary: str
    """What changed, e.g. "temperature=0.8"."""


@dataclass(frozen=True)
class SetSystem:
    """Set (or clear, when None) the system prompt."""

    text: str | None
    """The new system prompt."""


@dataclass(frozen=True)
class ClearChat:
    """Start a new chat."""


@dataclass(frozen=True)
class ShowHelp:
    """Show the help screen."""


@dataclass(frozen=True)
class ShowHistory:
    """Show the saved chats."""


@dataclass(frozen=True)
class SaveChat:
    """Save the chat as a JSON document (`chatapp.storage.chat_file`)."""

    path: str
    """Where to write it."""


@dataclass(frozen=True)
class LoadChat:
    """Replace the conversation with a chat saved by `/save`."""

    path: str
    """The file to read."""


@dataclass(frozen=True)
class ExportChat:
    """Write the chat as Markdown or JSON, chosen by the file suffix."""

    path: str
    """Where to write it (.md, .markdown or .json)."""


@dataclass(frozen=True)
class AttachFile:
    """Send a text file's contents as the next message."""

    path: str
    """The file to read (UTF-8 text, at most 1 MiB)."""


@dataclass(frozen=True)
class SwitchModel:
    """Go on with another model (`/model SPEC`), or choose one from those found here (`/model`)."""

    spec: str | None
    """`default`, a `.gguf` file, a model folder or ORG/NAME; None opens the picker."""


Command = (ApplySettings | SetSystem | ClearChat | ShowHelp | ShowHistory | SaveChat | LoadChat | ExportChat
           | AttachFile | SwitchModel)
"""Every parsed command."""
FILE_COMMANDS = {"save": SaveChat, "load": LoadChat, "export": ExportChat, "file": AttachFile}
"""Commands that take a file path."""


def is_command(text: str) -> bool:
    """True when `text` is a slash command rather than a message."""
    return text.startswith(COMMAND_PREFIX) and not text.startswith(LITERAL_PREFIX)


def message_text(text: str) -> str:
    """The message to send for `text` typed in the prompt (`//x` sends `/x`)."""
    return text[1:] if text.startswith(LITERAL_PREFIX) else text


def _setting_name(word: str) -> str:
    name = SETTING_ALIASES.get(word, word)
    if name not in SETTING_NAMES:
        known = ", ".join(SETTING_ALIASES)
        raise CommandError(f"unknown setting {shown(word)}; known: {known}")
    return name


def _apply(settings: SamplingSettings, pairs: list[tuple[str, str]]) -> ApplySettings:
    changed = settings
    for word, value in pairs:
        name = _setting_name(word)
        try:
            changed = changed.with_value(name, value)
        except SettingError as error:
            raise CommandError(str(error)) from None
    summary = " ".join(f"{_setting_name(w)}={getattr(changed, _setting_name(w))}" for w, _ in pairs)
    return ApplySettings(changed, summary)


def _parse_set(argument: str, settings: SamplingSettings) -> ApplySettings:
    pairs = []
    for item in argument.split():
        word, sep, value = item.partition("=")
        if not sep or not value:
            raise CommandError(f"/set takes name=value pairs, e.g. /set temp=0.5 topk=40; got {shown(item)}")
        pairs.append((word, value))
    if not pairs:
        raise CommandError("/set takes name=value pairs, e.g. /set temp=0.5 topk=40")
    return _apply(settings, pairs)


def settings_from(argument: str, settings: SamplingSettings) -> SamplingSettings:
    """`settings` changed by `/set`-style pairs (`temp=1.2 topk=10`); CommandError (one line)
    for a pair `/set` would refuse."""
    return _parse_set(argument, settings).settings


def parse_command(text: str, settings: SamplingSettings) -> Command:
    """Parse and validate a slash command against the current settings.

    Raises:
        CommandError: unknown command, missing value, or a value the setting refuses.
    """
    match = COMMAND_PATTERN.fullmatch(text.strip()[len(COMMAND_PREFIX):])
    name, argument = match.group(1).lower(), match.group(2).strip()
    if name in SETTING_ALIASES:
        if not argument or len(argument.split()) > 1:
            raise CommandError(f"/{name} takes one value, e.g. /{name} {_example(name)}")
        return _apply(settings, [(name, argument)])
    if name == "set":
        return _parse_set(argument, settings)
    if name == "system":
        return SetSystem(argument or None)
    if name in ("clear", "new"):
        return ClearChat()
    if name == "help":
        return ShowHelp()
    if name == "history":
        return ShowHistory()
    if name in FILE_COMMANDS:
        return _file_command(name, argument)
    if name == "model":
        if "\n" in argument or "\r" in argument:
            raise CommandError("/model takes one model on one line: default, a .gguf file, a folder or ORG/NAME")
        return SwitchModel(argument or None)
    raise CommandError(f"unknown command {shown(COMMAND_PREFIX + name)}; type /help for the list")


def _file_command(name: str, path: str) -> SaveChat | LoadChat | ExportChat | AttachFile:
    if not path:
        raise CommandError(f"/{name} takes a file path, e.g. /{name} {FILE_EXAMPLES[name]}")
    if "\n" in path or "\r" in path:
        raise CommandError(f"/{name} takes one file path on one line")
    if name == "export":
        try:
            export_format(path)
        except ExportError:
            raise CommandError(f"/export writes .md or .json files; got {shown(path)}") from None
    return FILE_COMMANDS[name](path)


def _example(name: str) -> str:
    return {"temp": "0.8", "topk": "40", "topp": "0.9", "minp": "0.05", "rep": "1.1", "max": "256"}.get(name, "42")
