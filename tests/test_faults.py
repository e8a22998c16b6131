"""Faults inside generation: NaN logits stop the reply with a clear error, the engine lives on."""

from __future__ import annotations

import pytest
import torch

from chatapp.engine import Engine
from chatapp.lm_head import NonFiniteLogitsError
from chatapp.settings import SamplingSettings

MESSAGES = [{"role": "user", "content": "Count to ten."}]
SETTINGS = SamplingSettings(temperature=0, max_new_tokens=12)


class PoisonAfter:
    """A forward hook on the final norm that turns its output into NaN from the n-th call on."""

    def __init__(self, calls: int, value: float = float("nan")) -> None:
        self.calls, self.value, self.seen, self.enabled = calls, value, 0, True

    def __call__(self, module, inputs, output):
        self.seen += 1
        if self.enabled and self.seen > self.calls:
            return torch.full_like(output, self.value)
        return output


@pytest.mark.model
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_logits_stop_the_turn_and_the_engine_recovers(tiny_loaded, value):
    engine = Engine(tiny_loaded)
    clean = [s.token_id for s in engine.start_turn(MESSAGES, SETTINGS)]
    poison = PoisonAfter(calls=3, value=value)
    handle = tiny_loaded.model.base_model.norm.register_forward_hook(poison)
    try:
        turn = engine.start_turn(MESSAGES, SETTINGS)
        steps = []
        with pytest.raises(NonFiniteLogitsError):
            for step in turn:
                steps.append(step)
        assert turn.stats.finish_reason == "error"
        assert 0 < len(steps) < len(clean) and [s.token_id for s in steps] == clean[: len(steps)]
        assert turn.stats.text == "".join(s.text for s in steps)  # what was said is kept
    finally:
        handle.remove()
    again = [s.token_id for s in engine.start_turn(MESSAGES, SETTINGS)]
    assert again == clean  # the cache was rebuilt, nothing stale
