"""One turn of the engine, run on the engine thread and reported in batches of plain events.

`stream_turn` is the body of a reply job (`ChatSession.run`), free of any UI so tests can run it
directly; it reports `TokensGenerated`, then `TurnFinished` or `TurnFailed`, through the callable
it is given (the TUI posts each event to its screen as a message). Steps are posted in batches,
and the candidates panel follows the latest step at half that pace; the final step always
reaches the panel. Every update is drawn on the UI thread, which takes CPU from the decoder's
threads on a small CPU (and the GIL from a GPU's Python-bound loop), so the pace is set by
`StreamPacing`: text every 0.4 s while drawing is cheap, less often when the updates cost the UI
thread more than its budget (long replies that scroll, big terminals, slow machines). While a
UI that says when it has drawn a batch (`StreamPacing.ui_says_drawn`, `drawn`) draws one, the
turn's decode steps leave it a core (`ChatTurn.spare_core`), taken back the moment it has drawn
(`ChatTurn.core_back`).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from chatapp.chat.records import Step, TurnStats
from chatapp.chat.settings import SamplingSettings

MIN_BATCH_SECONDS = 0.4
"""Shortest wait before new text is posted: 2.5 updates a second read as live."""
MAX_BATCH_SECONDS = 1.0
"""Longest wait before new text is posted, however costly drawing gets."""
PANEL_BATCHES = 2
"""The candidates panel is updated at most every this many text intervals while streaming.

Nobody reads candidates faster than this, and each redraw of the panel costs the model time."""
UI_CPU_BUDGET = 0.04
"""Share of the time while a reply is written that the UI thread may spend on its updates.

On a small CPU, what the UI thread spends is taken from the decoder about one for one, so the
pace of updates follows their cost (the measurements: README, Performance, "The TUI's cost")."""
PACING_SMOOTHING = 0.5
"""Weight of the newest measurement when the text interval is adjusted (the rest is the old one)."""
MAX_DRAW_SECONDS = 0.1
"""Longest the decode steps leave the UI a core after a batch was posted (drawing one takes 5-20 ms
here), should the UI never say it drew it."""
MAX_ERROR_CHARS = 300
"""Longest error line shown to the user."""


@dataclass
class StreamPacing:
    """How often the worker posts new text (the UI thread widens it when its updates cost more
    than `UI_CPU_BUDGET`), and whether the UI is drawing what was posted.

    The UI thread writes `batch_seconds`, both threads write `drawing_since`, and the engine
    thread reads them at every step: attributes read and written whole under the GIL.
    """

    batch_seconds: float = MIN_BATCH_SECONDS
    """Current longest wait before new text is posted."""
    ui_says_drawn: bool = False
    """Whether a UI calls `drawn` once it has drawn what was posted: only then do the turn's
    steps leave it a core meanwhile (`ChatTurn.spare_core`)."""
    ui_thread: int | None = None
    """Linux id (`threading.get_native_id`) of the thread that draws the batches, where the UI
    says so: the turn binds it to the CPU its steps leave it (`ChatTurn.ui_thread`)."""
    drawing_since: float | None = None
    """When the latest batch was posted (`time.monotonic`), until the UI has drawn it (None)."""
    core_back: Callable[[], None] | None = None
    """What `drawn` calls, set by `stream_turn`: the turn's `core_back`, so a step that left the
    UI a core takes it back the moment the UI has drawn, not at the next step."""

    @property
    def panel_seconds(self) -> float:
        """Shortest gap between candidate-panel updates while streaming."""
        return PANEL_BATCHES * self.batch_seconds

    def drawing(self) -> None:
        """(engine thread) A batch was posted: the UI draws it from now on."""
        self.drawing_since = time.monotonic()

    def drawn(self) -> None:
        """(UI thread) What was posted is drawn (handed to the terminal): the turn takes its
        core back at once."""
        self.drawing_since = None
        core_back = self.core_back
        if core_back is not None:
            core_back()

    def ui_drawing(self, now: float | None = None) -> bool:
        """Whether the UI is drawing a batch at `now` (default: this moment), for at most
        `MAX_DRAW_SECONDS` after it was posted, in case the UI never says it drew it."""
        since = self.drawing_since
        if since is None:
            return False
        return (time.monotonic() if now is None else now) - since < MAX_DRAW_SECONDS

    def observe(self, update_cpu_seconds: float) -> None:
        """Adjust to one update that cost the UI thread `update_cpu_seconds` of CPU time.

        The interval that keeps such updates within the budget is `cost / UI_CPU_BUDGET`, kept
        between `MIN_BATCH_SECONDS` and `MAX_BATCH_SECONDS`; the current one moves toward it.
        """
        wanted = min(MAX_BATCH_SECONDS, max(MIN_BATCH_SECONDS, update_cpu_seconds / UI_CPU_BUDGET))
        self.batch_seconds += PACING_SMOOTHING * (wanted - self.batch_seconds)


@dataclass(frozen=True)
class TokensGenerated:
    """A batch of new steps of the reply being written, and the step the candidates panel shows
    next when its update is due, so that the two are drawn together."""

    job: int
    """The reply job this batch belongs to."""
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
    ttft_ms: float | None = None
    """Milliseconds from the turn's start to its first token (known from the first batch on)."""


