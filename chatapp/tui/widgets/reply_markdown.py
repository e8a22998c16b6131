"""The Markdown body of a reply, made cheap to grow while it streams.

Each streamed update changes the reply's height. Textual lays the screen out, and then, because
the size of the reply, its Markdown body and the block being written changed, each of them asks
for a second layout and repaint in the next frame (`Widget._size_updated` sets `virtual_size`, a
reactive with `layout=True`). For a box whose height follows its content and that never scrolls,
that second pass changes nothing: the first pass already sized and painted it (code fences,
which scroll sideways, get their scrollbars in that first pass too). `OneLayoutPass` keeps the
new sizes without asking for it: one layout pass per streamed update instead of two (what that
saves: README, Performance).
"""

from __future__ import annotations

import functools

from markdown_it import MarkdownIt
from markdown_it.token import Token
from textual.await_complete import AwaitComplete
from textual.geometry import Size
from textual.widgets import Markdown
from textual.widgets.markdown import MarkdownBlock


class OneLayoutPass:
    """Mixin for widgets sized by their content: a size change needs no second layout pass."""

    def _size_updated(self, size: Size, virtual_size: Size, container_size: Size, layout: bool = True) -> bool:
        return super()._size_updated(size, virtual_size, container_size, layout=False)


@functools.cache
def one_pass_block(block_class: type[MarkdownBlock]) -> type[MarkdownBlock]:
    """`block_class` with `OneLayoutPass` (same name, so the same CSS rules apply)."""
    return type(block_class.__name__, (OneLayoutPass, block_class), {})


@functools.lru_cache(maxsize=1)
def shared_parser() -> MarkdownIt:
    """One Markdown parser for every reply (Textual builds a new one per streamed fragment
    otherwise), keeping the model's line breaks: a single newline inside a paragraph is a line
    break, not Markdown's soft break that joins the lines (a poem, an address, an unbulleted
    list stay as written). Streamed and finished replies go through this one parser."""
    parser = MarkdownIt("gfm-like")
    parser.core.ruler.push("keep_line_breaks", _soft_breaks_to_hard)
    return parser


def _soft_breaks_to_hard(state) -> None:
    """A markdown-it core rule: every soft break is a line break (Textual draws a soft break as
    a space; markdown-it's own `breaks` option changes only its HTML renderer)."""
    for token in state.tokens:
        for child in token.children or ():
            if child.type == "softbreak":
                child.type = "hardbreak"


class ReplyMarkdown(OneLayoutPass, Markdown):
    """A reply's Markdown body; its blocks, too, are laid out once per update."""

    def __init__(self, **kwargs) -> None:
        """A Markdown widget parsing with the shared parser (`kwargs` go to `Markdown`)."""
        super().__init__(parser_factory=shared_parser, **kwargs)

    def show(self, markdown: str, streaming: bool = False) -> AwaitComplete:
        """Show `markdown` (`update`); a reply `streaming` with no text yet gets one empty
        paragraph, which its first text fills in place (a paragraph mounted then, in the middle
        of decoding, costs the UI thread more, and reports its size a frame late: a second
        layout pass). A finished empty reply shows nothing."""
        shown = self.update(markdown)
        if markdown or not streaming:
            return shown

        async def with_empty_paragraph() -> None:
            await shown
            async with self.lock:
                if not self.source and not self.query_children(MarkdownBlock):
                    paragraph = self.get_block_class("paragraph_open")(self, Token("paragraph_open", "p", 1), (0, 0))
                    await self.mount(paragraph)

        return AwaitComplete(with_empty_paragraph())

    def get_block_class(self, block_name: str) -> type[MarkdownBlock]:
        """Textual's block class for `block_name`, with `OneLayoutPass`."""
        return one_pass_block(super().get_block_class(block_name))
