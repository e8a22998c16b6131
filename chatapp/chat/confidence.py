"""How sure the model was of a reply: its perplexity, mean surprisal and least likely tokens.

Measured on the model's own probabilities (`Step.raw_prob`: temperature 1, before any filter)
of the tokens the reply holds, its end token included: the surprisal of a token is
`-log2(raw_prob)` bits, the mean surprisal their mean, and the perplexity `2 ** mean`, the
number of equally likely choices that would surprise as much. A reply the filters shaped
(top-k, a low temperature) can still be unlikely to the model: that is what this shows.

Pure Python: no torch, no Textual.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from chatapp.chat.records import Step

LEAST_LIKELY = 3
"""How many of a reply's least likely tokens are named."""


@dataclass(frozen=True)
class UnlikelyToken:
    """One of the tokens the model found least likely in a reply."""

    step: int
    """Its step, counting from 1 as the panel does."""
    text: str
    """Its text (a stop token's is empty)."""
    raw_prob: float
    """The model's own probability of it."""

    def named(self) -> str:
        """E.g. `“Ban” 2.1%` (the end token as `“⏎ end”`)."""
        return f"“{self.text or '⏎ end'}” {100 * self.raw_prob:.3g}%"


@dataclass(frozen=True)
class Confidence:
    """A reply's confidence figures."""

    tokens: int
    """Tokens measured."""
    mean_surprisal: float
    """Mean of `-log2(raw_prob)` over them, in bits."""
    least_likely: tuple[UnlikelyToken, ...]
    """The least likely ones, least likely first."""

    @property
    def perplexity(self) -> float:
        """`2 ** mean_surprisal`."""
        return 2.0 ** self.mean_surprisal

    def describe(self) -> str:
        """One line, e.g. `perplexity 3.2 · 1.68 bits/token · least likely: “Ban” 2.1% (step 7)`."""
        least = ", ".join(f"{t.named()} (step {t.step})" for t in self.least_likely)
        return f"perplexity {self.perplexity:.3g} · {self.mean_surprisal:.2f} bits/token · least likely: {least}"

    def lines(self) -> list[str]:
        """The same, a line per figure (the inspector's panel)."""
        least = [f"  step {t.step} {t.named()}" for t in self.least_likely]
        return [f"reply perplexity {self.perplexity:.3g}", f"mean surprisal {self.mean_surprisal:.2f} bits",
                "least likely:", *least]

    def to_json(self) -> dict:
        """The `confidence` of `chatapp ask --json`'s turn record."""
        return {
            "perplexity": self.perplexity,
            "mean_surprisal_bits": self.mean_surprisal,
            "tokens": self.tokens,
            "least_likely": [{"step": t.step, "text": t.text, "raw_prob": t.raw_prob} for t in self.least_likely],
        }


def reply_confidence(steps: list[Step], least: int = LEAST_LIKELY) -> Confidence | None:
    """The confidence of a reply with these steps; None when there is none to measure."""
    measured = [s for s in steps if s.raw_prob > 0.0]
    if not measured:
        return None
    mean = sum(-math.log2(s.raw_prob) for s in measured) / len(measured)
    lowest = sorted(measured, key=lambda s: (s.raw_prob, s.step))[:least]
    return Confidence(len(measured), mean, tuple(UnlikelyToken(s.step + 1, s.text, s.raw_prob) for s in lowest))
