"""The key bar: the keys the focused widget and the screen offer, on one line.

It stands in for Textual's `Footer`, which builds one widget per key and rebuilds them all
whenever the bindings change (a dozen times while the app starts), taking the UI thread from
the start-up that loads the model, and adds ten widgets to every layout pass while a reply
streams (README, Performance). This is one widget rendering one line of text; a click on a
hint presses its key. When the keys do not fit the width, the least important are left out
first (`IMPORTANCE`) and the others keep their order.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from textual import events
from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

IMPORTANCE = (
    "quit_safely",
    "help",
    "stop",
    "leave",
    "branch",
    "version",
    "command_palette",
    "history",
    "regenerate",
    "inspect",
    "toggle_panel",
    "edit_last",
    "new_chat",
    "heatmap",
)
"""Binding actions (without arguments), most important first: what the bar keeps longest
when it cannot show every key. Quitting and help come first because they are how a newcomer
finds everything else (F1 lists every key, hidden or not); then the way out of what is
happening now (stopping a reply, leaving the inspector) and the inspector's own keys, which
only show while it has the focus and are the point of focusing it; then the palette and the
history, which lead to the rest; then the chat's own actions, commonest first. Actions not
named here come after all of these, in their own order."""
UNRANKED = len(IMPORTANCE)
"""The rank of an action `IMPORTANCE` does not name (after every named one)."""


@dataclass(frozen=True)
class KeyHint:
    """One key as the bar shows it."""

    key: str
    """The key as Textual names it (what a click simulates), e.g. "ctrl+r"."""
    display: str
    """How the key is shown, e.g. "^r"."""
    description: str
    """What it does, e.g. "Regenerate"."""
    enabled: bool = True
    """False when the binding is shown but cannot run now (drawn dim)."""
    action: str = ""
    """The binding's action, e.g. "regenerate" (what `IMPORTANCE` ranks)."""


def importance(action: str) -> int:
    """Where `action` stands in `IMPORTANCE`; a namespace and arguments ("app.version(-1)") are
    ignored."""
    name = action.partition("(")[0].rpartition(".")[2]
    return IMPORTANCE.index(name) if name in IMPORTANCE else UNRANKED


@lru_cache(maxsize=16)
def by_importance(hints: tuple[KeyHint, ...]) -> tuple[int, ...]:
    """The indexes of `hints`, most important first (ties keep their order).

    Cached: the bar renders on every frame that redraws it, and its hints rarely change.
    """
    return tuple(sorted(range(len(hints)), key=lambda i: importance(hints[i].action)))


def key_hints(screen) -> tuple[KeyHint, ...]:
    """The shown bindings active on `screen`, one per action, in Textual's order, then the
    command palette's key (as Textual's footer shows it)."""
    app = screen.app
    active = screen.active_bindings
    hints: dict[str, KeyHint] = {}
    for _node, binding, enabled, _tooltip in active.values():
        if binding.show and binding.action not in hints:
            hints[binding.action] = _hint(app, binding, enabled)
    if app.ENABLE_COMMAND_PALETTE and app.COMMAND_PALETTE_BINDING in active:
        _node, binding, enabled, _tooltip = active[app.COMMAND_PALETTE_BINDING]
        hints.setdefault(binding.action, _hint(app, binding, enabled))
    return tuple(hints.values())


def _hint(app, binding, enabled: bool) -> KeyHint:
    """`binding` as the bar shows it."""
    return KeyHint(binding.key, app.get_key_display(binding), binding.description, enabled, binding.action)


class KeyBar(Widget):
    """One line of key hints, following the screen's active bindings."""

    COMPONENT_CLASSES = {"key-bar--key", "key-bar--description", "key-bar--disabled"}
    """The key, its description, and a hint that cannot run now."""

    DEFAULT_CSS = """
    KeyBar {
        width: 100%;
        height: 1;
    }
    """

    hints: reactive[tuple[KeyHint, ...]] = reactive(())
    """The keys to show, in order."""

    def on_mount(self) -> None:
        """Follow the screen's bindings (they change with the focus)."""
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)
        self.hints = key_hints(self.screen)

    def on_unmount(self) -> None:
        """Stop following them."""
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, screen) -> None:
        if self.is_attached and screen is self.screen:
            self.hints = key_hints(screen)  # equal hints change nothing: no redraw

    def _fitted(self) -> list[tuple[KeyHint, Content]]:
        """The most important hints that fit the width, in the bar's order, each with its text.

        Hints are kept by rank until the next one does not fit; none of lower rank is slipped
        into the space left, so a key never hides one more important than itself. The most
        important hint is kept even when it alone is wider than the bar.
        """
        key_style, description_style, disabled = (
            self.get_visual_style(name) for name in ("key-bar--key", "key-bar--description", "key-bar--disabled")
        )
        items = [
            Content.assemble(
                (f" {hint.display} ", key_style if hint.enabled else disabled),
                (hint.description, description_style if hint.enabled else disabled),
                " ",
            )
            for hint in self.hints
        ]
        kept: list[int] = []
        used = 0
        for index in by_importance(self.hints):
            if used + items[index].cell_length > self.size.width and kept:
                break
            kept.append(index)
            used += items[index].cell_length
        return [(self.hints[index], items[index]) for index in sorted(kept)]

    def render(self) -> Content:
        """The hints that fit the width."""
        return Content.assemble(*(item for _, item in self._fitted()))

    def on_click(self, event: events.Click) -> None:
        """A click on a hint presses its key."""
        start = 0
        for hint, item in self._fitted():
            if start <= event.x < start + item.cell_length:
                self.app.simulate_key(hint.key)
                return
            start += item.cell_length
