"""The conversation view, which doubles as the token inspector when focused.

Inspector keys move a cursor over the tokens of any reply; every move posts `Inspected`, and
the screen shows that step in the candidates panel. The log holds only the cursor: the replies
themselves are the `Exchange` objects its `AssistantMessage` children view.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message

from chatapp.tui.state import Exchange
from chatapp.tui.widgets.messages_view import AssistantMessage, UserMessage
from chatapp.tui.widgets.token_view import TokenView


@dataclass(frozen=True)
class Cursor:
    """Where the inspector is."""

    exchange: int
    """Index of the inspected reply's exchange."""
    step: int
    """Index of the inspected step in the shown version."""
    row: int | None = None
    """Candidate row picked for branching (None: the sampled one)."""


class ChatLog(VerticalScroll):
    """User messages and replies; follows new text while scrolled to the bottom."""

    BINDINGS = [
        Binding("left", "move(-1)", "Prev token", show=False),
        Binding("right", "move(1)", "Next token", show=False),
        Binding("home", "move_to(0)", "First token", show=False),
        Binding("end", "move_to(-1)", "Last token", show=False),
        Binding("pageup", "reply(-1)", "Prev reply", show=False),
        Binding("pagedown", "reply(1)", "Next reply", show=False),
        Binding("up", "row(-1)", "Candidate ↑", show=False),
        Binding("down", "row(1)", "Candidate ↓", show=False),
        Binding("enter", "branch", "Branch here"),
        Binding("comma", "version(-1)", "‹ version"),
        Binding("full_stop", "version(1)", "version ›"),
        Binding("escape", "leave", "Leave inspector"),
    ]
    """Inspector keys (active while the log has focus)."""

    @dataclass
    class Inspected(Message):
        """The inspector cursor moved (None: the inspector closed)."""

        cursor: Cursor | None
        """The new cursor."""

    @dataclass
    class BranchRequested(Message):
        """Continue the reply from another candidate at the cursor."""

        cursor: Cursor
        """Reply, step and candidate row to branch from."""

    @dataclass
    class VersionRequested(Message):
        """Show another version of a reply."""

        exchange: int
        """Index of the reply's exchange."""
        delta: int
        """-1 for the previous version, +1 for the next."""

    def __init__(self) -> None:
        """An empty conversation."""
        super().__init__()
        self.cursor: Cursor | None = None
        self.heatmap = False

    def on_mount(self) -> None:
        """Stick to the bottom while the user is there."""
        self.anchor()

    @property
    def replies(self) -> list[AssistantMessage]:
        """The reply views, in conversation order."""
        return list(self.query(AssistantMessage))

    def reply_view(self, index: int) -> AssistantMessage:
        """The view of exchange `index`'s reply."""
        return self.replies[index]

    async def add_exchange(self, exchange: Exchange, index: int) -> AssistantMessage:
        """Show a new exchange; return its reply view."""
        reply = AssistantMessage(exchange, index)
        await self.mount_all([UserMessage(exchange.user), reply])
        reply.set_token_mode(self.heatmap or self.cursor is not None, self.heatmap, None)
        return reply

    def user_view(self, index: int) -> UserMessage:
        """The view of exchange `index`'s user message."""
        return list(self.query(UserMessage))[index]

    async def clear(self) -> None:
        """Remove every message."""
        self.cursor = None
        await self.remove_children()

    async def show_exchanges(self, exchanges: list[Exchange]) -> None:
        """Replace the log with `exchanges` (a reopened chat), mounted in one go."""
        await self.clear()
        views = [AssistantMessage(e, i) for i, e in enumerate(exchanges)]
        await self.mount_all([w for e, view in zip(exchanges, views) for w in (UserMessage(e.user), view)])
        for view in views:
            view.set_token_mode(self.heatmap, self.heatmap, None)
        self.scroll_end(animate=False)

    def set_heatmap(self, on: bool) -> None:
        """Colour every reply by probability, or not."""
        self.heatmap = on
        self._show_cursor()

    def inspect(self, cursor: Cursor | None) -> None:
        """Place the inspector cursor (None closes the inspector) and announce it."""
        self.cursor = cursor
        self._show_cursor()
        if cursor is not None:
            self.reply_view(cursor.exchange).query_one(TokenView).scroll_visible()
        self.post_message(self.Inspected(cursor))

    def _show_cursor(self) -> None:
        for i, view in enumerate(self.replies):
            step = self.cursor.step if self.cursor and self.cursor.exchange == i else None
            view.set_token_mode(self.heatmap or self.cursor is not None, self.heatmap, step)

    def _steps(self, exchange: int) -> int:
        reply = self.reply_view(exchange).exchange.reply
        return len(reply.steps) if reply else 0

    def open_inspector(self) -> bool:
        """Start inspecting the last token of the last reply that has one; False if none."""
        for i in reversed(range(len(self.replies))):
            if self._steps(i):
                self.focus()
                self.inspect(Cursor(i, self._steps(i) - 1))
                return True
        return False

    def action_move(self, delta: int) -> None:
        """Move to the previous or next token."""
        if self.cursor:
            step = max(0, min(self._steps(self.cursor.exchange) - 1, self.cursor.step + delta))
            self.inspect(Cursor(self.cursor.exchange, step))

    def action_move_to(self, step: int) -> None:
        """Jump to the first (0) or last (-1) token."""
        if self.cursor:
            self.inspect(Cursor(self.cursor.exchange, step % max(1, self._steps(self.cursor.exchange))))

    def action_reply(self, delta: int) -> None:
        """Jump to the previous or next reply that has tokens."""
        if not self.cursor:
            return
        i = self.cursor.exchange + delta
        while 0 <= i < len(self.replies):
            if self._steps(i):
                self.inspect(Cursor(i, min(self.cursor.step, self._steps(i) - 1)))
                return
            i += delta

    def action_row(self, delta: int) -> None:
        """Pick the candidate above or below for branching."""
        if not self.cursor:
            return
        reply = self.reply_view(self.cursor.exchange).exchange.reply
        step = reply.steps[self.cursor.step]
        start = self.cursor.row
        if start is None:
            chosen = [c.token_id for c in step.top]
            start = chosen.index(step.token_id) if step.token_id in chosen else -1
        row = max(0, min(len(step.top) - 1, start + delta))
        self.inspect(Cursor(self.cursor.exchange, self.cursor.step, row))

    def pick_row(self, row: int) -> None:
        """Pick candidate `row` at the cursor (a click in the panel)."""
        if self.cursor:
            self.inspect(Cursor(self.cursor.exchange, self.cursor.step, row))

    def action_branch(self) -> None:
        """Ask the screen to branch at the cursor."""
        if self.cursor:
            self.post_message(self.BranchRequested(self.cursor))

    def action_version(self, delta: int) -> None:
        """Show the previous or next version of the inspected reply."""
        if self.cursor:
            self.post_message(self.VersionRequested(self.cursor.exchange, delta))

    def action_leave(self) -> None:
        """Close the inspector."""
        self.inspect(None)

    @on(AssistantMessage.Clicked)
    def reply_clicked(self, event: AssistantMessage.Clicked) -> None:
        """A click on a reply opens the inspector at its last token."""
        if self._steps(event.index):
            self.focus()
            self.inspect(Cursor(event.index, self._steps(event.index) - 1))

    @on(TokenView.TokenClicked)
    def token_clicked(self, event: TokenView.TokenClicked) -> None:
        """A click on a token opens the inspector there."""
        view = next(v for v in self.replies if v.query_one(TokenView) is event.view)
        self.focus()
        self.inspect(Cursor(view.index, event.step))
