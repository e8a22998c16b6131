"""Shared fixtures: the real default model (loaded once) and tiny random models from configs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from chatapp.chat.records import ModelInfo
from chatapp.loading.models import LoadedModel, load_model

TINY_VOCAB = 49152
"""Tiny models share the default tokenizer's vocabulary, so they can chat through it."""


@pytest.fixture(scope="session", autouse=True)
def private_log_folder(tmp_path_factory):
    """chatapp's log file (`--log-file`'s default, in the user state folder) goes to a temporary
    folder in every test and every process a test starts, never the user's."""
    folder = tmp_path_factory.mktemp("state")
    saved = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(folder)
    yield folder
    if saved is None:
        del os.environ["XDG_STATE_HOME"]
    else:
        os.environ["XDG_STATE_HOME"] = saved


@pytest.fixture(scope="session", autouse=True)
def int4_kernel_built() -> bool:
    """Build chatapp's int4 kernel (once per machine, about 10 s; kept in the user cache) before
    any test, so every int4 decoder takes it up when it is created rather than at some step of
    a test; False where the CPU or a missing compiler rule it out."""
    from chatapp.runtime import int4_kernel

    return int4_kernel.load()


def block_kernel_build(build: str):
    """The operators of block-kernel `build`. Where it cannot be compiled the test is skipped when
    this machine has no C++ compiler, and fails when it has one (a compile error is a defect)."""
    from chatapp.runtime import block_kernel

    ops = block_kernel.load(build)
    if ops is None:
        reason = f"the {build} build cannot be compiled here: {block_kernel.failure(build)}"
        if shutil.which(os.environ.get("CXX", "c++")) is not None:
            pytest.fail(reason)
        pytest.skip(reason)
    return ops


@pytest.fixture(scope="session")
def default_model() -> LoadedModel:
    """SmolLM2-135M-Instruct from the bundled GGUF, plain float32 (the reference path)."""
    return load_model("default", device="cpu", dtype="float32", quantize="none")


def tiny_llama(**overrides):
    """A 2-layer random Llama in float32, built from a config (no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    config = LlamaConfig(**{**shape, **overrides})
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_loaded(default_model) -> LoadedModel:
    """A tiny random model speaking through the default model's tokenizer and chat template."""
    model = tiny_llama()
    model.generation_config.eos_token_id = default_model.tokenizer.eos_token_id
    info = ModelInfo(
        name="tiny-llama", device="cpu", dtype="float32", context_length=512, vocab_size=TINY_VOCAB
    )
    return LoadedModel(model=model, tokenizer=default_model.tokenizer, info=info)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A random 2-layer GPT-2 folder whose tokenizer has no chat template."""
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


@pytest.fixture(scope="session")
def base_gguf(tmp_path_factory) -> Path:
    """A base model's GGUF file: the default file without its chat template, written by the gguf
    package's own `gguf-new-metadata` (its converted copy is keyed by content, so every run
    reuses one)."""
    import subprocess
    import sys

    from chatapp.loading.gguf_files import default_gguf_path

    out = tmp_path_factory.mktemp("base-gguf") / "SmolLM2-135M-base.gguf"
    tool = Path(sys.executable).parent / "gguf-new-metadata"
    subprocess.run([str(tool), "--force", "--remove-metadata", "tokenizer.chat_template", str(default_gguf_path()), str(out)],
                   check=True, capture_output=True)
    return out
