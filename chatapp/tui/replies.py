"""Writing a reply on screen: the worker that runs the session's job, and the views it updates.

A mixin of `ChatScreen`. The worker (`generate`) waits on the engine thread
(`chatapp.engine.thread`: all model work of the process runs on one thread) while
`ChatSession.run` writes the reply there; its events reach the screen only as `ReplyReported`
messages. The handler hands each to the session first (which ignores an older job's), then
updates the widgets that view the reply.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from textual import work

from chatapp.chat.conversation import ReplyVersion
from chatapp.chat.records import Step
from chatapp.chat.settings import SamplingSettings
from chatapp.engine.thread import on_engine_thread, queue_on_engine_thread
from chatapp.session.reply_stream import PromptRead, ReplyJob, TokensGenerated, TurnFailed, TurnFinished, one_line
from chatapp.session.step_mode import StepProposed
from chatapp.tui.formatting import dropped_turns_message
from chatapp.tui.messages import ReplyReported
from chatapp.tui.widgets.chat_log import ChatLog
from chatapp.tui.widgets.topk_panel import PanelView, TopKPanel

if TYPE_CHECKING:
    from chatapp.tui.chat_screen import ChatScreen


class ReplyStreaming:
    """Start a reply, stream it into the views, and end it (finished, stopped or failed)."""

    _update_cpu_at: float | None
    """UI-thread CPU time when the reply's last batch arrived (None before its first)."""

    async def start_reply(self: "ChatScreen", index: int, version: ReplyVersion,
                          prefix_ids: tuple[int, ...] = ()) -> None:
        """Add `version` to exchange `index` (a branch there when others follow it: they leave
        the view with the version they followed) and generate the rest of it on the engine
        thread."""
        job = self.session.start_reply(index, version, prefix_ids, step_mode=self.step_mode)
        self._update_cpu_at = None
        await self.show_new_version(index)
        self.update_status()
        self.generate(job)

    @work(exclusive=True, exit_on_error=False, group="engine")
    async def generate(self: "ChatScreen", job: ReplyJob) -> None:
        """Wait while the session writes `job`'s reply on the engine thread, saving the chat
        meanwhile (`ChatSession.save_started`)."""
        running = queue_on_engine_thread(self.session.run, job, lambda event: self.post_message(ReplyReported(event)))
        self.session.save_started()
        try:
            await running
        except Exception as error:  # noqa: BLE001 - a failure the job did not report: the reply
            # ends failed, with what it has, rather than "writing…" for good
            self.post_message(ReplyReported(TurnFailed(job.job, one_line(error))))

    async def on_reply_reported(self: "ChatScreen", message: ReplyReported) -> None:
        """Route an event of the reply job to its handler."""
        event = message.event
        if isinstance(event, StepProposed):
            self.show_proposal(event)
        elif isinstance(event, PromptRead):
            if self.session.read_prompt(event):
                self.update_status()
        elif isinstance(event, TokensGenerated):
            await self._show_steps(event)
        elif isinstance(event, TurnFinished) and self.session.finish(event):
            if event.stats.dropped_turns and self.session.engine is not None:
                self.notify(dropped_turns_message(event.stats.dropped_turns, self.session.engine.info.context_length),
                            severity="warning", markup=False)
            await self._end_job()
        elif isinstance(event, TurnFailed) and self.session.fail(event):
            self.notify(event.error, title="Reply failed", severity="error", markup=False)
            await self._end_job()

    async def _show_steps(self: "ChatScreen", event: TokensGenerated) -> None:
        """Append a batch of steps to the reply being written and, when due, show the newest
        step's candidates (unless the user is inspecting another), drawn together: the panel and
        the status line change first, so that their refreshes reach the screen while the text is
        appended and one frame draws all three (else a second layout pass follows a frame later).
        The pace of the next batches follows what the UI thread spent since the last one; once
        the batch is drawn, the decoder's steps take back the core they left the UI."""
        job = self.session.job
        added = self.session.add_steps(event)
        if added is None:
            return
        now = time.thread_time()  # this thread's CPU time: the UI's, not the decoder's
        if self._update_cpu_at is not None:
            self.session.pacing.observe(now - self._update_cpu_at)
        self._update_cpu_at = now
        log = self.query_one(ChatLog)
        with self.app.batch_update():  # no frame between the text, its new blocks and the panel
            if event.candidates is not None and log.cursor is None:
                self.show_step(event.candidates, job.settings)
            self.update_status()  # the reply's own speed and context, as it is written
            await log.reply_view(job.exchange).append(added)
        self.call_after_refresh(self.session.pacing.drawn)

    def show_step(self: "ChatScreen", step: Step, settings: SamplingSettings, cursor: int | None = None,
                  notes: tuple[str, ...] = ()) -> None:
        """Show `step` in the candidates panel (`notes` below its candidates)."""
        self.query_one(TopKPanel).view = PanelView(step, settings.temperature, settings.top_k, cursor, notes)

    async def _end_job(self: "ChatScreen") -> None:
        index = self.session.end_job()  # saved
        self.leave_proposal()
        self.query_one(ChatLog).reply_view(index).show_reply()  # one full render ends the stream
        self.update_status()

    @work(exclusive=True, exit_on_error=False, group="engine")
    async def reset_engine(self: "ChatScreen") -> None:
        """Drop the engine's cache (new chat), on the engine thread after a stopped turn ends."""
        await on_engine_thread(self.session.engine.reset)
