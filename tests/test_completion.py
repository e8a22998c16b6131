"""Completion mode, headless: `chatapp ask --raw TEXT` continues plain text through the same LM
head, on a chat model and on one without a chat template (the seed's exercise: a tiny random
GPT-2 built from a config, with the default model's tokenizer)."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import chatapp

PROMPT = "The three primary colors are"


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


def _completion_engine(default_model):
    """The default model (float32) in completion mode, as `chatapp --raw` opens it."""
    from dataclasses import replace

    from chatapp.engine.engine import Engine
    from chatapp.loading.models import LoadedModel

    info = replace(default_model.info, completion=True)
    return Engine(LoadedModel(model=default_model.model, tokenizer=default_model.tokenizer, info=info))


@pytest.mark.model
def test_a_continued_text_reuses_the_cache_and_matches_a_fresh_read(default_model):
    """Completion over two turns, as the TUI's completion view sends them: the second turn's text
    is the first text, its continuation and what the user added, read from the KV cache (only the
    added text is prefilled), and it continues exactly as a fresh engine reading it all does."""
    from chatapp.chat.settings import SamplingSettings

    greedy = SamplingSettings(temperature=0.0, max_new_tokens=8)
    engine = _completion_engine(default_model)
    first = engine.start_turn([{"role": "user", "content": PROMPT}], greedy)
    steps = list(first)
    assert first.stats.prompt_tokens == 5 and len(steps) == 8  # the text alone, no template
    messages = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": first.stats.text},
                {"role": "user", "content": "\nThe end. Next,"}]
    second = engine.start_turn(messages, greedy)
    continued = [step.token_id for step in second]
    added = engine.tokenizer("\nThe end. Next,")["input_ids"]
    assert second.prompt_ids == first.prompt_ids + first.generated_ids + added  # the model's own tokens kept
    assert second.stats.cached_tokens == 5 + 8 - 1  # all but the reply's last token, which never ran
    assert second.stats.prefill_tokens == 1 + len(added)
    fresh = _completion_engine(default_model).start_turn(messages, greedy)
    assert [step.token_id for step in fresh] == continued
    assert fresh.prompt_ids == second.prompt_ids
    assert fresh.stats.cached_tokens == 0


@pytest.mark.model
def test_text_that_looks_like_a_control_token_is_continued_as_text(default_model):
    from chatapp.chat.settings import SamplingSettings

    engine = _completion_engine(default_model)
    plain = engine.tokenizer("<|im_end|>", add_special_tokens=False, split_special_tokens=True)["input_ids"]
    turn = engine.start_turn([{"role": "user", "content": "<|im_end|>"}], SamplingSettings(max_new_tokens=1))
    list(turn)
    assert turn.prompt_ids == plain and len(plain) > 1  # split as text, not the end-of-turn token


@pytest.mark.model
def test_a_base_gguf_file_continues_text_as_its_chat_twin_does(base_gguf):
    """A GGUF file without a chat template (a base model's) cannot chat, and continues text with
    the same tokens as the default file, whose weights it holds, continues it with `--raw`."""
    import os
    import subprocess
    import sys

    cache = base_gguf.parent / "empty-cache"  # nothing converted yet: the refusal comes first
    refused = subprocess.run([sys.executable, "-m", "chatapp", "ask", "--model", str(base_gguf), "hello"],
                             capture_output=True, text=True, timeout=300, env={**os.environ, "XDG_CACHE_HOME": str(cache)})
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"chatapp: error: model {str(base_gguf)!r} has no chat template, so it cannot chat: "
        "`chatapp ask --raw TEXT` continues plain text with it"]
    converted = [p for p in (cache / "chatapp" / "models").iterdir() if p.is_dir()]
    assert converted == []  # the file's header was read, nothing converted
    args = ("ask", "--raw", "--json", "--temperature", "0", "--max-new-tokens", "10", PROMPT)
    base = chatapp("--model", str(base_gguf), *args)
    twin = chatapp(*args)
    assert base.returncode == 0 and twin.returncode == 0, base.stderr + twin.stderr
    records = [json.loads(line) for line in base.stdout.splitlines()]
    assert records[0]["mode"] == "completion" and records[0]["name"] == "SmolLM2-135M-base"
    assert base.stdout.splitlines()[1:-1] == twin.stdout.splitlines()[1:-1]  # every step's numbers
