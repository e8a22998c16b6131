"""The conversation view, which doubles as the token inspector when focused.

Inspector keys move a cursor over the tokens of any reply; every move posts `Inspected`, and
the screen shows that step in the candidates panel. The replies are the `Exchange` objects its
`AssistantMessage` children view; only the latest `MAX_MOUNTED_EXCHANGES` stay mounted (a long
session would slow down with every turn), older ones behind one line at the top that mounts them
again when clicked, or when the inspector pages up past the oldest mounted reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.widgets import Static

from chatapp.chat.conversation import Exchange
from chatapp.tui.widgets.messages_view import AssistantMessage, UserMessage
from chatapp.tui.widgets.token_view import TokenView

MAX_MOUNTED_EXCHANGES = 20
"""Exchanges kept mounted after a new one is added; older ones are unmounted (not lost)."""
EARLIER_BATCH = 20
"""Older exchanges mounted again per click on the "earlier exchanges" line."""


class EarlierMessages(Static):
    """One line standing for the exchanges that are not mounted; a click shows more of them."""

    @dataclass
    class Clicked(Message):
        """Show more of the earlier exchanges."""

    def show_count(self, count: int) -> None:
        """Say how many exchanges are hidden (0 hides the line)."""
        self.display = count > 0
        noun = "exchange" if count == 1 else "exchanges"
        self.update(Content(f"⋯ {count} earlier {noun} (click, or PgUp in the inspector)"))

    def on_click(self) -> None:
        """Ask the log to mount more of them."""
        self.post_message(self.Clicked())


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
        Binding("delete", "delete", "Delete exchange", show=False),
        Binding("w", "probe('look_up')", "Look up a token", show=False),
        Binding("s", "probe('what_if')", "What if", show=False),
        Binding("l", "probe('lens')", "Logit lens", show=False),
        Binding("e", "edit", "Edit message", show=False),
        Binding("r", "regenerate", "Regenerate", show=False),
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

    @dataclass
    class ProbeRequested(Message):
        """Ask more of the cursor's step: a token's odds (W), other settings (S), the lens (L)."""

        cursor: Cursor
        """The inspected reply and step."""
        probe: Literal["look_up", "what_if", "lens"]
        """What to ask."""

    @dataclass
    class EditRequested(Message):
        """Edit an exchange's user message (sent, it starts a branch there)."""

        exchange: int
        """Index of the exchange."""

    @dataclass
    class RegenerateRequested(Message):
        """Write a new version of an exchange's reply (a branch there)."""

        exchange: int
        """Index of the exchange."""

    @dataclass
    class DeleteRequested(Message):
        """Delete an exchange: a user message and every version of its reply."""

        exchange: int
        """Index of the exchange."""

    def __init__(self) -> None:
        """An empty conversation."""
        super().__init__()
        self.cursor: Cursor | None = None
        self.heatmap = False
        self.exchanges: list[Exchange] = []
        """Every exchange shown, mounted or not (index = exchange index)."""
        self.first_mounted = 0
        """Index of the oldest mounted exchange."""
        self.completion = False
        """Whether replies continue plain text (completion mode): shown as plain text."""

    def compose(self) -> ComposeResult:
        """The (hidden until needed) line for unmounted exchanges."""
        yield EarlierMessages()

    def on_mount(self) -> None:
        """Stick to the bottom while the user is there."""
        self.anchor()

    @property
    def replies(self) -> list[AssistantMessage]:
        """The reply views, in conversation order."""
        return list(self.query(AssistantMessage))

    def _offset(self, index: int) -> int:
        if index < self.first_mounted:
            raise IndexError(f"exchange {index} is not mounted (the oldest mounted is {self.first_mounted})")
        return index - self.first_mounted

    def reply_view(self, index: int) -> AssistantMessage:
        """The view of exchange `index`'s reply (it must be mounted)."""
        return self.replies[self._offset(index)]

    def user_view(self, index: int) -> UserMessage:
        """The view of exchange `index`'s user message (it must be mounted)."""
        return list(self.query(UserMessage))[self._offset(index)]

    def _views(self, start: int, end: int) -> tuple[list[AssistantMessage], list]:
        replies = [AssistantMessage(self.exchanges[i], i, self.completion) for i in range(start, end)]
        widgets = [w for view in replies for w in (UserMessage(view.exchange.shown_user), view)]
        return replies, widgets

    def _mounted_as_now(self, views: list[AssistantMessage]) -> None:
        for view in views:
            step = self.cursor.step if self.cursor and self.cursor.exchange == view.index else None
            view.set_token_mode(self.heatmap or self.cursor is not None, self.heatmap, step)
        self.query_one(EarlierMessages).show_count(self.first_mounted)

    async def add_exchange(self, exchange: Exchange, index: int) -> AssistantMessage:
        """Show a new exchange (unmounting the oldest beyond the limit); return its reply view."""
        del self.exchanges[index:]
        self.exchanges.append(exchange)
        replies, widgets = self._views(index, index + 1)
        await self.mount_all(widgets)
        keep = max(self.first_mounted, len(self.exchanges) - MAX_MOUNTED_EXCHANGES)
        if keep > self.first_mounted:
            if self.cursor is not None and self.cursor.exchange < keep:
                self.inspect(None)
            old = self.replies[:keep - self.first_mounted]
            users = list(self.query(UserMessage))[:keep - self.first_mounted]
            self.first_mounted = keep
            await self.remove_children([*users, *old])
        self._mounted_as_now(replies)
        return replies[0]

    async def show_earlier(self, down_to: int | None = None) -> None:
        """Mount `EARLIER_BATCH` more of the unmounted exchanges (at least down to `down_to`)."""
        start = max(0, self.first_mounted - EARLIER_BATCH)
        if down_to is not None:
            start = max(0, min(start, down_to))
        if start >= self.first_mounted:
            return
        replies, widgets = self._views(start, self.first_mounted)
        await self.mount_all(widgets, after=self.query_one(EarlierMessages))
        self.first_mounted = start
        self._mounted_as_now(replies)

    async def clear(self) -> None:
        """Remove every message."""
        self.cursor = None
        self.exchanges, self.first_mounted = [], 0
        await self.remove_children([w for w in self.children if not isinstance(w, EarlierMessages)])
        self.query_one(EarlierMessages).show_count(0)

    async def show_exchanges(self, exchanges: list[Exchange]) -> None:
        """Replace the log with `exchanges` (a reopened chat): the latest ones mounted in one go."""
        await self.clear()
        self.exchanges = list(exchanges)
        self.first_mounted = max(0, len(exchanges) - MAX_MOUNTED_EXCHANGES)
        replies, widgets = self._views(self.first_mounted, len(exchanges))
        await self.mount_all(widgets)
        self._mounted_as_now(replies)
        self.scroll_end(animate=False)

    async def show_branch(self, index: int, exchanges: list[Exchange]) -> None:
        """Show `exchanges`, the conversation after a switch or a new version at exchange
        `index`: the views after it are replaced by the branch now shown (exchange `index` and
        those before it stay as they are, scrolled where they were)."""
        if index < self.first_mounted:
            await self.show_exchanges(exchanges)
            return
        if self.cursor is not None and self.cursor.exchange > index:
            self.inspect(None)
        kept = index + 1 - self.first_mounted
        stale = [*list(self.query(UserMessage))[kept:], *self.replies[kept:]]
        if stale:
            await self.remove_children(stale)
        self.exchanges = list(exchanges)
        replies, widgets = self._views(index + 1, len(exchanges))
        if widgets:
            await self.mount_all(widgets)
        self._mounted_as_now(replies)

    def set_completion(self, on: bool) -> None:
        """Show the replies as continuations of plain text (completion mode), or as chat replies."""
        self.completion = on
        self.set_class(on, "-completion")
        for view in self.replies:
            view.completion = on
            view.refresh_header()
        self._show_cursor()

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
        self._mounted_as_now(self.replies)

    def _steps(self, exchange: int) -> int:
        reply = self.exchanges[exchange].reply
        return len(reply.steps) if reply else 0

    def open_inspector(self) -> bool:
        """Start inspecting the last token of the last mounted reply that has one; False if none."""
        for i in reversed(range(self.first_mounted, len(self.exchanges))):
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

    async def action_reply(self, delta: int) -> None:
        """Jump to the previous or next reply that has tokens (mounting older ones if needed)."""
        if not self.cursor:
            return
        i = self.cursor.exchange + delta
        while 0 <= i < len(self.exchanges):
            if self._steps(i):
                if i < self.first_mounted:
                    await self.show_earlier(down_to=i)
                self.inspect(Cursor(i, min(self.cursor.step, self._steps(i) - 1)))
                return
            i += delta

    def action_row(self, delta: int) -> None:
        """Pick the candidate above or below for branching."""
        if not self.cursor:
            return
        reply = self.exchanges[self.cursor.exchange].reply
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

    def action_probe(self, probe: Literal["look_up", "what_if", "lens"]) -> None:
        """Ask the screen for more of the cursor's step (`ProbeRequested`)."""
        if self.cursor:
            self.post_message(self.ProbeRequested(self.cursor, probe))

    def action_edit(self) -> None:
        """Ask the screen to edit the inspected reply's user message."""
        if self.cursor:
            self.post_message(self.EditRequested(self.cursor.exchange))

    def action_regenerate(self) -> None:
        """Ask the screen for a new version of the inspected reply."""
        if self.cursor:
            self.post_message(self.RegenerateRequested(self.cursor.exchange))

    def action_delete(self) -> None:
        """Ask the screen to delete the inspected reply's exchange."""
        if self.cursor:
            self.post_message(self.DeleteRequested(self.cursor.exchange))

    def action_leave(self) -> None:
        """Close the inspector."""
        self.inspect(None)

    @on(EarlierMessages.Clicked)
    async def earlier_clicked(self) -> None:
        """A click on the "earlier exchanges" line mounts more of them."""
        await self.show_earlier()

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
