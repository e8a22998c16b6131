"""On a GPU only (skipped elsewhere; `make gpu-check` runs them with the bench): a turn of the
default model waits for the GPU once a step, by CUDA's own count (`set_sync_debug_mode`), its
decode steps replayed from a CUDA graph with `decode_one`'s numbers. The same design is held to
on this CPU by tests/test_device_steps.py and tests/test_captured_step.py."""

from __future__ import annotations

import warnings

import pytest
import torch

from chatapp.chat.settings import SamplingSettings
from chatapp.engine.engine import Engine
from chatapp.loading.models import load_model
from chatapp.runtime.llama_decoder import LlamaDecoder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


@pytest.fixture(scope="module")
def gpu_model():
    return load_model("default", device="cuda")


def test_a_turn_waits_for_the_gpu_once_a_step(gpu_model):
    engine = Engine(gpu_model, top_n=8)
    assert engine.steps_on_device and engine.decoder.captured is not None
    settings = SamplingSettings(max_new_tokens=24, seed=3, temperature=0.9, top_p=0.95, repetition_penalty=1.1)
    turn = iter(engine.start_turn([{"role": "user", "content": "Name three colours."}], settings))
    next(turn)  # the prompt's prefill and first step
    torch.cuda.synchronize()
    steps = 0
    with warnings.catch_warnings(record=True) as waits:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in turn:
                steps += 1
        finally:
            torch.cuda.set_sync_debug_mode("default")
    waits = [w for w in waits if "synchroniz" in str(w.message)]
    assert steps > 5 and len(waits) == steps, [str(w.message) for w in waits[:5]]


def test_the_graph_replays_decode_one_s_numbers(gpu_model):
    plain = LlamaDecoder(gpu_model.model)
    graph = LlamaDecoder(gpu_model.model)
    ids = list(range(100, 400))
    plain.prefill(ids[:250])
    graph.prefill(ids[:250])
    for token in ids[250:]:  # across the KV buffer's growth: captured again
        expected = plain.decode_one(token)
        got = graph.decode_one(token, torch.tensor([token], device="cuda"))
        torch.testing.assert_close(got.float(), expected.float(), rtol=2e-2, atol=2e-2)
    assert graph.captured._graph is not None
