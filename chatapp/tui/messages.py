"""Messages the engine thread posts to the chat screen.

Each is a small dataclass. `job` ties a generation message to the turn that produced it, so
messages from a cancelled turn that arrive late are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from chatapp.chat.records import Step, TurnStats


@dataclass
class LoadProgress(Message):
    """A one-line description of what model loading is doing."""

    text: str
    """E.g. "loading SmolLM2-135M-Instruct on cpu (float32)"."""


@dataclass
class EngineLoaded(Message):
    """The engine is ready."""

    engine: object
    """The loaded `Engine` (or a test's stand-in with the same interface)."""


@dataclass
class LoadFailed(Message):
    """Loading the model failed."""

    error: str
    """One-line reason, for the screen."""


@dataclass
class TokensGenerated(Message):
    """A batch of new steps of the reply being written, and the step the candidates panel shows
    next when its update is due, so that the two are drawn together."""

    job: int
    """The generation this batch belongs to."""
    steps: list[Step]
    """New steps, in order (none when only the panel catches up with the last step)."""
    candidates: Step | None = None
    """The step whose candidates to show now, or None to leave the panel as it is."""
    tok_per_s: float | None = None
    """Decode speed of the reply so far, from its first token to this batch (None before the second)."""
    prompt_tokens: int = 0
    """The turn's prompt length (known from its first step on)."""
    cached_tokens: int | None = None
    """How many of them the KV cache held."""


@dataclass
class TurnFinished(Message):
    """A reply ended (stop token, length limit or cancel)."""

    job: int
    """The generation that ended."""
    stats: TurnStats
    """Its statistics and full text."""


@dataclass
class TurnFailed(Message):
    """A reply could not be generated; the conversation is kept."""

    job: int
    """The generation that failed."""
    error: str
    """One-line reason."""
