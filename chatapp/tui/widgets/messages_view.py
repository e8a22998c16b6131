"""One user message and one assistant reply, as shown in the conversation."""

from __future__ import annotations

from dataclasses import dataclass, replace

from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.widgets import Static

from chatapp.chat.conversation import Exchange, ReplyVersion
from chatapp.tui.formatting import literal_text
from chatapp.tui.widgets.reply_markdown import OneLayoutPass, ReplyMarkdown
from chatapp.tui.widgets.token_view import TokenView, TokenViewData

STATUS_LABELS = {"streaming": "writing…", "stopped": "stopped", "error": "error", "done": ""}
"""Header note for each reply status."""


def limit_note(reply: ReplyVersion) -> str:
    """The header note of a reply cut at its length limit, with the command that raises it."""
    return f"{reply.limit_note} (/max)"


COLLAPSED_LINES = 6
"""A user message longer than this many lines (a paste, a /file) shows only its first ones."""


class UserMessage(Static):
    """What the user sent, shown literally; a long one collapsed to its first lines, and a click
    (or Enter once focused) expands or collapses it again."""

    can_focus = False

    def __init__(self, text: str) -> None:
        """Show `text` (never parsed as markup)."""
        super().__init__()
        self.text = text
        """The whole message."""
        self.expanded = False
        """Whether a long message shows all its lines."""
        self.update(self._content())

    @property
    def collapsible(self) -> bool:
        """Whether the message is long enough to be shown collapsed."""
        return self.text.count("\n") >= COLLAPSED_LINES

    def _content(self) -> Content:
        self.display = bool(self.text)  # completion mode's "write on" sends nothing of its own
        if not self.collapsible or self.expanded:
            shown = self.text
            note = "\n(click to collapse)" if self.collapsible else ""
        else:
            lines = self.text.splitlines()
            shown = "\n".join(lines[:COLLAPSED_LINES])
            note = f"\n⋯ {len(lines) - COLLAPSED_LINES} more lines, {len(self.text):,} characters (click to expand)"
        return Content.assemble(literal_text(shown), (note, "italic $text-muted"))

    def set_text(self, text: str) -> None:
        """Replace the shown text (after an edit), collapsed again if long."""
        self.text, self.expanded = text, False
        self.update(self._content())

    def on_click(self, event: events.Click) -> None:
        """Expand a collapsed message, or collapse it back."""
        if self.collapsible:
            event.stop()
            self.expanded = not self.expanded
            self.update(self._content())


class AssistantMessage(OneLayoutPass, Vertical):
    """The shown version of a reply: Markdown normally, token spans in the inspector or heatmap;
    in completion mode, the continuation as the plain text it is (token spans always)."""

    def __init__(self, exchange: Exchange, index: int, completion: bool = False) -> None:
        """View the reply of `exchange`, which is number `index` in the conversation
        (`completion`: a continuation of plain text, not a chat reply)."""
        super().__init__()
        self.exchange = exchange
        self.index = index
        self.completion = completion
        """Whether the reply continues plain text (completion mode): shown as plain text."""

    def compose(self) -> ComposeResult:
        """Header line, Markdown body, token view."""
        yield Static(classes="reply-header")
        yield ReplyMarkdown(classes="reply-body")
        yield TokenView()

    def on_mount(self) -> None:
        """Render what the exchange already holds."""
        self.show_reply()

    def header(self) -> Content:
        """"assistant ‹ 1/2 › · stopped" with clickable arrows; error text stays literal."""
        reply = self.exchange.reply
        parts = [Content("continuation" if self.completion else "assistant")]
        count = len(self.exchange.versions)
        if count > 1:
            i = self.index
            parts.append(Content.from_markup(
                f" [@click=screen.previous_version({i})]‹[/] {self.exchange.current + 1}/{count} "
                f"[@click=screen.next_version({i})]›[/]"
            ))
        if reply is not None:
            note = limit_note(reply) if reply.cut_at_limit else STATUS_LABELS[reply.status]
            if reply.branched_at is not None:
                note = f"branched at token {reply.branched_at + 1}" + (f" · {note}" if note else "")
            if reply.error:
                note = f"{note}: {reply.error}"
            if note:
                parts.append(Content(f" · {literal_text(note)}"))
        return Content.assemble(*parts)

    def refresh_header(self) -> None:
        """Redraw the header (status or version count changed)."""
        self.query_one(".reply-header", Static).update(self.header())

    def show_reply(self) -> None:
        """Render the shown version in full (one Markdown update)."""
        reply = self.exchange.reply
        text = reply.text if reply else ""
        self.set_class(reply is None, "-empty")
        self.refresh_header()
        self.query_one(ReplyMarkdown).show(literal_text(text), streaming=reply is not None and reply.status == "streaming")
        view = self.query_one(TokenView)
        view.data = replace(view.data, steps=tuple(reply.steps) if reply else ())

    async def append(self, text: str) -> None:
        """Add new reply text to the Markdown body (and the token view, when it shows).

        Textual re-parses only the last block and mounts any new ones. Not through a
        `MarkdownStream`: it exists to merge fragments that come faster than they are drawn,
        which paced batches never do, and it appends on its own task, after the caller's other
        changes (the candidates panel) instead of with them.
        """
        if self.has_class("-tokens"):
            view = self.query_one(TokenView)
            reply = self.exchange.reply
            view.data = replace(view.data, steps=tuple(reply.steps) if reply else ())
        if text and not self.completion:
            await self.query_one(ReplyMarkdown).append(literal_text(text))

    def set_token_mode(self, show_tokens: bool, heatmap: bool, cursor: int | None) -> None:
        """Show token spans (inspector or heatmap) instead of Markdown, or go back; in completion
        mode the spans always show, as plain text outside the inspector and heatmap."""
        reply = self.exchange.reply
        plain = self.completion and not show_tokens
        self.query_one(TokenView).data = TokenViewData(tuple(reply.steps) if reply else (), cursor, heatmap, plain)
        self.set_class(show_tokens or self.completion, "-tokens")

    def on_click(self, event: events.Click) -> None:
        """A click on the Markdown body (or a continuation's plain text) asks to inspect this reply."""
        if not self.has_class("-tokens") or self.query_one(TokenView).data.plain:
            self.post_message(self.Clicked(self.index))

    @dataclass
    class Clicked(Message):
        """The reply (shown as Markdown) was clicked."""

        index: int
        """Its exchange index."""
