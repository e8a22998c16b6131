"""The conversation as the TUI keeps it: plain data, no Textual, no torch.

A conversation is a list of exchanges; each exchange is one user message and the versions of
the assistant's reply to it (regenerations, branches and edits of the message add versions;
"‹ 1/2 ›" switches; nothing is replaced).

The versions make a tree. `Conversation.exchanges` is the branch on screen: each exchange with
its shown version, and after it the exchanges that followed that version. A version not shown
keeps the exchanges that followed it in `ReplyVersion.later`, so a new version of an earlier
reply (a regenerate, a branch at any token, an edited message) starts a branch of its own, and
switching versions moves between whole branches.
Widgets render these objects, the screen mutates them, and `messages_before` turns them into
the `{"role", "content"}` list the engine takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Literal

from chatapp.chat.records import Candidate, Step, TurnStats
from chatapp.chat.settings import SamplingSettings

ReplyStatus = Literal["streaming", "done", "stopped", "error"]
"""Where a reply version stands: being written, finished, stopped by the user, or failed."""


@dataclass
class ReplyVersion:
    """One version of an assistant reply, with every step the LM head took to write it."""

    settings: SamplingSettings
    """The sampling settings this version was generated with (the panel title shows them)."""
    steps: list[Step] = field(default_factory=list)
    """One record per token, forced ones (branching) included."""
    text: str = ""
    """The reply text: joined step deltas while streaming, the engine's full text once done."""
    stats: TurnStats | None = None
    """The turn's statistics once it has ended."""
    status: ReplyStatus = "streaming"
    """Where this version stands."""
    branched_at: int | None = None
    """Index of the forced step when this version is a branch of another."""
    error: str = ""
    """One-line error when `status` is "error"."""
    user: str | None = None
    """The user message this version answers when an edit changed it; None: the exchange's own."""
    model: str = ""
    """The name of the model that wrote this version ("" when not recorded: saved before
    chatapp recorded it)."""
    model_spec: str = ""
    """The `--model` spec that loads the model that wrote this version ("" when not recorded)."""
    system: str | None = None
    """The system prompt the model read before the conversation when it wrote this version."""
    system_recorded: bool = True
    """False for a version saved before chatapp recorded `system` (the chat's own system
    prompt then stands in for it)."""
    later: list[Exchange] = field(default_factory=list)
    """The exchanges that followed this version, kept here while another version of its
    exchange is shown; empty for the shown version (the conversation holds its own)."""

    @property
    def cut_at_limit(self) -> bool:
        """Whether the reply ended because it reached `settings.max_new_tokens`, not on its own."""
        return self.status == "done" and self.stats is not None and self.stats.finish_reason == "length"

    @property
    def limit_note(self) -> str:
        """How a reply cut at its length limit is marked, e.g. "cut at the 512-token limit"."""
        return f"cut at the {self.settings.max_new_tokens}-token limit"

    def add_steps(self, steps: Iterable[Step]) -> str:
        """Append streamed steps; return the text they add."""
        steps = list(steps)
        self.steps.extend(steps)
        added = "".join(s.text for s in steps)
        self.text += added
        return added

    def finish(self, stats: TurnStats) -> None:
        """Record the turn's end; the engine's text is authoritative (held-back bytes included)."""
        self.stats = stats
        self.text = stats.text or self.text
        self.status = {"cancelled": "stopped", "error": "error"}.get(stats.finish_reason, "done")

    def fail(self, message: str) -> None:
        """Mark the version as failed, keeping what was written."""
        self.status = "error"
        self.error = message


@dataclass
class Exchange:
    """A user message and the versions of the reply to it."""

    user: str
    """What the user sent."""
    versions: list[ReplyVersion] = field(default_factory=list)
    """Reply versions, oldest first."""
    current: int = 0
    """Index of the version shown (and sent to the model as context)."""

    @property
    def reply(self) -> ReplyVersion | None:
        """The version shown, if any."""
        return self.versions[self.current] if self.versions else None

    @property
    def shown_user(self) -> str:
        """The user message as the shown version answers it (an edit's text, or `user`)."""
        reply = self.reply
        return reply.user if reply is not None and reply.user is not None else self.user

    def add_version(self, version: ReplyVersion) -> ReplyVersion:
        """Append a version and show it (of an exchange with none after it: in a conversation,
        `Conversation.add_version` keeps the branch that follows)."""
        self.versions.append(version)
        self.current = len(self.versions) - 1
        return version

    def switch(self, delta: int) -> bool:
        """Show the previous (-1) or next (+1) version; False when there is none (of an
        exchange with none after it: in a conversation, `Conversation.switch` moves branches)."""
        target = self.current + delta
        if not 0 <= target < len(self.versions):
            return False
        self.current = target
        return True


