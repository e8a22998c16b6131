"""The decode step a CUDA graph replays on a GPU (`chatapp.runtime.captured_step`), run as it is on
this CPU: the numbers of `decode_one` (across a crop and the KV buffer's growth), the same
operations with the same shapes and arguments at every position (what lets one recorded graph
replay every step), nothing read back to the host, and a turn of the real model through it
choosing what the CPU's path chooses."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from chatapp.chat.settings import SamplingSettings
from chatapp.engine.engine import Engine
from chatapp.engine.host_syncs import HostSyncProbe
from chatapp.runtime.captured_step import CapturedStep
from chatapp.runtime.llama_decoder import LlamaDecoder
from tests.conftest import tiny_llama


def _with_captured_step(decoder: LlamaDecoder) -> LlamaDecoder:
    decoder.captured = CapturedStep(decoder)
    decoder.reset()  # KV buffers allocated from now on as the captured step needs them
    return decoder


def _described(argument):
    """A tensor as its shape, strides and dtype; lists of them in turn; anything else as it is."""
    if isinstance(argument, torch.Tensor):
        return tuple(argument.shape), argument.stride(), argument.dtype
    if isinstance(argument, (list, tuple)):
        return tuple(_described(a) for a in argument)
    return argument


def _step_trace(step: CapturedStep) -> list[tuple]:
    """Each operation of one captured step: its name, its tensors' shapes, strides and dtypes and
    its other arguments."""
    trace = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            trace.append((str(func), _described(args), tuple((k, _described(v)) for k, v in sorted(kwargs.items()))))
            return func(*args, **kwargs)

    with Record():
        step.step()
    return trace


def test_the_captured_step_computes_decode_one_s_numbers():
    model = tiny_llama()
    plain = LlamaDecoder(model, kernel=False)
    captured = _with_captured_step(LlamaDecoder(model, kernel=False))
    ids = torch.randint(0, 1000, (300,), generator=torch.Generator().manual_seed(4)).tolist()
    for decoder in (plain, captured):
        decoder.prefill(ids[:250])
    # steps across the buffer's growth (256 -> 512 positions), then a crop (a branch) and more steps
    for at, token in enumerate(ids[250:290] + ["crop"] + ids[260:275]):
        if token == "crop":
            plain.keep(255)
            captured.keep(255)
            continue
        expected = plain.decode_one(token)
        got = captured.decode_one(token, torch.tensor([token]))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert captured.capacity == 512 and captured.token_ids == plain.token_ids


def test_every_position_runs_the_same_operations_with_nothing_read_back():
    decoder = _with_captured_step(LlamaDecoder(tiny_llama(), kernel=False))
    decoder.prefill(list(range(10, 40)))
    step = decoder.captured
    traces = []
    for position in (30, 31, 200):
        step.token.fill_(7)
        step.position.fill_(position)
        traces.append(_step_trace(step))
    assert traces[0] == traces[1] == traces[2]
    assert any("index_copy" in name for name, _, _ in traces[0])
    with HostSyncProbe() as probe:
        step.step()
    assert probe.waits == []


@pytest.mark.model
def test_a_greedy_turn_through_the_captured_step_is_the_cpu_s_turn(default_model):
    messages = [{"role": "user", "content": "Name three colours."}]
    settings = SamplingSettings(max_new_tokens=16, temperature=0.0)
    turns = []
    for captured in (False, True):
        engine = Engine(default_model, top_n=8)
        if captured:
            engine.steps_on_device = True  # as on a GPU: the drawn token stays a tensor
            _with_captured_step(engine.decoder)
            runs = []
            run = engine.decoder.captured.run
            engine.decoder.captured.run = lambda token, position: runs.append(position) or run(token, position)
        turns.append(list(engine.start_turn(messages, settings)))
    cpu, graph = turns
    assert [s.token_id for s in graph] == [s.token_id for s in cpu]
    assert len(runs) == len(graph) - 1  # every step after the prompt's
    for got, expected in zip(graph, cpu):
        assert [c.token_id for c in got.top] == [c.token_id for c in expected.top]
        assert got.prob == pytest.approx(expected.prob, abs=1e-5)
