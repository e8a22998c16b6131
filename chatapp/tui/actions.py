"""The chat screen's user actions: stop, regenerate, edit, new chat, inspect, branch, versions.

A mixin of `ChatScreen`, kept apart so neither module grows large. Handlers use Textual's
naming convention (`on_chat_log_inspected`) because `@on` is only collected on widget classes.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from chatapp.chat.conversation import ReplyVersion, branch_version
from chatapp.tui.formatting import one_line_preview
from chatapp.tui.screens import ConfirmScreen, HelpScreen
from chatapp.tui.widgets.chat_log import ChatLog, Cursor
from chatapp.tui.widgets.heat_legend import HeatLegend
from chatapp.tui.widgets.prompt_input import PromptInput
from chatapp.tui.widgets.topk_panel import TopKPanel

if TYPE_CHECKING:
    from chatapp.tui.chat_screen import ChatScreen

BUSY_MESSAGE = "A reply is being written: wait, or press Esc to stop it."
"""Shown when an action needs the engine while it is busy."""
CODE_BLOCK = re.compile(r"^ {0,3}(?:```|~~~)[^\n]*\n(.*?)^ {0,3}(?:```|~~~)[ \t]*$", re.MULTILINE | re.DOTALL)
"""A fenced Markdown code block; group 1 is its code."""


class ConversationActions:
    """Actions on the conversation, mixed into `ChatScreen`."""

    def action_stop(self: "ChatScreen") -> None:
        """Esc: stop the reply (it is kept, marked stopped, once its turn ends), or cancel an edit."""
        if self.session.stop_and_save():
            return
        if self.editing:
            self.edit_index = None
            self.query_one(PromptInput).clear()
            self.notify("Edit cancelled.")

    def _ready(self: "ChatScreen") -> bool:
        if self.session.engine is None:
            self.notify("The model is still loading.", severity="warning")
        elif self.session.generating:
            self.notify(BUSY_MESSAGE, severity="warning")
        return self.session.engine is not None and not self.session.generating

    def _target(self: "ChatScreen") -> int | None:
        """The exchange an action on "the reply" means: the inspected one, else the last."""
        cursor = self.query_one(ChatLog).cursor
        exchanges = self.session.conversation.exchanges
        return cursor.exchange if cursor is not None else len(exchanges) - 1 if exchanges else None

    async def action_regenerate(self: "ChatScreen", index: int | None = None) -> None:
        """Write a new version of reply `index` (the inspected one, else the last): for an
        earlier reply, a branch; what followed stays with the old version (‹ › switches)."""
        if not self._ready():
            return
        index = self._target() if index is None else index
        if index is None:
            self.notify("Nothing to regenerate yet.")
            return
        reply = self.session.conversation.exchanges[index].reply
        edited = reply.user if reply is not None else None  # answer the message as shown
        await self.start_reply(index, ReplyVersion(settings=self.session.settings, user=edited))

    def action_edit_last(self: "ChatScreen") -> None:
        """Edit the inspected reply's user message, else the last one (`action_edit`)."""
        index = self._target()
        if index is None:
            self.notify("No message to edit yet.")
            return
        self.action_edit(index)

    def action_edit(self: "ChatScreen", index: int) -> None:
        """Put user message `index` in the prompt; Enter sends the edit as a new version of the
        exchange, a branch there (the old message, its replies and what followed stay, ‹ ›
        switches)."""
        if self.session.generating:
            self.notify(BUSY_MESSAGE, severity="warning")
            return
        self.edit_index = index
        self.query_one(ChatLog).inspect(None)
        prompt = self.query_one(PromptInput)
        prompt.set_prompt(self.session.conversation.exchanges[index].shown_user)
        prompt.focus()
        last = index == len(self.session.conversation.exchanges) - 1
        which = "the last message" if last else f"message {index + 1}: a new branch from there"
        self.notify(f"Editing {which}. Enter sends it as a new version (the old one stays, ‹ › switches), "
                    "Esc cancels.", markup=False)

    def on_chat_log_edit_requested(self: "ChatScreen", message: ChatLog.EditRequested) -> None:
        """E in the inspector edits the inspected exchange's message."""
        self.action_edit(message.exchange)

    async def on_chat_log_regenerate_requested(self: "ChatScreen", message: ChatLog.RegenerateRequested) -> None:
        """R in the inspector writes a new version of the inspected reply."""
        await self.action_regenerate(message.exchange)

    def on_prompt_input_edit_last_requested(self: "ChatScreen", _message: PromptInput.EditLastRequested) -> None:
        """Up in an empty prompt edits the last message."""
        if self.session.conversation.last is not None and not self.session.generating:
            self.action_edit(len(self.session.conversation.exchanges) - 1)

    async def action_new_chat(self: "ChatScreen") -> None:
        """Save the conversation and start a new one (the system prompt and settings stay)."""
        self.session.abandon_job()  # the reply so far is kept and saved, as stopped
        self.session.new_chat()
        self.edit_index = None
        await self.query_one(ChatLog).clear()
        self.query_one(TopKPanel).view = None
        self.query_one(PromptInput).focus()
        if self.session.engine is not None:
            self.reset_engine()
        self.update_status()

    def action_help(self: "ChatScreen") -> None:
        """Show slash commands and keys."""
        self.app.push_screen(HelpScreen())

    def action_inspect(self: "ChatScreen") -> None:
        """Open or close the token inspector."""
        log = self.query_one(ChatLog)
        if log.cursor is not None:
            log.inspect(None)
        elif not log.open_inspector():
            self.notify("No reply to inspect yet.")

    def action_probe_step(self: "ChatScreen", probe: Literal["look_up", "what_if", "lens"]) -> None:
        """W, S or L from the palette: at the inspected step, else at the last reply's last one
        (the inspector opens there)."""
        log = self.query_one(ChatLog)
        if log.cursor is None and not log.open_inspector():
            self.notify("No reply to inspect yet.")
            return
        log.action_probe(probe)

    def action_toggle_panel(self: "ChatScreen") -> None:
        """Show or hide the candidates panel (the conversation takes its width)."""
        self.panel_shown = not self.panel_shown
        self.place_panel()

    def action_copy_reply(self: "ChatScreen", code_only: bool = False) -> None:
        """Copy the reply in the inspector, or else the last one, to the clipboard (the
        terminal's, by OSC 52); with `code_only`, its last code block."""
        cursor = self.query_one(ChatLog).cursor
        exchanges = self.session.conversation.exchanges
        reply = exchanges[cursor.exchange].reply if cursor is not None else next(
            (e.reply for e in reversed(exchanges) if e.reply is not None and e.reply.text), None)
        text = reply.text if reply is not None else ""
        if code_only:
            blocks = CODE_BLOCK.findall(text)
            text = blocks[-1] if blocks else ""
        if not text:
            self.notify("No code block to copy." if code_only else "No reply to copy yet.")
            return
        self.app.copy_to_clipboard(text)
        what = "code block" if code_only else "reply"
        self.notify(f"Copied the {what} ({len(text)} characters).", markup=False)

    def action_heatmap(self: "ChatScreen") -> None:
        """Colour reply tokens by probability, or stop."""
        log = self.query_one(ChatLog)
        log.set_heatmap(not log.heatmap)
        self.query_one(HeatLegend).display = log.heatmap

    async def on_chat_log_branch_requested(self: "ChatScreen", message: ChatLog.BranchRequested) -> None:
        """Cut the inspected reply at the cursor, force the picked candidate, and continue from
        it: a new version of that reply, with what followed it kept on the old one's branch."""
        cursor = message.cursor
        if not self._ready():
            return
        old = self.session.conversation.exchanges[cursor.exchange].reply
        step = old.steps[cursor.step]
        what_if = self.what_if_at(cursor)  # a what-if shown there: branch with its settings, from its rows
        settings = what_if.settings if what_if else self.session.settings
        rows = what_if.answer.top if what_if else step.top
        row = min(cursor.row, len(rows) - 1) if cursor.row is not None else next(
            (i for i, c in enumerate(rows) if c.token_id == step.token_id), 0)
        stop_ids = getattr(self.session.engine, "stop_ids", frozenset())
        version, prefix_ids = branch_version(old, cursor.step, rows[row], settings, stop_ids)
        if version.steps[-1].is_stop:  # the forced token ends the reply: nothing more to generate
            self.session.add_done_version(cursor.exchange, version)
            await self.show_new_version(cursor.exchange)
        else:
            await self.start_reply(cursor.exchange, version, tuple(prefix_ids))
        self.query_one(ChatLog).inspect(Cursor(cursor.exchange, cursor.step))

    def on_chat_log_delete_requested(self: "ChatScreen", message: ChatLog.DeleteRequested) -> None:
        """Delete an exchange once the user confirms (Del in the inspector)."""
        if self.session.generating:
            self.notify(BUSY_MESSAGE, severity="warning")
            return
        index = message.exchange
        exchange = self.session.conversation.exchanges[index]
        versions = len(exchange.versions)
        replies = {0: "", 1: " and its reply"}.get(versions, f" and the {versions} versions of its reply")
        question = f"Delete message {index + 1} (“{one_line_preview(exchange.shown_user)}”){replies}?"

        async def answered(yes: bool | None) -> None:
            if yes and not self.session.generating and index < len(self.session.conversation.exchanges) \
                    and self.session.conversation.exchanges[index] is exchange:
                await self.delete_exchange(index)

        self.app.push_screen(ConfirmScreen(question, "Delete"), answered)

    async def delete_exchange(self: "ChatScreen", index: int) -> None:
        """Remove exchange `index` from the chat and the view (saved at once)."""
        self.session.delete_exchange(index)
        self.edit_index = None  # the indices after it moved
        log = self.query_one(ChatLog)
        log.inspect(None)
        await log.show_exchanges(self.session.conversation.exchanges)
        self.query_one(TopKPanel).view = None
        self.update_status()
        self.notify(f"Deleted message {index + 1} and its replies.", markup=False)

    async def on_chat_log_version_requested(self: "ChatScreen", message: ChatLog.VersionRequested) -> None:
        """The inspector asks for another version (",", ".")."""
        await self.action_switch_version(message.exchange, message.delta)

    async def action_previous_version(self: "ChatScreen", index: int) -> None:
        """Show the previous version of reply `index` (a click on "‹")."""
        await self.action_switch_version(index, -1)

    async def action_next_version(self: "ChatScreen", index: int) -> None:
        """Show the next version of reply `index` (a click on "›")."""
        await self.action_switch_version(index, 1)

    async def action_switch_version(self: "ChatScreen", index: int, delta: int) -> None:
        """Show another version of reply `index` ("‹ 1/2 ›") with its whole branch."""
        try:
            if not self.session.switch_version(index, delta):
                return
        except ValueError:  # the reply being written is in the branch that would be put away
            self.notify(BUSY_MESSAGE, severity="warning")
            return
        log = self.query_one(ChatLog)
        cursor = log.cursor
        await self.show_new_version(index)
        exchange = self.session.conversation.exchanges[index]
        if cursor is not None and cursor.exchange == index:
            steps = len(exchange.reply.steps)
            log.inspect(Cursor(index, min(cursor.step, steps - 1)) if steps else None)
        self.update_status()

    async def show_new_version(self: "ChatScreen", index: int) -> None:
        """Show exchange `index` as it is now (its message as the shown version answers it, and
        that version) and the branch after it."""
        log = self.query_one(ChatLog)
        exchange = self.session.conversation.exchanges[index]
        log.user_view(index).set_text(exchange.shown_user)  # an edit's version answers its own text
        await log.show_branch(index, self.session.conversation.exchanges)
        log.reply_view(index).show_reply()
