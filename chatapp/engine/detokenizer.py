"""Token ids to text, safely: stream-safe reply deltas and the literal bytes of one token.

`ReplyDetokenizer` wraps `tokenizers.decoders.DecodeStream`: a character split across tokens
(emoji, CJK, accents in byte-level vocabularies) is held back until complete, so no delta ever
holds a broken character and the joined deltas equal the decoded reply.
"""

from __future__ import annotations

import functools
import re

from tokenizers.decoders import DecodeStream

REPLACEMENT_CHAR = "\ufffd"
"""What a decoder emits for an incomplete UTF-8 sequence."""
BYTE_FALLBACK_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
"""SentencePiece byte-fallback tokens such as `<0xE2>`."""
SENTENCEPIECE_SPACE = "\u2581"
"""SentencePiece's visible word-boundary mark."""


@functools.lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    # GPT-2's reversible byte <-> printable-unicode table, inverted.
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _backend(tokenizer):
    """The Rust `tokenizers.Tokenizer` behind a transformers tokenizer, or None."""
    return getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)


def vocabulary_ids(tokenizer, tokens) -> list[int | None]:
    """The id of each vocabulary entry in `tokens` (added tokens included), None where there is
    none: a lookup each in the Rust tokenizer, where there is one, rather than the whole
    vocabulary as a Python dict (Gemma 3's 262,144 entries: tens of MiB); a slow tokenizer's
    vocabulary is built once for all of them."""
    backend = _backend(tokenizer)
    if backend is not None:
        return [backend.token_to_id(token) for token in tokens]
    vocab = tokenizer.get_vocab()
    return [vocab.get(token) for token in tokens]


class ReplyDetokenizer:
    """Turns a reply's token ids, one at a time, into text deltas that never split a character."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True) -> None:
        """Start an empty reply.

        Args:
            tokenizer: a transformers tokenizer (fast ones use DecodeStream).
            skip_special_tokens: leave special tokens (end-of-turn markers) out of the text.
        """
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._backend = _backend(tokenizer)
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens) if self._backend else None
        self._ids: list[int] = []
        self._emitted = ""

    def step(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" while a character is incomplete)."""
        self._ids.append(token_id)
        if self._stream is not None:
            chunk = self._stream.step(self._backend, token_id)
            delta = chunk or ""
        else:  # slow tokenizer: decode everything and emit the new, complete suffix
            text = self._tokenizer.decode(self._ids, skip_special_tokens=self._skip)
            delta = "" if text.endswith(REPLACEMENT_CHAR) else text[len(self._emitted) :]
        self._emitted += delta
        return delta

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        return self._emitted


class TokenTexts:
    """Cached per-token views for the candidates panel: decoded text and raw bytes."""

    def __init__(self, tokenizer) -> None:
        """Wrap `tokenizer`; lookups are cached because the same candidates recur."""
        self._tokenizer = tokenizer
        backend = _backend(tokenizer)
        decoder = getattr(backend, "decoder", None) if backend else None
        self._byte_level = "ByteLevel" in repr(decoder)
        self.text = functools.lru_cache(maxsize=65536)(self._text)
        self.piece = functools.lru_cache(maxsize=65536)(self._piece)

    def _text(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id], skip_special_tokens=False)

    def _piece(self, token_id: int) -> bytes:
        token = self._tokenizer.convert_ids_to_tokens(token_id)
        if token is None:
            return b""
        if token in getattr(self._tokenizer, "all_special_tokens", ()):
            return token.encode("utf-8")
        if self._byte_level:
            table = _byte_level_decoder()
            if all(ch in table for ch in token):
                return bytes(table[ch] for ch in token)
        match = BYTE_FALLBACK_TOKEN.fullmatch(token)
        if match:
            return bytes([int(match.group(1), 16)])
        return token.replace(SENTENCEPIECE_SPACE, " ").encode("utf-8")
