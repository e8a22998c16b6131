"""Runs one turn of the engine on the engine thread and reports it to the UI in batches.

`stream_turn` is the body of the screen's generation job, kept free of widgets so tests can run
it directly. Steps are posted in batches at most `BATCH_SECONDS` apart, and the candidates
panel follows the latest step at most every `PANEL_SECONDS`: every redraw runs on the UI thread,
which takes the GIL from the model (on a GPU the decode loop is Python-bound), so redrawing per
token would cost tokens per second. The final step always reaches the panel.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

from textual.message import Message

from chatapp.records import Step
from chatapp.settings import SamplingSettings
from chatapp.tui.messages import CandidatesUpdated, TokensGenerated, TurnFailed, TurnFinished

BATCH_SECONDS = 0.4
"""Longest wait before new text is posted. Each update re-renders the growing Markdown reply and
lays the screen out twice on the UI thread (Textual re-runs layout when the reply's size
changes), 15-25 ms of Python that a 2-core CPU takes from the decoder's threads (and on a GPU,
the GIL from its Python-bound loop). Measured as the UI thread's share of a 256-token turn on
this 2-core machine: about 11-12% at 0.3 s with the panel at 0.5 s, 8-9% at 0.5 s with the panel
at 0.8 s, and about 4% with no updates at all. 2.5 updates a second still read as live."""
PANEL_SECONDS = 0.8
"""Shortest gap between candidate-panel updates while streaming; the last step is always shown.

Nobody reads candidates faster than this, and each redraw of the panel costs the model time."""
MAX_ERROR_CHARS = 300
"""Longest error line shown to the user."""


@dataclass(frozen=True)
class GenerationJob:
    """What one generation needs: the conversation up to the reply, and how to sample it."""

    job: int
    """Sequence number; messages of older jobs are ignored."""
    exchange: int
    """Index of the exchange whose reply is generated."""
    messages: list[dict]
    """The conversation the model answers."""
    settings: SamplingSettings
    """Sampling settings for this reply."""
    prefix_ids: tuple[int, ...] = field(default=())
    """Tokens the reply must start with (branching)."""


def one_line(error: BaseException) -> str:
    """A one-line, bounded description of an exception for a notification."""
    text = (str(error).strip().splitlines() or [""])[0] or type(error).__name__
    return text[:MAX_ERROR_CHARS]


def stream_turn(
    turn,
    job: int,
    post: Callable[[Message], object],
    is_cancelled: Callable[[], bool],
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Iterate `turn`, posting batched steps, the latest candidates, and how it ended.

    Args:
        turn: an engine `Turn` (iterable of `Step`, with `cancel()` and `stats`).
        job: the job number stamped on every message.
        post: thread-safe message poster (the screen's `post_message`).
        is_cancelled: True once the worker is cancelled; the turn then stops before its next step.
        clock: time source, injectable for tests.
    """
    pending: list[Step] = []
    last_post = last_panel = -math.inf  # the first token is shown at once: it is the time-to-first-token
    unshown: Step | None = None  # the newest step posted as text but not yet to the panel

    def flush(final: bool = False) -> None:
        nonlocal pending, last_post, last_panel, unshown
        now = clock()
        if pending:
            post(TokensGenerated(job, pending))
            unshown = pending[-1]
            pending = []
        if unshown is not None and (final or now - last_panel >= PANEL_SECONDS):
            post(CandidatesUpdated(job, unshown))
            unshown, last_panel = None, now
        last_post = now

    try:
        for step in turn:
            pending.append(step)
            if clock() - last_post >= BATCH_SECONDS:
                flush()
            if is_cancelled():
                turn.cancel()
    except Exception as error:  # any engine failure becomes a notification, never a crash
        flush(final=True)
        post(TurnFailed(job, one_line(error)))
        return
    flush(final=True)
    post(TurnFinished(job, turn.stats))
