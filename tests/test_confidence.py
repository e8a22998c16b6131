"""A reply's confidence: perplexity, mean surprisal and least likely tokens, from its own records."""

from __future__ import annotations

import math

import pytest

from chatapp.chat.confidence import reply_confidence
from chatapp.chat.records import Step


def step(index: int, raw: float, text: str = "x") -> Step:
    return Step(step=index, token_id=index, text=text, prob=1.0, raw_prob=raw, rank=1, entropy=0.0, top=())


def test_perplexity_is_two_to_the_mean_surprisal_of_the_model_s_own_probabilities():
    confidence = reply_confidence([step(0, 0.5, "a"), step(1, 0.25, "b"), step(2, 1.0, "")])
    assert confidence.tokens == 3
    assert confidence.mean_surprisal == pytest.approx((1 + 2 + 0) / 3)
    assert confidence.perplexity == pytest.approx(2 ** 1.0)
    assert [(t.step, t.text) for t in confidence.least_likely] == [(2, "b"), (1, "a"), (3, "")]
    assert "“b” 25% (step 2)" in confidence.describe() and "“⏎ end” 100%" in confidence.describe()


def test_a_certain_reply_has_perplexity_one_and_an_empty_one_none():
    assert reply_confidence([step(i, 1.0) for i in range(4)]).perplexity == 1.0
    assert reply_confidence([]) is None
    assert reply_confidence([step(0, 0.0)]) is None  # a forced token the model gave no chance


@pytest.mark.parametrize("probs", [[0.9, 0.01, 0.3, 0.3, 0.05], [0.2] * 7])
def test_the_least_likely_are_the_lowest_in_step_order_on_ties(probs):
    confidence = reply_confidence([step(i, p) for i, p in enumerate(probs)])
    expected = sorted(range(len(probs)), key=lambda i: (probs[i], i))[:3]
    assert [t.step - 1 for t in confidence.least_likely] == expected
    assert confidence.mean_surprisal == pytest.approx(sum(-math.log2(p) for p in probs) / len(probs))
