"""Sampling settings and their validation, shared by flags, slash commands and the config file.

Pure Python: no torch, no Textual. Every bad value raises `SettingError` with one line that
names the setting and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Callable

DEFAULT_TEMPERATURE = 0.7
"""The seed's default temperature."""
DEFAULT_TOP_K = 50
"""The seed's default top-k."""
DEFAULT_MAX_NEW_TOKENS = 512
"""Longest reply, in tokens, unless the user asks for another."""
MAX_TEMPERATURE = 100.0
"""Beyond this the distribution is flat to float precision; larger values are surely typos."""
MAX_SEED = 2**63 - 1
"""torch.Generator seeds are 64-bit."""
MAX_MAX_NEW_TOKENS = 1_000_000
"""Upper bound for `max_new_tokens`; the context window limits it further at run time."""
MAX_STOP_SEQUENCES = 8
"""Most stop sequences at once."""
MAX_STOP_LENGTH = 100
"""Longest stop sequence, in characters."""
DEFAULT_TOP_N = 10
"""Candidates recorded and shown per step unless the user asks for another number (`--top`)."""


SHOWN_VALUE_LENGTH = 40
"""Longest excerpt of a bad value quoted back in an error message."""


def shown(value: Any) -> str:
    """`repr(value)` cut to a readable length, for one-line error messages."""
    text = repr(value)
    return text if len(text) <= SHOWN_VALUE_LENGTH else text[: SHOWN_VALUE_LENGTH - 1] + "…"


class SettingError(ValueError):
    """A setting's value is out of range or malformed; the message is one line for the user."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        """Describe the problem; `setting` names the field when one is at fault."""
        super().__init__(message)
        self.setting = setting
        """The setting at fault, e.g. "top_p", or None."""


@dataclass(frozen=True)
class SamplingSettings:
    """How the LM head turns logits into the next token. Off-by-default extras are None."""

    temperature: float = DEFAULT_TEMPERATURE
    """Logits are divided by this; 0 means greedy (argmax)."""
    top_k: int = DEFAULT_TOP_K
    """Keep the k most likely tokens; 0 keeps all."""
    top_p: float | None = None
    """Nucleus sampling: keep the smallest set whose probability reaches top_p."""
    min_p: float | None = None
    """Drop tokens below min_p times the top token's probability."""
    repetition_penalty: float | None = None
    """Divide positive (multiply negative) logits of tokens already in the conversation."""
    seed: int | None = None
    """Seed of the sampling generator; None draws a fresh seed per turn."""
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    """Longest reply in tokens."""
    stop: tuple[str, ...] = ()
    """Stop sequences: the reply ends where one first appears, and its text stops before it."""

    def validated(self) -> "SamplingSettings":
        """Return self after checking every field; raise `SettingError` on the first bad one.
        Stop sequences given as a list (JSON, TOML) come back as a tuple."""
        if isinstance(self.stop, list):
            return replace(self, stop=tuple(self.stop)).validated()
        for f in fields(self):
            _VALIDATORS[f.name](getattr(self, f.name))
        return self

    def with_value(self, name: str, text: str) -> "SamplingSettings":
        """A copy with setting `name` parsed from user text (e.g. from `/temp 0.8`)."""
        if name not in _PARSERS:
            raise SettingError(f"unknown setting {shown(name)}; known: {', '.join(SETTING_NAMES)}")
        return replace(self, **{name: _PARSERS[name](name, text)}).validated()

    def describe_sampling(self) -> str:
        """What shapes one step's distribution, e.g. "T=0.7 k=50 p=0.9"."""
        parts = [f"T={self.temperature:g}", f"k={self.top_k}"]
        if self.top_p is not None:
            parts.append(f"p={self.top_p:g}")
        if self.min_p is not None:
            parts.append(f"min-p={self.min_p:g}")
        if self.repetition_penalty is not None:
            parts.append(f"rep={self.repetition_penalty:g}")
        return " ".join(parts)

    def sampling_arguments(self) -> str:
        """The same as `/set` arguments, e.g. "temp=0.7 topk=50 topp=off minp=off rep=off"."""
        def value(v: float | None) -> str:
            return "off" if v is None else f"{v:g}"

        return (f"temp={self.temperature:g} topk={self.top_k} topp={value(self.top_p)} minp={value(self.min_p)} "
                f"rep={value(self.repetition_penalty)}")

    def describe(self) -> str:
        """A compact one-line summary for status lines, e.g. "T=0.7 k=50 p=0.9"."""
        parts = [self.describe_sampling()]
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        parts.append(f"max={self.max_new_tokens}")
        if self.stop:
            parts.append("stop=" + ",".join(repr(s)[1:-1] for s in self.stop))
        return " ".join(parts)


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SettingError(f"{name} must be a finite number, got {shown(value)}", name)
    return float(value)


