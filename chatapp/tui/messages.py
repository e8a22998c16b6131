"""Messages the engine thread posts to the chat screen.

Each is a small dataclass. `job` ties a generation message to the turn that produced it, so
messages from a cancelled turn that arrive late are ignored. `CandidatesUpdated` only matters
for its latest value, so a newer one replaces an older one still in the queue.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from chatapp.records import Step, TurnStats


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
    """A batch of new steps of the reply being generated."""

    job: int
    """The generation this batch belongs to."""
    steps: list[Step]
    """New steps, in order."""


@dataclass
class CandidatesUpdated(Message):
    """The latest step, for the candidates panel; only the newest one matters."""

    job: int
    """The generation this step belongs to."""
    step: Step
    """The step whose candidates to show."""

    def can_replace(self, message: Message) -> bool:
        """A newer panel update supersedes a queued one of the same generation."""
        return isinstance(message, CandidatesUpdated) and message.job == self.job


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
