"""The inspector's panel: the inspected step, and what was asked of it (W, S, L).

A mixin of `ChatScreen`. The inspector's cursor lives on `ChatLog`; this shows its step in the
candidates panel, with the answer to the last question asked of that step: a token's odds (a
line below the candidates), a what-if (the candidates as other settings would have them, with
what entered and dropped) or the logit lens (each layer's top token instead of the candidates).
Each answer is the model's own, that step run again from the cache on the engine thread. An
answer belongs to its reply and step: moving elsewhere shows that step as it was sampled.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from textual import work

from chatapp.chat.commands import settings_from
from chatapp.chat.confidence import reply_confidence
from chatapp.chat.conversation import ReplyVersion
from chatapp.chat.records import LensEntry, Step, WatchedToken, WhatIf
from chatapp.chat.settings import SamplingSettings
from chatapp.engine.thread import on_engine_thread
from chatapp.session.reply_stream import one_line
from chatapp.tui.step_questions import lookup_line, settings_question, token_question, what_if_lines
from chatapp.tui.widgets.chat_log import ChatLog, Cursor
from chatapp.tui.widgets.prompt_input import PromptInput
from chatapp.tui.widgets.topk_panel import PanelView, TopKPanel

if TYPE_CHECKING:
    from chatapp.tui.chat_screen import ChatScreen


@dataclass(frozen=True)
class StepAnswer:
    """The answer to the last question asked of one step in the inspector."""

    reply: ReplyVersion
    """The reply version asked about."""
    step: int
    """Its 0-based step."""
    kind: Literal["look_up", "what_if", "lens"]
    """Which question."""
    answer: WatchedToken | WhatIf | tuple[LensEntry, ...]
    """What the model said."""
    settings: SamplingSettings | None = None
    """The settings a what-if tried."""

    def is_for(self, reply: ReplyVersion, step: int) -> bool:
        """Whether this answers `reply`'s step `step`."""
        return self.reply is reply and self.step == step


class InspectorPanel:
    """The inspected step in the panel, and the questions W, S and L, mixed into `ChatScreen`."""

    def on_chat_log_inspected(self: "ChatScreen", message: ChatLog.Inspected) -> None:
        """Show the inspected step's candidates; on close, return to the prompt."""
        cursor = message.cursor
        self.place_panel()
        if cursor is None:
            self.query_one(PromptInput).focus()
            reply = self.session.conversation.last.reply if self.session.conversation.last else None
            if reply is not None and reply.steps:
                self.show_step(reply.steps[-1], reply.settings)
            return
        self.show_inspected(cursor)

    def show_inspected(self: "ChatScreen", cursor: Cursor) -> None:
        """Show step `cursor` in the panel, with the answer asked of it, if any."""
        reply = self.session.conversation.exchanges[cursor.exchange].reply
        step, settings = reply.steps[cursor.step], reply.settings
        answer = self.step_answer if self.step_answer and self.step_answer.is_for(reply, cursor.step) else None
        confidence = reply_confidence(reply.steps) if reply.status != "streaming" else None
        below = tuple(confidence.lines()) if confidence else ()
        if answer is None:
            view = PanelView(step, settings.temperature, settings.top_k, cursor.row, below)
        elif answer.kind == "look_up":
            view = PanelView(step, settings.temperature, settings.top_k, cursor.row, (lookup_line(answer.answer), *below))
        elif answer.kind == "what_if":
            tried = answer.settings
            shown = replace(step, prob=answer.answer.chosen.prob, top=answer.answer.top)
            view = PanelView(shown, tried.temperature, tried.top_k, cursor.row,
                             what_if_lines(answer.answer, settings, tried), label="what-if")
        else:
            view = PanelView(step, settings.temperature, settings.top_k, None,
                             ("L again: back to the candidates",), label="lens", lens=answer.answer)
        self.query_one(TopKPanel).view = view

    def on_chat_log_probe_requested(self: "ChatScreen", message: ChatLog.ProbeRequested) -> None:
        """W, S or L in the inspector: ask for a token or settings where needed, then the model."""
        if not self._ready():
            return
        cursor = message.cursor
        reply = self.session.conversation.exchanges[cursor.exchange].reply
        shown = self.step_answer if self.step_answer and self.step_answer.is_for(reply, cursor.step) else None
        if message.probe == "lens":
            if shown is not None and shown.kind == "lens":  # L again: back to the candidates
                self.step_answer = None
                self.show_inspected(cursor)
            else:
                self.ask_step(cursor, "lens")
            return

        def asked(text: str | None) -> None:
            if text is not None:
                self.ask_step(cursor, message.probe, text)

        if message.probe == "look_up":
            self.app.push_screen(token_question(cursor.step + 1), asked)
        else:
            tried = shown.settings if shown is not None and shown.kind == "what_if" else reply.settings
            self.app.push_screen(settings_question(cursor.step + 1, tried), asked)

    @work(exclusive=True, exit_on_error=False, group="step-question")
    async def ask_step(self: "ChatScreen", cursor: Cursor, kind: Literal["look_up", "what_if", "lens"],
                       text: str = "") -> None:
        """Run the inspected step again on the engine thread (the conversation before it, the
        reply's own settings) to answer `kind` about `text`, then show the answer."""
        session = self.session
        reply = session.conversation.exchanges[cursor.exchange].reply
        step: Step = reply.steps[cursor.step]
        prefix = [s.token_id for s in reply.steps[:cursor.step]]
        messages = session.conversation.messages_before(cursor.exchange)
        engine = session.engine
        tried = None
        try:
            if kind == "look_up":
                token_id = await on_engine_thread(engine.token_of, text)
                answer = await on_engine_thread(engine.odds_at, messages, prefix, reply.settings, token_id)
            elif kind == "what_if":
                tried = settings_from(text, reply.settings)
                answer = await on_engine_thread(engine.what_if_at, messages, prefix, reply.settings, tried,
                                                step.token_id)
            else:
                answer = await on_engine_thread(engine.lens_at, messages, prefix, reply.settings)
        except Exception as error:  # bad settings, a text of several tokens, a context too full: one line
            title = {"look_up": "Look-up", "what_if": "What if", "lens": "Logit lens"}[kind]
            self.notify(one_line(error), title=title, severity="warning", markup=False)
            return
        self.step_answer = StepAnswer(reply, cursor.step, kind, answer, tried)
        log = self.query_one(ChatLog)
        if log.cursor is not None and log.cursor.exchange == cursor.exchange and log.cursor.step == cursor.step:
            self.show_inspected(log.cursor)

    def what_if_at(self: "ChatScreen", cursor: Cursor) -> StepAnswer | None:
        """The what-if shown at `cursor`'s step, if one is (a branch there takes its settings)."""
        reply = self.session.conversation.exchanges[cursor.exchange].reply
        answer = self.step_answer
        return answer if answer and answer.kind == "what_if" and answer.is_for(reply, cursor.step) else None