def _check_temperature(v: Any) -> None:
    if not 0 <= _finite("temperature", v) <= MAX_TEMPERATURE:
        raise SettingError(f"temperature must be between 0 and {MAX_TEMPERATURE:g}, got {shown(v)}", "temperature")


def _check_int(name: str, v: Any, low: int, high: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise SettingError(f"{name} must be a whole number from {low} to {high}, got {shown(v)}", name)


def _check_optional_unit(name: str, v: Any, *, allow_zero: bool) -> None:
    if v is None:
        return
    x = _finite(name, v)
    if not ((0 <= x if allow_zero else 0 < x) and x <= 1):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise SettingError(f"{name} must be in {interval}, got {shown(v)}", name)


def _check_repetition_penalty(v: Any) -> None:
    if v is not None and not _finite("repetition_penalty", v) > 0:
        raise SettingError(f"repetition_penalty must be greater than 0, got {shown(v)}", "repetition_penalty")


def _check_stop(v: Any) -> None:
    if not isinstance(v, tuple) or len(v) > MAX_STOP_SEQUENCES:
        raise SettingError(f"stop takes at most {MAX_STOP_SEQUENCES} sequences, got {shown(v)}", "stop")
    for text in v:
        if not isinstance(text, str) or not 0 < len(text) <= MAX_STOP_LENGTH:
            raise SettingError(f"a stop sequence must be text of 1 to {MAX_STOP_LENGTH} characters, got {shown(text)}",
                               "stop")


_VALIDATORS: dict[str, Callable[[Any], None]] = {
    "temperature": _check_temperature,
    "top_k": lambda v: _check_int("top_k", v, 0, 2**31 - 1),
    "top_p": lambda v: _check_optional_unit("top_p", v, allow_zero=False),
    "min_p": lambda v: _check_optional_unit("min_p", v, allow_zero=True),
    "repetition_penalty": _check_repetition_penalty,
    "seed": lambda v: v is None or _check_int("seed", v, 0, MAX_SEED),
    "max_new_tokens": lambda v: _check_int("max_new_tokens", v, 1, MAX_MAX_NEW_TOKENS),
    "stop": _check_stop,
}

_OFF_WORDS = {"off", "none"}
"""Words that switch an optional setting off (e.g. `/topp off`)."""


def _parse_float(name: str, text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise SettingError(f"{name} must be a number, got {shown(text.strip())}", name) from None


def _parse_int(name: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise SettingError(f"{name} must be a whole number, got {shown(text.strip())}", name) from None


def _optional(parse: Callable[[str, str], Any]) -> Callable[[str, str], Any]:
    def parse_optional(name: str, text: str) -> Any:
        return None if text.strip().lower() in _OFF_WORDS else parse(name, text)

    return parse_optional


def _parse_stop(text: str) -> tuple[str, ...]:
    """`/stop TEXT`: the one stop sequence TEXT (`\\n` and `\\t` stand for a newline and a tab);
    `off` clears them."""
    if text.strip().lower() in _OFF_WORDS:
        return ()
    return (text.strip().replace("\\n", "\n").replace("\\t", "\t"),)


_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "temperature": _parse_float,
    "top_k": _parse_int,
    "top_p": _optional(_parse_float),
    "min_p": _optional(_parse_float),
    "repetition_penalty": _optional(_parse_float),
    "seed": _optional(_parse_int),
    "max_new_tokens": _parse_int,
    "stop": lambda name, text: _parse_stop(text),
}

SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in fields(SamplingSettings))
"""Every sampling setting, in declaration order."""
