"""Conversations as `{"role", "content"}` messages, rendered with the model's chat template.

Message content is text, never control: the template's own special tokens (`<|im_start|>`,
`<|eot_id|>`...) are parsed as such, but the same strings inside a message (typed by the user,
written by the model, or a system prompt) are tokenized as the plain text they are.
`render_prompt` finds where each message's content lies in the templated text (it renders the
template once more with a unique marker in place of each content) and `encode_prompt` tokenizes
the text with special tokens parsed only outside those spans. For ordinary messages the ids are
exactly those of tokenizing the whole templated text.

Completion mode renders a conversation as plain text instead (`render_plain`): the contents one
after another, each piece the user wrote followed by the model's continuation of it, behind the
tokenizer's own leading special token (BOS), as `tokenizer(text)` would start it.

Also fits a conversation into the context window: the oldest turns go first, a leading system
message always stays, and a single message too large for the window is refused with numbers.
"""

from __future__ import annotations

import bisect
import re
import secrets
import threading
from dataclasses import dataclass

Message = dict
"""One chat message: {"role": "system"|"user"|"assistant", "content": str}."""
Span = tuple[int, int]
"""A `[start, end)` character range of a templated text."""
MARKER_NONCE_RANGE = 10**18
"""The marker that stands in for a message's content while its place in the templated text is
found holds a random number below this: no one types it by chance, and digits survive the
filters a template may apply to content (`upper`, `trim`, escaping)."""

_SPLIT_SWITCH = threading.Lock()
"""Held while `encode_special_tokens` of a backend is switched for one encode."""


class ContextOverflowError(ValueError):
    """Even with every older turn dropped, the conversation does not fit the context window."""


@dataclass(frozen=True)
class RenderedPrompt:
    """A conversation rendered by the chat template, with where its messages' contents lie."""

    text: str
    """The templated text, ending with the assistant's generation prompt."""
    content_spans: tuple[Span, ...]
    """Character ranges of `text` that hold message content, in order: always plain text."""


@dataclass(frozen=True)
class FittedPrompt:
    """A conversation rendered for the model, after fitting it into the context window."""

    messages: list[Message]
    """The messages actually sent (oldest turns possibly dropped)."""
    text: str
    """The templated text, ending with the assistant's generation prompt."""
    dropped_turns: int
    """How many old turns (a user message and the replies after it) were left out."""
    content_spans: tuple[Span, ...] = ()
    """Where the messages' contents lie in `text` (see `RenderedPrompt`)."""
    ids: tuple[int, ...] = ()
    """`text` as token ids, contents as plain text (`encode_prompt`)."""


def render(tokenizer, messages: list[Message]) -> str:
    """The chat template applied to `messages`, ready for the assistant to answer."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_plain(tokenizer, messages: list[Message]) -> RenderedPrompt:
    """Completion mode: the messages' contents one after another (a system message has no
    place in plain text and is left out), behind the tokenizer's leading BOS token if it adds
    one; every content is a content span, so nothing typed or written is read as a control
    token."""
    text = tokenizer.decode(_leading_special_ids(tokenizer), skip_special_tokens=False)
    spans: list[Span] = []
    for message in messages:
        if message["role"] != "system":
            spans.append((len(text), len(text) + len(message["content"])))
            text += message["content"]
    return RenderedPrompt(text, tuple(spans))


def _leading_special_ids(tokenizer) -> list[int]:
    """The special tokens (BOS) the tokenizer puts before a text it encodes, if any."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    return full[: full.index(bare[0])] if bare and bare[0] in full else []


def _as_rendered(content: str, text: str, at: int, after: str) -> str | None:
    """How the template wrote `content` at `text[at:]`, followed by the template's `after`:
    as is, or trimmed (Llama 3's `| trim`); None when neither fits."""
    for candidate in dict.fromkeys((content, content.strip(), content.lstrip(), content.rstrip())):
        if text.startswith(candidate, at) and text.startswith(after, at + len(candidate)):
            return candidate
    return None


def render_prompt(tokenizer, messages: list[Message]) -> RenderedPrompt:
    """`render(messages)` and the spans of its messages' contents.

    The template is rendered a second time with a marker for each content, which splits it
    into the template's own text (frames) and content slots; each slot is then matched in the
    real text. A template that changes a content beyond trimming it (or decides on it) cannot
    be matched: then the prompt is the template's frames around the contents as written.
    """
    frames, contents = _frames(tokenizer, messages)
    text = render(tokenizer, messages)
    spans = _find_contents(text, frames, contents)
    if spans is not None:
        return RenderedPrompt(text, spans)
    text, spans = frames[0], []
    for content, after in zip(contents, frames[1:]):
        spans.append((len(text), len(text) + len(content)))
        text += content + after
    return RenderedPrompt(text, tuple(spans))


def _frames(tokenizer, messages: list[Message]) -> tuple[list[str], list[str]]:
    """The template's text between content slots (one more than slots) and each slot's content."""
    nonce = secrets.randbelow(MARKER_NONCE_RANGE)
    marked = [
        {**m, "content": f"@{nonce}:{i}@"} if isinstance(m.get("content"), str) else m
        for i, m in enumerate(messages)
    ]
    parts = re.split(rf"@{nonce}:(\d+)@", render(tokenizer, marked))  # frame, index, frame, ...
    return parts[0::2], [messages[int(i)]["content"] for i in parts[1::2]]


