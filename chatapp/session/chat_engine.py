"""What a chat needs of an engine: the protocol that `chatapp.engine.engine.Engine` and the
tests' `FakeEngine` both implement, so the session and the TUI never depend on torch."""

from __future__ import annotations

import threading
from typing import Callable, Iterator, Protocol, runtime_checkable

from chatapp.chat.records import LensEntry, ModelInfo, Step, TurnStats, WatchedToken, WhatIf
from chatapp.chat.settings import SamplingSettings


@runtime_checkable
class ChatTurn(Protocol):
    """One reply being written: an iterator of steps that ends with its statistics."""

    stats: TurnStats
    """The turn's figures, complete once iteration ends."""
    on_prefill: Callable[[int, int], None] | None
    """Called with (tokens read, tokens to read) while a long prompt is read, if set."""
    spare_core: Callable[[], bool] | None
    """Asked before each decode step, if set: while it answers True (a UI is drawing what the turn
    reported), the step leaves that UI a CPU core where it can (the same numbers)."""
    ui_thread: int | None
    """Linux id of the thread that draws the turn's steps, if set: bound to the CPU core the steps
    leave it, where they lend one, for the length of the turn."""

    def __iter__(self) -> Iterator[Step]:
        """One `Step` per token, each chosen through `chatapp.lm_head`."""
        ...

    def cancel(self) -> None:
        """End before the next step, as "cancelled" (safe from any thread)."""
        ...

    def core_back(self) -> None:
        """The UI has drawn (any thread): a step leaving it a core (`spare_core`) takes it back
        now, in the middle of the step, where it can."""
        ...


@runtime_checkable
class ChatEngine(Protocol):
    """A loaded model that answers conversations one turn at a time (on the engine thread)."""

    info: ModelInfo
    """The model's name, device, dtype and context window."""
    stop_ids: frozenset[int]
    """Token ids that end a reply."""

    @property
    def activity(self) -> str | None:
        """What the runtime is doing that the user should know (e.g. a kernel compiling), or None."""
        ...

    def start_turn(self, messages: list[dict], settings: SamplingSettings,
                   reply_prefix_ids: list[int] | tuple[int, ...] = (),
                   stop: threading.Event | None = None) -> ChatTurn:
        """A turn answering `messages`; the reply starts with `reply_prefix_ids` (a branch), and
        ends before its next step, or between the pieces of a long prompt, once `stop` is set."""
        ...

    def reset(self) -> None:
        """Forget the KV cache (another conversation follows)."""
        ...

    def token_of(self, text: str) -> int:
        """The one token `text` is; ValueError (one line) when it is not one token."""
        ...

    def odds_at(self, messages: list[dict], prefix_ids: list[int], settings: SamplingSettings,
                token_id: int) -> WatchedToken:
        """`token_id`'s numbers at the step after `prefix_ids` of the reply to `messages`, run
        again by the model (the inspector's look-up)."""
        ...

    def lens_at(self, messages: list[dict], prefix_ids: list[int], settings: SamplingSettings
                ) -> tuple[LensEntry, ...]:
        """The logit lens at the step after `prefix_ids` of the reply to `messages`: each layer's
        top token through the LM head, the last being the step's own top candidate."""
        ...

    def what_if_at(self, messages: list[dict], prefix_ids: list[int], settings: SamplingSettings,
                   other: SamplingSettings, chosen_id: int) -> WhatIf:
        """That step (sampled with `settings`, where `chosen_id` was chosen) as `other` settings
        would have sampled it, run again by the model."""
        ...
