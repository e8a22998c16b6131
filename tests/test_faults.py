"""Faults inside generation: NaN logits stop the reply with a clear error, the engine lives on."""

from __future__ import annotations

import pytest
import torch

from chatapp.chat.settings import SamplingSettings
from chatapp.engine.engine import Engine
from chatapp.lm_head import NonFiniteLogitsError

MESSAGES = [{"role": "user", "content": "Count to ten."}]
SETTINGS = SamplingSettings(temperature=0, max_new_tokens=12)


@pytest.mark.model
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_logits_stop_the_turn_and_the_engine_recovers(tiny_loaded, value):
    engine = Engine(tiny_loaded)
    clean = [s.token_id for s in engine.start_turn(MESSAGES, SETTINGS)]
    norm = tiny_loaded.model.base_model.norm.weight  # the final norm, before the LM head
    saved = norm.detach().clone()
    try:
        turn = engine.start_turn(MESSAGES, SETTINGS)
        steps = []
        with pytest.raises(NonFiniteLogitsError):
            for step in turn:
                steps.append(step)
                if len(steps) == 3:  # from the next token on, the model computes NaN or inf
                    with torch.no_grad():
                        norm.fill_(value)
        assert turn.stats.finish_reason == "error"
        assert len(steps) == 3 and [s.token_id for s in steps] == clean[:3]
        assert turn.stats.text == "".join(s.text for s in steps)  # what was said is kept
    finally:
        with torch.no_grad():
            norm.copy_(saved)
    again = [s.token_id for s in engine.start_turn(MESSAGES, SETTINGS)]
    assert again == clean  # the cache was rebuilt, nothing stale
