"""`--device-map auto` with a memory limit splits a model and it still generates."""

from __future__ import annotations

import pytest
import torch

from chatapp.chat.settings import SamplingSettings
from chatapp.engine.engine import Engine
from chatapp.loading.models import ModelLoadError, load_model, parse_max_memory
from tests.conftest import tiny_llama


@pytest.fixture
def tiny_folder(tmp_path, default_model):
    model = tiny_llama(num_hidden_layers=4, intermediate_size=2048)  # layers big enough to split
    model.generation_config.eos_token_id = default_model.tokenizer.eos_token_id
    model.save_pretrained(tmp_path)
    default_model.tokenizer.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.model
def test_device_map_auto_with_memory_limit_splits_and_generates(tiny_folder):
    whole = load_model(str(tiny_folder), device="cpu", dtype="float32")
    def size_kb(module):
        return sum(p.numel() * p.element_size() for p in module.parameters()) // 1024

    embedding_kb = size_kb(whole.model.get_input_embeddings())
    layers_kb = size_kb(whole.model) - embedding_kb
    # Room for the embedding and about half the layers: the rest must go elsewhere (disk here).
    limit = {"cpu": f"{embedding_kb + layers_kb // 2}KB"}
    split = load_model(str(tiny_folder), dtype="float32", device_map="auto", max_memory=limit)
    places = set(split.model.hf_device_map.values())
    assert len(places) > 1, split.model.hf_device_map  # really split (CPU memory and disk here)
    assert split.info.device.startswith("auto:")
    messages = [{"role": "user", "content": "Hello there"}]
    greedy = SamplingSettings(temperature=0, max_new_tokens=12)
    expected = [s.token_id for s in Engine(whole).start_turn(messages, greedy)]
    got = [s.token_id for s in Engine(split).start_turn(messages, greedy)]
    assert got == expected and len(got) > 0


@pytest.mark.parametrize("text", ["", "cpu", "cpu=lots", "=2GB", "cpu=2GB,,gpu"])
def test_bad_max_memory_is_one_clear_error(text):
    with pytest.raises(ModelLoadError, match="max-memory"):
        parse_max_memory(text)


def test_max_memory_parses_devices():
    assert parse_max_memory("0=10GiB, cpu=30GiB,cuda:1=5GB") == {0: "10GiB", "cpu": "30GiB", 1: "5GB"}


def test_out_of_memory_names_the_size_and_what_to_try(tmp_path):
    from chatapp.loading.model_source import ModelSource, out_of_memory_message

    (tmp_path / "model.safetensors").write_bytes(b"\0" * 3_000_000)
    message = out_of_memory_message("big/model", ModelSource(str(tmp_path), "model"), "cuda:0", torch.float32)
    assert "0.0 GB" in message or "GB of weights" in message
    assert "--dtype bfloat16" in message and "\n" not in message
