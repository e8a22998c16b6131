"""A streamed reply costs one layout pass per update, and still ends up sized and drawn right;
the private Textual hook it overrides is still the one it was written for."""

from __future__ import annotations

import inspect

import pytest
from textual.app import App, ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Markdown

from chatapp.chat.conversation import Exchange, ReplyVersion
from chatapp.chat.settings import SamplingSettings
from chatapp.tui.widgets.messages_view import AssistantMessage
from chatapp.tui.widgets.reply_markdown import OneLayoutPass, ReplyMarkdown

pytestmark = pytest.mark.anyio

SIZING_HOOK = "_size_updated"
"""The private `Widget` method `OneLayoutPass` overrides."""
HOOK_PARAMETERS = [("self", inspect.Parameter.empty), ("size", inspect.Parameter.empty),
                   ("virtual_size", inspect.Parameter.empty), ("container_size", inspect.Parameter.empty),
                   ("layout", True)]
"""Its parameters and defaults, as in Textual 0.86 to 8.2: `OneLayoutPass` passes `layout=False`."""

UPDATES = [f"Sentence {i} of a reply that is long enough to wrap onto another line of the log. " for i in range(6)]
"""Streamed fragments: each one makes the reply taller."""


class CountingScreen(Screen):
    """Counts Textual's layout passes (the cost this module's mixin halves)."""

    layouts = 0

    def __init__(self, reference: str = "") -> None:
        super().__init__()
        self.reference = reference

    def compose(self) -> ComposeResult:
        streamed, whole = Exchange("hi"), Exchange("hi")
        streamed.add_version(ReplyVersion(SamplingSettings()))
        whole.add_version(ReplyVersion(SamplingSettings(), text=self.reference))
        with VerticalScroll():
            yield AssistantMessage(streamed, 0)
            yield AssistantMessage(whole, 1)  # the same text rendered in one go, for comparison

    def _refresh_layout(self, *args, **kwargs) -> None:
        CountingScreen.layouts += 1
        super()._refresh_layout(*args, **kwargs)


class StreamApp(App):
    def __init__(self, reference: str = "") -> None:
        super().__init__()
        self.reference = reference

    def on_mount(self) -> None:
        self.push_screen(CountingScreen(self.reference))


async def stream(pilot, view: AssistantMessage, fragments: list[str]) -> list[int]:
    """Append each fragment, let the screen settle, return the layout passes each one took."""
    passes = []
    for fragment in fragments:
        view.exchange.reply.text += fragment
        before = CountingScreen.layouts
        await view.append(fragment)
        await pilot.pause(0.1)  # the screen lays out on its next frame
        passes.append(CountingScreen.layouts - before)
    return passes


async def test_each_streamed_update_is_laid_out_once():
    app = StreamApp(reference="".join(UPDATES))
    async with app.run_test(size=(60, 40)) as pilot:
        await pilot.pause()
        view, whole = app.screen.query(AssistantMessage)
        passes = await stream(pilot, view, UPDATES)
        assert passes[1:] == [1] * (len(UPDATES) - 1), passes  # Textual's default is 2 per update
        streamed_height = view.query_one(ReplyMarkdown).region.height
        assert streamed_height == whole.query_one(ReplyMarkdown).region.height > len(UPDATES)
        view.show_reply()
        await pilot.pause()
        assert view.region.height == whole.region.height


def paragraphs(view: AssistantMessage) -> list[Widget]:
    """The paragraph blocks of a reply's Markdown body."""
    return list(view.query_one(ReplyMarkdown).query_children("MarkdownParagraph"))


def texts(view: AssistantMessage) -> list[str]:
    """What each paragraph of a reply's Markdown body shows."""
    return [str(block.content) for block in paragraphs(view)]


async def test_the_first_streamed_text_fills_the_empty_paragraph_in_place():
    # Mounting the reply's first block when its first token comes costs the UI thread in the
    # middle of decoding, and the new block reports its size a frame late: a second layout pass.
    app = StreamApp(reference="Hello there.")
    async with app.run_test(size=(60, 20)) as pilot:
        await pilot.pause()
        view, whole = app.screen.query(AssistantMessage)
        waiting = paragraphs(view)
        assert texts(view) == [""] and texts(whole) == ["Hello there."]  # an empty reply: one empty paragraph
        assert await stream(pilot, view, ["Hello"]) == [1]
        assert paragraphs(view) == waiting and texts(view) == ["Hello"]  # the same block, filled
        await stream(pilot, view, [" there.\n\nA second paragraph."])
        assert texts(view) == ["Hello there.", "A second paragraph."]
        view.exchange.reply.text = ""
        view.show_reply()  # a new version starts empty again
        await pilot.pause()
        assert texts(view) == [""]
        view.exchange.reply.status = "stopped"
        view.show_reply()  # stopped before its first token: nothing, not a blank line
        await pilot.pause()
        assert texts(view) == []


async def test_a_wide_code_block_still_gets_its_scrollbar():
    app = StreamApp()
    async with app.run_test(size=(60, 30)) as pilot:
        await pilot.pause()
        view, _ = app.screen.query(AssistantMessage)
        await stream(pilot, view, ["```\nshort\n", "x" * 200 + "\n", "```\n"])
        fence = next(w for w in view.query("*") if type(w).__name__ == "MarkdownFence")
        assert fence.virtual_size.width > fence.size.width
        assert fence.show_horizontal_scrollbar


def _sized_classes() -> list[type]:
    """The Textual classes whose `SIZING_HOOK` `OneLayoutPass` overrides in chatapp's replies:
    the Markdown widget and every block class it builds."""
    blocks = {Markdown().get_block_class(name) for name in getattr(Markdown, "BLOCKS", {})}
    return [Markdown, *sorted(blocks, key=lambda block: block.__name__)]


@pytest.mark.parametrize("sized", _sized_classes(), ids=lambda sized: sized.__name__)
def test_the_private_sizing_hook_is_the_one_one_layout_pass_overrides(sized):
    import textual

    hook = getattr(sized, SIZING_HOOK, None)
    upgrade = (f"Textual {textual.__version__} changed {sized.__name__}.{SIZING_HOOK}, the private hook "
               "chatapp.tui.widgets.reply_markdown.OneLayoutPass overrides: check that override against it, "
               "then update HOOK_PARAMETERS and the textual pin in pyproject.toml")
    assert callable(hook), upgrade
    parameters = [(p.name, p.default) for p in inspect.signature(hook).parameters.values()]
    assert parameters == HOOK_PARAMETERS, f"{upgrade}: its parameters are now {parameters}"
    assert inspect.signature(hook).return_annotation in (bool, "bool"), upgrade
    assert issubclass(sized, Widget)


def test_one_layout_pass_takes_the_hooks_parameters():
    parameters = [(p.name, p.default) for p in inspect.signature(OneLayoutPass._size_updated).parameters.values()]
    assert parameters == HOOK_PARAMETERS
