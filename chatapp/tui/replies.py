"""Writing a reply: the engine's worker and the handlers of the messages it posts.

A mixin of `ChatScreen`. The worker (`generate`) runs one engine turn through `stream_turn` on
the engine thread (`chatapp.engine.thread`: all model work of the process runs on one thread)
and talks to the screen only through the messages of `chatapp.tui.messages`; the handlers here
update the plain reply version first, then the widgets that view it. Handlers are found by
Textual's naming convention (`on_tokens_generated`): `@on` is only collected on widget classes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from textual import work
from textual.worker import get_current_worker

from chatapp.chat.conversation import ReplyVersion
from chatapp.chat.settings import SamplingSettings
from chatapp.engine.thread import on_engine_thread
from chatapp.tui.formatting import dropped_turns_message
from chatapp.tui.generation import GenerationJob, StreamPacing, one_line, stream_turn
from chatapp.tui.messages import TokensGenerated, TurnFailed, TurnFinished
from chatapp.tui.widgets.chat_log import ChatLog
from chatapp.tui.widgets.topk_panel import PanelView, TopKPanel

if TYPE_CHECKING:
    from chatapp.tui.chat_screen import ChatScreen


class ReplyStreaming:
    """Start a reply, stream it into the views, and end it (finished, stopped or failed)."""

    pacing: StreamPacing
    """How often the worker posts; kept from reply to reply, as the cost of drawing changes slowly."""
    _update_cpu_at: float | None
    """UI-thread CPU time when the reply's last batch arrived (None before its first)."""
    live: TokensGenerated | None
    """The latest batch of the reply being written (its speed, prompt and cache figures), or None."""

    def start_reply(self: "ChatScreen", index: int, version: ReplyVersion, prefix_ids: tuple[int, ...] = ()) -> None:
        """Add `version` to exchange `index` and generate the rest of it in the worker."""
        exchange = self.conversation.exchanges[index]
        exchange.add_version(version)
        self.mark_changed(index)
        self._jobs += 1
        self._version = version
        self.live = None
        self._update_cpu_at = None
        self._job = GenerationJob(self._jobs, index, self.conversation.messages_before(index), self.settings, prefix_ids)
        self.query_one(ChatLog).reply_view(index).show_reply()
        self.update_status()
        self.generate(self._job)

    @work(exclusive=True, exit_on_error=False, group="engine")
    async def generate(self: "ChatScreen", job: GenerationJob) -> None:
        """Run one turn of the engine on the engine thread (see `_run_turn`)."""
        worker = get_current_worker()
        await on_engine_thread(self._run_turn, job, lambda: worker.is_cancelled)

    def _run_turn(self: "ChatScreen", job: GenerationJob, is_cancelled: Callable[[], bool]) -> None:
        """On the engine thread: one turn, its steps posted to the UI (the body is `stream_turn`)."""
        try:
            turn = self.engine.start_turn(job.messages, job.settings, reply_prefix_ids=list(job.prefix_ids))
        except Exception as error:  # e.g. ContextOverflowError: shown, the chat is kept
            self.post_message(TurnFailed(job.job, one_line(error)))
            return
        self._turn = turn
        if is_cancelled():  # stopped while queued: the turn ends at once, as stopped
            turn.cancel()
        stream_turn(turn, job.job, self.post_message, is_cancelled, pacing=self.pacing)

    def _current(self: "ChatScreen", job: int) -> bool:
        return self._job is not None and self._job.job == job

    async def on_tokens_generated(self: "ChatScreen", message: TokensGenerated) -> None:
        """Append a batch of steps to the reply being written and, when due, show the newest
        step's candidates (unless the user is inspecting another), drawn together. The pace
        of the next batches follows what the UI thread spent since the last one."""
        if self._current(message.job) and self._version is not None:
            now = time.thread_time()  # this thread's CPU time: the UI's, not the decoder's
            if self._update_cpu_at is not None:
                self.pacing.observe(now - self._update_cpu_at)
            self._update_cpu_at = now
            added = self._version.add_steps(message.steps)
            self.live = message
            log = self.query_one(ChatLog)
            with self.app.batch_update():  # no frame between the text, its new blocks and the panel
                await log.reply_view(self._job.exchange).append(added)
                if message.candidates is not None and log.cursor is None:
                    self.show_step(message.candidates, self._job.settings)
                self.update_status()  # the reply's own speed and context, as it is written
            self.autosave_streaming(self._job.exchange)

    def show_step(self: "ChatScreen", step, settings: SamplingSettings, cursor: int | None = None) -> None:
        """Show `step` in the candidates panel."""
        self.query_one(TopKPanel).view = PanelView(step, settings.temperature, settings.top_k, cursor)

    async def on_turn_finished(self: "ChatScreen", message: TurnFinished) -> None:
        """Finish the reply with one full render."""
        if self._current(message.job):
            self._version.finish(message.stats)
            if message.stats.dropped_turns and self.engine is not None:
                self.notify(dropped_turns_message(message.stats.dropped_turns, self.engine.info.context_length),
                            severity="warning", markup=False)
            await self._end_job()

    async def on_turn_failed(self: "ChatScreen", message: TurnFailed) -> None:
        """Keep the conversation and say what went wrong."""
        if self._current(message.job):
            self._version.fail(message.error)
            self.notify(message.error, title="Reply failed", severity="error", markup=False)
            await self._end_job()

    async def _end_job(self: "ChatScreen") -> None:
        index = self._job.exchange
        self._job, self._turn, self._version = None, None, None
        self.mark_changed(index)
        self.autosave()
        self.query_one(ChatLog).reply_view(index).show_reply()  # one full render ends the stream
        self.update_status()

    @work(exclusive=True, exit_on_error=False, group="engine")
    async def reset_engine(self: "ChatScreen") -> None:
        """Drop the engine's cache (new chat), on the engine thread after a cancelled turn ends."""
        await on_engine_thread(self.engine.reset)