def _find_contents(text: str, frames: list[str], contents: list[str]) -> tuple[Span, ...] | None:
    """Where `text` holds `contents` between `frames`, or None when it is not built that way."""
    if not text.startswith(frames[0]):
        return None
    spans: list[Span] = []
    at = len(frames[0])
    for content, after in zip(contents, frames[1:]):
        written = _as_rendered(content, text, at, after)
        if written is None:
            return None
        spans.append((at, at + len(written)))
        at += len(written) + len(after)
    return tuple(spans) if at == len(text) else None


def _encode(backend, text: str, split_special_tokens: bool):
    """`backend.encode(text)`, with special tokens parsed or split as text as asked (the switch
    is the backend's state, which transformers also sets per call: it is set here each time)."""
    with _SPLIT_SWITCH:
        previous = backend.encode_special_tokens
        backend.encode_special_tokens = split_special_tokens
        try:
            return backend.encode(text, add_special_tokens=False)
        finally:
            backend.encode_special_tokens = previous


def _special_ids(backend) -> frozenset[int]:
    """Ids of the added tokens that are special: the control tokens content must not make."""
    return frozenset(i for i, token in backend.get_added_tokens_decoder().items() if token.special)


def _in_content(spans: list[Span], starts: list[int], start: int, end: int) -> bool:
    """Whether `[start, end)` overlaps one of `spans` (sorted, `starts` their starts)."""
    k = bisect.bisect_right(starts, start)
    return any(spans[j][0] < end and start < spans[j][1] for j in (k - 1, k) if 0 <= j < len(spans))


def encode_prompt(tokenizer, text: str, content_spans: tuple[Span, ...] = (), start: int = 0) -> list[int]:
    """Token ids of `text[start:]`, with special tokens parsed outside `content_spans` only.

    The whole text is tokenized as usual; only where a special token turned up inside a
    content span, the text between the two template special tokens around it is tokenized
    again with special tokens split as text. Tokenizers without a `tokenizers` backend encode
    frame and content pieces separately instead (transformers' `split_special_tokens`).
    """
    text = text[start:]
    spans = sorted((max(a - start, 0), b - start) for a, b in content_spans if b > start)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not text:
        return []
    if backend is None:
        return _encode_pieces(tokenizer, text, spans)
    encoding = _encode(backend, text, split_special_tokens=False)
    ids, special, starts = encoding.ids, _special_ids(backend), [a for a, _ in spans]
    at_special = [k for k, token_id in enumerate(ids) if token_id in special]
    frame = {k for k in at_special if not _in_content(spans, starts, *encoding.token_to_chars(k))}
    if len(frame) == len(at_special):  # no special token came from content: the usual ids
        return ids
    out: list[int] = []
    run_start, run_from = 0, 0
    for k in sorted(frame):
        begin, end = encoding.token_to_chars(k)
        out += _plain_run(backend, text[run_start:begin], ids[run_from:k], special)
        out.append(ids[k])
        run_start, run_from = end, k + 1
    return out + _plain_run(backend, text[run_start:], ids[run_from:], special)


def _plain_run(backend, text: str, run_ids: list[int], special: frozenset[int]) -> list[int]:
    """A stretch between two template special tokens: its ids as tokenized, or, when special
    tokens were parsed in it (they came from content), its text again as plain text."""
    if not any(token_id in special for token_id in run_ids):
        return run_ids
    return list(_encode(backend, text, split_special_tokens=True).ids) if text else []


def _encode_pieces(tokenizer, text: str, spans: list[Span]) -> list[int]:
    """`encode_prompt` for a tokenizer without a `tokenizers` backend: piece by piece."""
    ids: list[int] = []
    at = 0
    for begin, end in spans + [(len(text), len(text))]:
        for piece, split in ((text[at:begin], False), (text[begin:end], True)):
            if piece:
                ids += tokenizer(piece, add_special_tokens=False, split_special_tokens=split)["input_ids"]
        at = end
    return ids


def count_tokens(tokenizer, text: str) -> int:
    """Tokens in already-templated text, every special token string parsed as the token.

    For a conversation use `len(encode_prompt(...))` of `render_prompt`: message content
    counted as the text it is.
    """
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _turn_starts(messages: list[Message]) -> list[int]:
    """Indices of user messages that begin a turn, except a leading system message."""
    return [i for i, m in enumerate(messages) if m["role"] == "user"]


def fit_to_context(tokenizer, messages: list[Message], context_length: int, reply_budget: int,
                   plain: bool = False) -> FittedPrompt:
    """Drop the oldest turns until the prompt plus `reply_budget` fits in `context_length`.

    The system message (if first) is kept. When only the last turn is left and the prompt alone
    still fills the window, `ContextOverflowError` says by how much. With `plain`, the
    conversation is rendered as plain text (`render_plain`, completion mode), not by the chat
    template.
    """
    rendered = render_plain if plain else render_prompt
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    body = messages[len(system) :]
    dropped = 0
    while True:
        kept = system + body
        prompt = rendered(tokenizer, kept)
        ids = tuple(encode_prompt(tokenizer, prompt.text, prompt.content_spans))
        n = len(ids)
        fitted = FittedPrompt(kept, prompt.text, dropped, prompt.content_spans, ids)
        if n + reply_budget <= context_length:
            return fitted
        starts = _turn_starts(body)
        if len(starts) <= 1:
            if n < context_length:  # fits, with less room to reply than asked for
                return fitted
            raise ContextOverflowError(
                f"the {'text' if plain else 'message'} is too long: the prompt needs {n} tokens but the model's context window"
                f" is {context_length} tokens"
            )
        body = body[starts[1] :]
        dropped += 1
