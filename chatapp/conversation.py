"""Conversations as `{"role", "content"}` messages, rendered with the model's chat template.

Also fits a conversation into the context window: the oldest turns go first, a leading system
message always stays, and a single message too large for the window is refused with numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

Message = dict
"""One chat message: {"role": "system"|"user"|"assistant", "content": str}."""


class ContextOverflowError(ValueError):
    """Even with every older turn dropped, the conversation does not fit the context window."""


@dataclass(frozen=True)
class FittedPrompt:
    """A conversation rendered for the model, after fitting it into the context window."""

    messages: list[Message]
    """The messages actually sent (oldest turns possibly dropped)."""
    text: str
    """The templated text, ending with the assistant's generation prompt."""
    dropped_turns: int
    """How many old turns (a user message and the replies after it) were left out."""


def render(tokenizer, messages: list[Message]) -> str:
    """The chat template applied to `messages`, ready for the assistant to answer."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def count_tokens(tokenizer, text: str) -> int:
    """Tokens in already-templated text."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _turn_starts(messages: list[Message]) -> list[int]:
    """Indices of user messages that begin a turn, except a leading system message."""
    return [i for i, m in enumerate(messages) if m["role"] == "user"]


def fit_to_context(tokenizer, messages: list[Message], context_length: int, reply_budget: int) -> FittedPrompt:
    """Drop the oldest turns until the prompt plus `reply_budget` fits in `context_length`.

    The system message (if first) is kept. When only the last turn is left and the prompt alone
    still fills the window, `ContextOverflowError` says by how much.
    """
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    body = messages[len(system) :]
    dropped = 0
    while True:
        kept = system + body
        text = render(tokenizer, kept)
        n = count_tokens(tokenizer, text)
        if n + reply_budget <= context_length:
            return FittedPrompt(kept, text, dropped)
        starts = _turn_starts(body)
        if len(starts) <= 1:
            if n < context_length:  # fits, with less room to reply than asked for
                return FittedPrompt(kept, text, dropped)
            raise ContextOverflowError(
                f"the message is too long: the prompt needs {n} tokens but the model's context window"
                f" is {context_length} tokens"
            )
        body = body[starts[1] :]
        dropped += 1
