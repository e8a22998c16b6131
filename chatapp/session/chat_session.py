"""`ChatSession`: one chat being had, without a UI.

The session owns the chat (through its `keeper`, which holds the `SavedChat` and decides when it
is written), the sampling settings new replies use, the engine once it is loaded, and the reply
job being written. A screen calls it and shows what changed; nothing of a screen runs on the
engine thread. Autosave follows the reply: its exchange is saved when it starts (with the user's
message), about every second while it streams, and when it ends or is stopped.

A reply's life, and which thread does what:
1. `start_reply` (UI thread) adds the version to its exchange and returns its `ReplyJob`;
2. `run(job, report)` (engine thread) runs the turn and reports its events (a long prompt's
   progress, batches of steps, the end); it reads only the job and the engine, never the
   conversation;
3. `add_steps`, `finish` and `fail` (UI thread) apply the events of the current job to its
   version and ignore those of an older one;
4. `stop` (any thread) is the one way a reply is stopped: it sets the job's `stopped` event,
   which is the turn's own stop signal (the engine checks it before every step and between
   the pieces of a long prompt). The reply then ends as "cancelled" through the same `finish`
   as any other;
5. `end_job` (UI thread) saves the reply and forgets the job; `abandon_job` forgets it at once
   for a reply still being written when the chat is cleared or replaced (it is kept, marked
   stopped and changed, and its late events are ignored).
"""

from __future__ import annotations

from typing import Callable

from chatapp.chat.conversation import Conversation, Exchange, ReplyVersion
from chatapp.chat.settings import SamplingSettings
from chatapp.session.chat_engine import ChatEngine
from chatapp.session.chat_keeper import ChatKeeper
from chatapp.session.reply_stream import (
    PromptRead,
    ReplyEvent,
    ReplyJob,
    StreamPacing,
    TokensGenerated,
    TurnFailed,
    TurnFinished,
    one_line,
    stream_turn,
)
from chatapp.session.step_mode import StepPicks, run_step_mode
from chatapp.storage.chat_file import SavedChat