@dataclass(frozen=True)
class PromptRead:
    """How much of a long prompt the model has read, before the reply's first token."""

    job: int
    """The reply job reading it."""
    done: int
    """Prompt tokens run through the model so far (those the cache held not counted)."""
    total: int
    """Prompt tokens to run."""
    prompt_tokens: int = 0
    """The whole prompt, those the cache held included (the context it fills)."""


@dataclass(frozen=True)
class TurnFinished:
    """A reply ended (stop token, length limit or cancel)."""

    job: int
    """The reply job that ended."""
    stats: TurnStats
    """Its statistics and full text."""


@dataclass(frozen=True)
class TurnFailed:
    """A reply could not be generated; the conversation is kept."""

    job: int
    """The reply job that failed."""
    error: str
    """One-line reason."""


ReplyEvent = PromptRead | TokensGenerated | TurnFinished | TurnFailed
"""What a reply job reports, in order: a long prompt's progress, batches, then one end."""


@dataclass(frozen=True)
class ReplyJob:
    """What one reply needs: the conversation up to it, how to sample it, and its stop signal."""

    job: int
    """Sequence number; events of older jobs are ignored."""
    exchange: int
    """Index of the exchange whose reply is generated."""
    messages: list[dict]
    """The conversation the model answers."""
    settings: SamplingSettings
    """Sampling settings for this reply."""
    prefix_ids: tuple[int, ...] = field(default=())
    """Tokens the reply must start with (branching)."""
    stopped: threading.Event = field(default_factory=threading.Event, compare=False)
    """Set (from any thread) to stop the reply before its next step; the only way a reply is
    stopped (`ChatSession.stop`), and the turn's own stop signal."""
    picks: object = field(default=None, compare=False)
    """Step mode's `StepPicks` (the user picks each token), or None for a reply the model writes."""


def one_line(error: BaseException) -> str:
    """A one-line, bounded description of an exception for a notification."""
    text = (str(error).strip().splitlines() or [""])[0] or type(error).__name__
    return text[:MAX_ERROR_CHARS]


def stream_turn(
    turn,
    job: int,
    post: Callable[[ReplyEvent], object],
    is_cancelled: Callable[[], bool],
    clock: Callable[[], float] = time.monotonic,
    pacing: StreamPacing | None = None,
) -> None:
    """Iterate `turn`, posting batched steps (with the latest candidates when due) and how it ended.

    Args:
        turn: an engine `Turn` (iterable of `Step`, with `cancel()` and `stats`).
        job: the job number stamped on every message.
        post: thread-safe receiver of the events (the TUI posts them to its screen).
        is_cancelled: True once the reply is to stop; the turn then stops before its next step.
        clock: time source, injectable for tests.
        pacing: how often to post (read at every step); None for the fastest pace.
    """
    pacing = pacing or StreamPacing()
    pending: list[Step] = []
    last_post = last_panel = -math.inf  # the first token is shown at once: it is the time-to-first-token
    unshown: Step | None = None  # the newest step not yet shown in the panel
    first_at, steps = None, 0  # when the first token came, and how many have come

    def flush(final: bool = False) -> None:
        nonlocal pending, last_post, last_panel, unshown
        now = clock()
        unshown = pending[-1] if pending else unshown
        candidates = None
        if unshown is not None and (final or now - last_panel >= pacing.panel_seconds):
            candidates, unshown, last_panel = unshown, None, now
        if pending or candidates is not None:
            speed = (steps - 1) / (now - first_at) if steps > 1 and now > first_at else None
            stats = turn.stats
            pacing.drawing()  # before the post: the UI may have drawn the batch before it returns
            post(TokensGenerated(job, pending, candidates, speed, stats.prompt_tokens, stats.cached_tokens,
                                 stats.ttft_ms or None))
        pending, last_post = [], now

    try:
        if pacing.ui_says_drawn:
            turn.spare_core = pacing.ui_drawing  # the UI draws a batch on a core of its own
            pacing.core_back = turn.core_back  # and gives it back as soon as it has drawn
            turn.ui_thread = pacing.ui_thread  # on the CPU the steps leave it
        for step in turn:
            steps += 1
            first_at = clock() if first_at is None else first_at
            pending.append(step)
            if clock() - last_post >= pacing.batch_seconds:
                flush()
            if is_cancelled():
                turn.cancel()
    except Exception as error:  # any engine failure becomes a notification, never a crash
        flush(final=True)
        post(TurnFailed(job, one_line(error)))
        return
    flush(final=True)
    post(TurnFinished(job, turn.stats))