@dataclass
class Conversation:
    """Everything said so far, with an optional system prompt."""

    system: str | None = None
    """System prompt sent before the first message."""
    exchanges: list[Exchange] = field(default_factory=list)
    """User messages and their replies, in order."""

    @property
    def last(self) -> Exchange | None:
        """The most recent exchange."""
        return self.exchanges[-1] if self.exchanges else None

    def add_version(self, index: int, version: ReplyVersion) -> ReplyVersion:
        """Show `version` as exchange `index`'s reply, starting a branch: the exchanges after
        it stay with the version shown until now (in its `later`)."""
        self._put_away_after(index)
        return self.exchanges[index].add_version(version)

    def switch(self, index: int, delta: int) -> bool:
        """Show the previous (-1) or next (+1) version of exchange `index` with the exchanges
        that followed it (its whole branch); False when there is none."""
        exchange = self.exchanges[index]
        if not 0 <= exchange.current + delta < len(exchange.versions):
            return False
        self._put_away_after(index)
        exchange.current += delta
        self.exchanges.extend(exchange.reply.later)
        exchange.reply.later = []
        return True

    def _put_away_after(self, index: int) -> None:
        """Move the exchanges after `index` into its shown version's `later` (an exchange with
        no reply yet keeps them: there is no version to hold them)."""
        reply = self.exchanges[index].reply
        if reply is not None:
            reply.later = self.exchanges[index + 1:]
            del self.exchanges[index + 1:]

    @property
    def branched(self) -> bool:
        """Whether any exchange, shown or put away, holds a branch that is not shown."""
        return any(version.later for exchange in walk(self.exchanges) for version in exchange.versions)

    def latest_settings(self) -> SamplingSettings | None:
        """The sampling settings of the latest shown reply: what a reopened chat continues with."""
        for exchange in reversed(self.exchanges):
            if exchange.reply is not None:
                return exchange.reply.settings
        return None

    def last_finished(self) -> ReplyVersion | None:
        """The latest shown reply whose turn has ended (a reply being written has no stats yet)."""
        for exchange in reversed(self.exchanges):
            if exchange.reply is not None and exchange.reply.stats is not None:
                return exchange.reply
        return None

    def system_changes(self) -> list[tuple[int, str | None]]:
        """Where the system prompt the replies were written with changed: (exchange index, the
        prompt from there on), the first entry at index 0 when the first reply had one. A
        prompt set after the last reply (read from the next message on) comes last, at
        `len(exchanges)`."""
        changes: list[tuple[int, str | None]] = []
        current: str | None = None
        for index, exchange in enumerate(self.exchanges):
            reply = exchange.reply
            if reply is None:
                continue
            system = reply.system if reply.system_recorded else self.system
            if system != current:
                changes.append((index, system))
                current = system
        if self.system != current:
            changes.append((len(self.exchanges), self.system))
        return changes

    def messages_before(self, index: int) -> list[dict]:
        """The messages the model sees to write the reply of exchange `index`."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for exchange in self.exchanges[:index]:
            messages.append({"role": "user", "content": exchange.shown_user})
            reply = exchange.reply
            if reply is not None and reply.text:
                messages.append({"role": "assistant", "content": reply.text})
        messages.append({"role": "user", "content": self.exchanges[index].shown_user})
        return messages


def walk(exchanges: list[Exchange]) -> Iterable[Exchange]:
    """Every exchange of the tree from `exchanges`: each one, then those its versions put away."""
    for exchange in exchanges:
        yield exchange
        for version in exchange.versions:
            yield from walk(version.later)


def raw_rank(candidates: tuple[Candidate, ...], candidate: Candidate) -> int:
    """1-based rank of `candidate` by raw probability among the listed candidates."""
    return 1 + sum(1 for c in candidates if c.raw_prob > candidate.raw_prob)


def forced_step(old: Step, candidate: Candidate, stop_ids: frozenset[int] = frozenset()) -> Step:
    """The record of a branch's imposed token, built from the step it replaces.

    The candidates, entropy and probabilities are what the LM head computed at that step; only
    the choice differs. A lone partial character adds no text yet (the next step completes it).
    """
    is_stop = candidate.token_id in stop_ids
    text = "" if is_stop or "\ufffd" in candidate.text else candidate.text
    return replace(
        old,
        token_id=candidate.token_id,
        text=text,
        prob=candidate.prob,
        raw_prob=candidate.raw_prob,
        rank=raw_rank(old.top, candidate),
        is_stop=is_stop,
        forced=True,
        piece=candidate.piece,
    )


def branch_version(old: ReplyVersion, index: int, candidate: Candidate, settings: SamplingSettings,
                   stop_ids: frozenset[int] = frozenset()) -> tuple[ReplyVersion, list[int]]:
    """A new version cut at step `index` with `candidate` forced, and the reply prefix ids to send."""
    kept = old.steps[:index]
    forced = forced_step(old.steps[index], candidate, stop_ids)
    version = ReplyVersion(settings=settings, branched_at=index, user=old.user)
    version.add_steps([*kept, forced])
    prefix_ids = [s.token_id for s in kept] + [candidate.token_id]
    return version, prefix_ids
