"""Slash commands typed in the prompt: parsed and validated here, applied by the screen.

`/temp 0.8`, `/topk 40`, `/topp 0.9`, `/minp 0.05`, `/rep 1.1`, `/max 256`, `/seed 7` (or
`off`), `/set temp=0.5 topk=40` (several at once, all or nothing), `/system TEXT`, `/clear`,
`/help`. A bad command raises `CommandError` whose message is one line for the user.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatapp.settings import SETTING_NAMES, SamplingSettings, SettingError

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
}
"""Short command names of the sampling settings."""
HELP_TEXT = """\
Slash commands
  /temp X      temperature (0 = greedy)       /topk N     keep the N likeliest (0 = all)
  /topp X      nucleus, or off                /minp X     min-p filter, or off
  /rep X       repetition penalty, or off     /max N      longest reply in tokens
  /seed N      fixed seed, or off             /set temp=0.5 topk=40 ...  several at once
  /system TEXT system prompt (empty clears)   /clear      new chat
  /help        this help                      //text      send text starting with "/"

Keys
  Enter send · Shift+Enter or Ctrl+J newline · Esc stop the reply / leave the inspector
  Ctrl+R regenerate · Ctrl+L (or Up in an empty prompt) edit the last message · Ctrl+N new chat
  Ctrl+T token inspector · Ctrl+O probability heatmap · Ctrl+P command palette · Ctrl+Q quit

Token inspector
  ←/→ token · Home/End first/last · PgUp/PgDn previous/next reply · ↑/↓ pick a candidate
  Enter branch from the picked candidate · ,/. previous/next version · click a token or a row
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


Command = ApplySettings | SetSystem | ClearChat | ShowHelp
"""Every parsed command."""


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
        raise CommandError(f"unknown setting {word!r}; known: {known}")
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
            raise CommandError(f"/set takes name=value pairs, e.g. /set temp=0.5 topk=40; got {item!r}")
        pairs.append((word, value))
    if not pairs:
        raise CommandError("/set takes name=value pairs, e.g. /set temp=0.5 topk=40")
    return _apply(settings, pairs)


def parse_command(text: str, settings: SamplingSettings) -> Command:
    """Parse and validate a slash command against the current settings.

    Raises:
        CommandError: unknown command, missing value, or a value the setting refuses.
    """
    name, _, argument = text.strip()[len(COMMAND_PREFIX):].partition(" ")
    name, argument = name.lower(), argument.strip()
    if name in SETTING_ALIASES:
        if not argument or " " in argument:
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
    raise CommandError(f"unknown command /{name}; type /help for the list")


def _example(name: str) -> str:
    return {"temp": "0.8", "topk": "40", "topp": "0.9", "minp": "0.05", "rep": "1.1", "max": "256"}.get(name, "42")
