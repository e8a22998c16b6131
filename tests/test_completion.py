"""Completion mode, headless: `chatapp ask --raw TEXT` continues plain text through the same LM
head, on a chat model and on one without a chat template (the seed's exercise: a tiny random
GPT-2 built from a config, with the default model's tokenizer)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.test_cli import chatapp

PROMPT = "The three primary colors are"


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A random 2-layer GPT-2 folder whose tokenizer has no chat template."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from chatapp.loading.gguf_files import converted_dir, default_gguf_path
    from chatapp.loading.models import load_model

    load_model()  # the default model's converted folder holds the tokenizer files
    tokenizer_folder = converted_dir(default_gguf_path())
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=49152, n_positions=256, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    shutil.copy(tokenizer_folder / "tokenizer.json", folder)
    settings = json.loads((tokenizer_folder / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)  # a base model's tokenizer: no chat template
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    return folder


@pytest.mark.model
def test_raw_continues_the_text_itself_not_a_chat():
    result = chatapp("ask", "--raw", "--json", "--temperature", "0", "--max-new-tokens", "12", PROMPT)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    [turn] = [r for r in records if r["type"] == "turn"]
    tokens = [r for r in records if r["type"] == "token"]
    assert turn["text"] == "".join(r["text"] for r in tokens) and turn["tokens"] == len(tokens) == 12
    assert turn["prompt_tokens"] == 5  # the text's own tokens, no chat template around them
    plain = chatapp("ask", "--raw", "--temperature", "0", "--max-new-tokens", "12", PROMPT)
    assert plain.returncode == 0 and plain.stdout == turn["text"] + "\n"
    chat = chatapp("ask", "--json", "--temperature", "0", "--max-new-tokens", "12", PROMPT)
    [chat_turn] = [r for r in map(json.loads, chat.stdout.splitlines()) if r["type"] == "turn"]
    assert chat_turn["prompt_tokens"] > 20  # the same words as a chat message: system and template


def test_a_model_without_a_chat_template_continues_text_and_cannot_chat(tiny_gpt2):
    refused = chatapp("ask", "--model", str(tiny_gpt2), "hello")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"chatapp: error: model {str(tiny_gpt2)!r} has no chat template, so it cannot chat: "
        "`chatapp ask --raw TEXT` continues plain text with it"]
    result = chatapp("ask", "--model", str(tiny_gpt2), "--raw", "--json", "--seed", "1", "--max-new-tokens", "6",
                     "--top", "5", "Once upon a time")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    tokens = [r for r in records if r["type"] == "token"]
    assert records[0]["type"] == "model" and records[0]["vocab_size"] == 49152
    assert 1 <= len(tokens) <= 6 and all(len(r["top"]) == 5 for r in tokens)
    again = chatapp("ask", "--model", str(tiny_gpt2), "--raw", "--json", "--seed", "1", "--max-new-tokens", "6",
                    "--top", "5", "Once upon a time")
    assert [json.loads(line) for line in again.stdout.splitlines()][1:-1] == tokens  # seeded: the same draws


def test_raw_takes_one_text_and_no_system_prompt():
    for args in (["a", "b"], ["--system", "Be brief.", "a"]):
        result = chatapp("ask", "--raw", *args)
        assert result.returncode == 2 and "--raw continues one text" in result.stderr
