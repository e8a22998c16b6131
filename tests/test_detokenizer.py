"""Stream-safe detokenization: joined deltas equal the full decode, no broken characters."""

from __future__ import annotations

import pytest

from chatapp.engine.detokenizer import REPLACEMENT_CHAR, ReplyDetokenizer, TokenTexts, vocabulary_ids

TEXTS = [
    "Party time 🎉🎊 with family 👨‍👩‍👧‍👦 and flags 🇫🇷🇯🇵!",
    "中文测试：你好，世界。日本語のテキスト、한국어 텍스트.",
    "Crème brûlée, façade, naïve, São Paulo, Ærøskøbing, Dvořák, ½ ≠ ∞.",
    "Mixed: café ☕ 東京 🚀 — “quotes” and ‘apostrophes’…\n\tindented",
]


@pytest.mark.model
@pytest.mark.parametrize("text", TEXTS)
def test_joined_deltas_equal_full_decode(default_model, text):
    tok = default_model.tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    detok = ReplyDetokenizer(tok)
    deltas = [detok.step(i) for i in ids]
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=True) == text
    assert all(REPLACEMENT_CHAR not in d for d in deltas)
    if any(ord(ch) > 0x7F for ch in text):
        assert "" in deltas, "some token should hold part of a character, or the test proves little"


@pytest.mark.model
def test_special_tokens_are_skipped_in_reply_text(default_model):
    tok = default_model.tokenizer
    ids = tok("Hi there", add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    detok = ReplyDetokenizer(tok)
    assert "".join(detok.step(i) for i in ids) == "Hi there"


@pytest.mark.model
def test_token_pieces_are_the_raw_bytes(default_model):
    tok = default_model.tokenizer
    texts = TokenTexts(tok)
    text = "🎉 中文 é"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert b"".join(texts.piece(i) for i in ids) == text.encode("utf-8")
    assert texts.piece(tok.convert_tokens_to_ids("<|im_end|>")) == b"<|im_end|>"


class SlowTokenizer:
    """A byte tokenizer without a Rust backend: exercises the fallback path."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def test_fallback_path_without_fast_tokenizer():
    data = "né 🎉".encode("utf-8")
    detok = ReplyDetokenizer(SlowTokenizer())
    deltas = [detok.step(b) for b in data]
    assert "".join(deltas) == "né 🎉"
    assert all(REPLACEMENT_CHAR not in d for d in deltas)


def test_a_vocabulary_entry_is_found_without_the_whole_vocabulary(default_model):
    tokenizer = default_model.tokenizer
    vocab = tokenizer.get_vocab()
    tokens = ("<|im_end|>", "<|im_start|>", "Hello", "Ġworld", "<|no such token|>")
    assert vocabulary_ids(tokenizer, tokens) == [vocab.get(token) for token in tokens]
    assert vocabulary_ids(tokenizer, tokens)[-1] is None


class VocabularyOnly:
    """A tokenizer without a Rust backend that counts how often its vocabulary is built."""

    built = 0

    def get_vocab(self):
        VocabularyOnly.built += 1
        return {"a": 7, "<end>": 9}


def test_a_slow_tokenizer_s_vocabulary_is_built_once_for_all_lookups():
    assert vocabulary_ids(VocabularyOnly(), ["a", "<end>", "nothing"]) == [7, 9, None]
    assert VocabularyOnly.built == 1
