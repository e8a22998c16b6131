"""The key bar: the keys the focused widget and the screen offer, on one line.

It stands in for Textual's `Footer`, which builds one widget per key and rebuilds them all
whenever the bindings change (a dozen times while the app starts): about 0.15 s of the UI
thread at start-up, taken from the thread that loads the model, and ten more widgets in every
layout pass while a reply streams. This is one widget rendering one line of text; a click on a
hint presses its key. Keys that do not fit the width are left out from the right.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget


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


def key_hints(screen) -> tuple[KeyHint, ...]:
    """The shown bindings active on `screen`, one per action, in Textual's order, then the
    command palette's key (as Textual's footer shows it)."""
    app = screen.app
    active = screen.active_bindings
    hints: dict[str, KeyHint] = {}
    for _node, binding, enabled, _tooltip in active.values():
        if binding.show and binding.action not in hints:
            hints[binding.action] = KeyHint(binding.key, app.get_key_display(binding), binding.description, enabled)
    if app.ENABLE_COMMAND_PALETTE and app.COMMAND_PALETTE_BINDING in active:
        _node, binding, enabled, _tooltip = active[app.COMMAND_PALETTE_BINDING]
        hints.setdefault(binding.action, KeyHint(binding.key, app.get_key_display(binding), binding.description, enabled))
    return tuple(hints.values())


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
        """The hints that fit the width, each with its text."""
        key_style, description_style, disabled = (
            self.get_visual_style(name) for name in ("key-bar--key", "key-bar--description", "key-bar--disabled")
        )
        fitted: list[tuple[KeyHint, Content]] = []
        used = 0
        for hint in self.hints:
            item = Content.assemble(
                (f" {hint.display} ", key_style if hint.enabled else disabled),
                (hint.description, description_style if hint.enabled else disabled),
                " ",
            )
            if used + item.cell_length > self.size.width and fitted:
                break
            fitted.append((hint, item))
            used += item.cell_length
        return fitted

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
