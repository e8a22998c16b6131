"""Step mode: the model proposes each next token and the user picks it (#19, item 4).

A step-mode reply is an ordinary reply job whose body is `run_step_mode` instead of one turn:
each step is a one-token turn from the KV cache (the tokens picked so far as the reply's prefix),
reported as `StepProposed`; the engine thread then waits for the user's answer in `StepPicks`:
a candidate (the model's own draw, or any listed one, forced like a branch's), `FINISH` (the
model writes the rest as it would have), or stop. Every token is still chosen through the seed's
LM head: the proposal is its draw, and a pick only replaces the draw by another of its rows.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass, replace
from typing import Callable, Literal

from chatapp.chat.conversation import forced_step
from chatapp.chat.records import Candidate, Step, TurnStats
from chatapp.session.reply_stream import ReplyEvent, ReplyJob, StreamPacing, TokensGenerated, TurnFinished, stream_turn

FINISH: Literal["finish"] = "finish"
"""The answer that lets the model write the rest of the reply."""


@dataclass(frozen=True)
class StepProposed:
    """The model's proposal for the next step of a step-mode reply, waiting for the user."""

    job: int
    """The reply job asking."""
    step: Step
    """The step as the model sampled it: its draw and its candidates."""


class StepPicks:
    """The user's answers to proposals, passed from the UI thread to the engine thread."""

    def __init__(self) -> None:
        self._answers: queue.SimpleQueue[Candidate | str | None] = queue.SimpleQueue()

    def pick(self, candidate: Candidate) -> None:
        """Take `candidate` as the next token."""
        self._answers.put(candidate)

    def finish(self) -> None:
        """Let the model write the rest."""
        self._answers.put(FINISH)

    def stop(self) -> None:
        """End the reply here (also wakes a step waiting for an answer)."""
        self._answers.put(None)

    def next(self) -> Candidate | str | None:
        """The next answer (blocks until there is one)."""
        return self._answers.get()


def run_step_mode(engine, job: ReplyJob, picks: StepPicks, report: Callable[[ReplyEvent | StepProposed], object],
                  pacing: StreamPacing | None = None) -> None:
    """On the engine thread: write `job`'s reply one proposal and one pick at a time, then, on
    `FINISH`, the rest as one turn; reports `StepProposed`, `TokensGenerated` (each picked step)
    and `TurnFinished` as any reply does."""
    prefix = list(job.prefix_ids)
    stop_ids = getattr(engine, "stop_ids", frozenset())
    one_step = replace(job.settings, max_new_tokens=1, stop=())
    picked = 0
    while True:
        turn = engine.start_turn(job.messages, one_step, reply_prefix_ids=prefix, stop=job.stopped)
        steps = list(turn)
        stats = turn.stats
        if not steps or job.stopped.is_set():
            report(TurnFinished(job.job, TurnStats(tokens=picked, prompt_tokens=stats.prompt_tokens,
                                                   finish_reason="cancelled")))
            return
        [proposal] = steps
        report(StepProposed(job.job, proposal))
        answer = picks.next()
        if answer is None or job.stopped.is_set():
            report(TurnFinished(job.job, TurnStats(tokens=picked, prompt_tokens=stats.prompt_tokens,
                                                   finish_reason="cancelled")))
            return
        if answer == FINISH:
            rest = replace(job.settings, max_new_tokens=max(1, job.settings.max_new_tokens - picked))
            turn = engine.start_turn(job.messages, rest, reply_prefix_ids=prefix, stop=job.stopped)
            stream_turn(turn, job.job, report, job.stopped.is_set, pacing=pacing)
            return
        step = proposal if answer.token_id == proposal.token_id else forced_step(proposal, answer, stop_ids)
        picked += 1
        prefix.append(step.token_id)
        report(TokensGenerated(job.job, [step], step, None, stats.prompt_tokens, stats.cached_tokens))
        if step.is_stop or picked >= job.settings.max_new_tokens:
            reason = "stop" if step.is_stop else "length"
            report(TurnFinished(job.job, TurnStats(tokens=picked, prompt_tokens=stats.prompt_tokens,
                                                   finish_reason=reason)))
            return