class ChatSession:
    """The chat on screen, its settings, its engine and the reply being written."""

    def __init__(self, settings: SamplingSettings, keeper: ChatKeeper) -> None:
        """A session on `keeper`'s chat (a reopened one, or a new empty one) with `settings`."""
        self.keeper = keeper
        """The chat, and when and where it is written."""
        self.settings = settings
        self.engine: ChatEngine | None = None
        """The loaded engine, None while loading (or when loading failed); see `use_engine`."""
        self.job: ReplyJob | None = None
        """The reply being written, or None."""
        self.version: ReplyVersion | None = None
        """The version `job` writes (in its exchange's versions)."""
        self.live: TokensGenerated | None = None
        """The latest batch of the reply being written (its speed, prompt and cache figures)."""
        self.prompt_read: PromptRead | None = None
        """How far the model has read a long prompt of the reply being written (None for a
        short one, which is read in one piece)."""
        self.pacing = StreamPacing()
        """How often the engine thread reports; kept from reply to reply."""
        self._jobs = 0

    @property
    def settings(self) -> SamplingSettings:
        """Sampling settings for the next reply (flags, /set, a reopened chat's own): the chat's
        own settings, saved with it."""
        return self.keeper.saved.settings

    @settings.setter
    def settings(self, settings: SamplingSettings) -> None:
        self.keeper.saved.settings = settings

    def change_settings(self, settings: SamplingSettings) -> None:
        """Use `settings` from the next reply on, and save them with the chat."""
        self.settings = settings
        self.keeper.mark_changed(len(self.conversation.exchanges))  # the chat's row, no exchange
        self.keeper.autosave()

    def open_chat(self, chat: SavedChat, stored: bool) -> None:
        """Go on with `chat` (`stored`: the history holds it), the current one saved first; its
        settings are its own, else its latest reply's, else those in use now."""
        settings = chat.going_on_with() or self.settings
        self.keeper.replace(chat, stored)
        self.settings = settings

    def new_chat(self) -> None:
        """Save the chat and start a new, empty one with the same system prompt and settings."""
        settings = self.settings
        self.keeper.start_new()
        self.settings = settings

    @property
    def saved(self) -> SavedChat:
        """The chat: its id, title, and the conversation."""
        return self.keeper.saved

    def use_engine(self, engine: ChatEngine) -> None:
        """Answer with `engine` from now on (its model is recorded with the chat)."""
        self.engine = engine
        self.keeper.model = engine.info.name

    @property
    def conversation(self) -> Conversation:
        """The conversation of the chat."""
        return self.saved.conversation

    @property
    def generating(self) -> bool:
        """True while a reply is being written."""
        return self.job is not None

    def start_reply(self, index: int, version: ReplyVersion, prefix_ids: tuple[int, ...] = (),
                    step_mode: bool = False) -> ReplyJob:
        """Add `version` to exchange `index` (of any exchange: the ones after it stay with the
        version shown until now, a branch of their own) and return the job that writes the rest
        of it with the version's own settings (`prefix_ids`: the tokens it must start with, a
        branch's); in `step_mode`, the user picks each token through the job's `picks`."""
        self._stamp(version)
        self.conversation.add_version(index, version)  # a branch: what followed stays with the old version
        self.keeper.mark_changed(index)
        self._jobs += 1
        self.version, self.live, self.prompt_read = version, None, None
        self.job = ReplyJob(self._jobs, index, self.conversation.messages_before(index), version.settings, prefix_ids,
                             picks=StepPicks() if step_mode else None)
        return self.job

    def save_started(self) -> None:
        """(UI thread) Save the chat with the reply just started, while the model reads the
        prompt: the user's message is kept from the moment it is sent however long the reading
        takes, and the first batch of the reply, which the user is waiting for, has no save to
        wait for (the next one comes `AUTOSAVE_SECONDS` later)."""
        self.keeper.autosave()

    def run(self, job: ReplyJob, report: Callable[[ReplyEvent], object]) -> None:
        """On the engine thread: write `job`'s reply, reporting its events through `report`."""
        if job.picks is not None:
            try:
                run_step_mode(self.engine, job, job.picks, report, pacing=self.pacing)
            except Exception as error:  # as below: reported, the chat is kept
                report(TurnFailed(job.job, one_line(error)))
            return
        try:
            turn = self.engine.start_turn(job.messages, job.settings, reply_prefix_ids=list(job.prefix_ids),
                                          stop=job.stopped)
        except Exception as error:  # e.g. ContextOverflowError: reported, the chat is kept
            report(TurnFailed(job.job, one_line(error)))
            return
        turn.on_prefill = lambda done, total: report(PromptRead(job.job, done, total, turn.stats.prompt_tokens))
        stream_turn(turn, job.job, report, job.stopped.is_set, pacing=self.pacing)

    def stop(self) -> bool:
        """Stop the reply being written (from any thread); False when there is none."""
        job = self.job
        if job is None:
            return False
        job.stopped.set()
        if job.picks is not None:
            job.picks.stop()  # a step waiting for the user's pick
        return True

    def stop_and_save(self) -> bool:
        """Stop the reply being written (UI thread) and save what it has so far."""
        stopped = self.stop()
        if stopped:
            self.keeper.autosave()
        return stopped

    def is_current(self, event: ReplyEvent) -> bool:
        """Whether `event` comes from the job being written (not one that ended or was abandoned)."""
        return self.job is not None and self.job.job == event.job

    def read_prompt(self, event: PromptRead) -> bool:
        """Note how far a long prompt has been read; False for an older job's event."""
        if not self.is_current(event):
            return False
        self.prompt_read = event
        return True

    def add_steps(self, event: TokensGenerated) -> str | None:
        """Add a batch to the reply; the text it added, or None for an older job's batch."""
        if not self.is_current(event):
            return None
        self.live = event
        added = self.version.add_steps(event.steps)
        self.keeper.autosave_streaming(self.job.exchange)
        return added

    def finish(self, event: TurnFinished) -> bool:
        """Finish the reply with its statistics; False for an older job's event."""
        if not self.is_current(event):
            return False
        self.version.finish(event.stats)
        return True

    def fail(self, event: TurnFailed) -> bool:
        """Mark the reply failed; False for an older job's event."""
        if not self.is_current(event):
            return False
        self.version.fail(event.error)
        return True

    def end_job(self) -> int:
        """Save the ended job's reply and forget the job; the index of the exchange it wrote."""
        index = self._forget_job()
        self.keeper.autosave()
        return index

    def add_done_version(self, index: int, version: ReplyVersion) -> None:
        """Show `version`, already whole (a branch whose forced token ends it), as exchange
        `index`'s reply, a branch like any other, and save it."""
        version.status = "done"
        self._stamp(version)
        self.conversation.add_version(index, version)
        self.keeper.mark_changed(index)
        self.keeper.autosave()

    def _stamp(self, version: ReplyVersion) -> None:
        """Record in `version` the model that writes it and the system prompt it reads."""
        if self.engine is not None:
            version.model = self.engine.info.name
            version.model_spec = self.engine.info.spec
        version.system = self.conversation.system

    def written_with(self) -> tuple[str, str]:
        """The name and spec of the model that wrote the chat's latest reply ("" each when
        none is recorded)."""
        for exchange in reversed(self.conversation.exchanges):
            reply = exchange.reply
            if reply is not None and reply.model:
                return reply.model, reply.model_spec
        return "", ""

    def switch_version(self, index: int, delta: int) -> bool:
        """Show the previous (-1) or next (+1) version of exchange `index` with its branch, and
        save the choice; False when there is none, or when a reply being written is in the
        branch that would be put away (`ValueError`)."""
        if self.job is not None and self.job.exchange >= index:
            raise ValueError("a reply is being written")
        if not self.conversation.switch(index, delta):
            return False
        self.keeper.mark_changed(index)
        self.keeper.autosave()
        return True

    def delete_exchange(self, index: int) -> Exchange:
        """Remove exchange `index` (the user's message and every version of its reply) and save
        the chat without it; the exchange, for the caller to report. Not while a reply is being
        written (`ValueError`): its job points into the exchanges."""
        if self.generating:
            raise ValueError("a reply is being written")
        exchange = self.conversation.exchanges.pop(index)
        self.keeper.mark_changed(index)
        self.keeper.autosave()
        return exchange

    def abandon_job(self) -> int | None:
        """Stop the reply being written and forget it now: its tokens so far stay, marked
        stopped, and its late events are ignored. The index of its exchange, or None."""
        if not self.stop():
            return None
        if self.version.status == "streaming":
            self.version.status = "stopped"
        return self._forget_job()

    def _forget_job(self) -> int:
        """Drop the job and what it was writing (its exchange marked changed); its exchange's index."""
        index = self.job.exchange
        self.job, self.version, self.live, self.prompt_read = None, None, None, None
        self.keeper.mark_changed(index)
        return index
