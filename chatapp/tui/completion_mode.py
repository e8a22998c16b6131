"""Completion mode on screen: plain text the model continues, instead of a chat.

A mixin of `ChatScreen`. A model opens in completion mode with `--raw` or when it has no chat
template (`ModelInfo.completion`); the palette's "Completion mode" turns it on or off for a model
that can chat. In completion mode the conversation is one plain text: each message extends it
exactly as typed, each reply continues it (the engine renders it with
`chatapp.chat.prompt.render_plain`), and the replies are shown as the plain text they are.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from chatapp.tui.widgets.chat_log import ChatLog
from chatapp.tui.widgets.prompt_input import PromptInput

if TYPE_CHECKING:
    from chatapp.tui.chat_screen import ChatScreen

PROMPT_PLACEHOLDER = "Message (Enter send · Shift+Enter/Ctrl+J newline · /help)"
"""Shown in the empty prompt."""
COMPLETION_PLACEHOLDER = "Text for the model to continue (Enter send · Shift+Enter/Ctrl+J newline · /help)"
"""Shown in the empty prompt in completion mode."""


class CompletionMode:
    """Completion mode, mixed into `ChatScreen`."""

    @property
    def completion(self: "ChatScreen") -> bool:
        """Whether the model continues plain text (completion mode) rather than chatting."""
        engine = self.session.engine
        return engine is not None and engine.info.completion

    def show_mode(self: "ChatScreen") -> None:
        """Show the conversation as the loaded model takes it: a chat, or plain text it continues
        (said when completion mode begins)."""
        completion = self.completion
        log = self.query_one(ChatLog)
        if completion and not log.completion:
            self.notify(f"{self.session.engine.info.name} continues plain text (completion mode, no chat template): "
                        "what you send is added to the text, and the model writes on from there.",
                        title="Completion mode", markup=False)
        log.set_completion(completion)
        self.query_one(PromptInput).placeholder = COMPLETION_PLACEHOLDER if completion else PROMPT_PLACEHOLDER

    def action_completion_mode(self: "ChatScreen") -> None:
        """The palette's "Completion mode": continue plain text from the next reply on, or chat
        again (the conversation is then read again in the other form)."""
        engine = self.session.engine
        if engine is None or self.session.generating or self.switching:
            self.notify("Switch modes once the model is loaded and no reply is being written.", severity="warning")
            return
        if self.completion and not engine.info.can_chat:
            self.notify(f"{engine.info.name} has no chat template: it can only continue text.", severity="warning",
                        markup=False)
            return
        engine.info = replace(engine.info, completion=not engine.info.completion)
        self.show_mode()
        if not self.completion:
            self.notify("Chat mode: the model answers messages through its chat template.", title="Chat mode")
        self.update_status()
