"""Messages the engine thread posts to the chat screen.

Each is a small dataclass. A reply's events are the session's own (`chatapp.session.reply_stream`),
wrapped in `ReplyReported`; the session ignores those of a job that has ended.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from chatapp.session.reply_stream import ReplyEvent


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
class ReplyReported(Message):
    """An event of the reply job, posted from the engine thread (`ChatSession.run`)."""

    event: ReplyEvent
    """A batch of steps, or how the reply ended."""


@dataclass
class ModelProgress(Message):
    """A one-line description of what loading another model is doing."""

    text: str
    """E.g. "converting the GGUF file…"."""


@dataclass
class ModelSwitched(Message):
    """Another model is loaded, to go on with."""

    spec: str
    """What was asked for."""
    engine: object
    """Its engine."""


@dataclass
class ModelSwitchFailed(Message):
    """Another model could not be loaded; the chat goes on with the one it had."""

    spec: str
    """What was asked for."""
    error: str
    """One-line reason."""
