"""What the inspector asks of one step beyond its candidates: the logit lens and what-if.

Both start from what the model computed at that step, run again from the KV cache by `Engine`:
the lens from every layer's context vector, what-if from the last one. Each goes through the
seed's LM head (`chatapp.lm_head`) exactly as a chosen token does, so the lens's last layer is
the step's own raw distribution, and what-if with the reply's own settings is the step itself.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from chatapp.chat.settings import SamplingSettings
from chatapp.lm_head import output_logits, probabilities_from_logits, raw_probabilities

WHAT_IF_LISTED = 5
"""Most tokens named among those a what-if lets in or cuts out."""


@torch.inference_mode()
def logit_lens(model, layer_states: torch.Tensor) -> list[tuple[int, float]]:
    """(top token, its raw probability) for each layer's context vector `(layers, d_model)`.

    Each row goes through `output_logits` on its own, as a step's context vector does, so the
    last row's numbers are the step's own to the last bit.
    """
    tops = []
    for state in layer_states:  # (d_model,)
        # The raw distribution at this layer: the head's logits at temperature 1, unfiltered.
        prob, token = raw_probabilities(output_logits(model, state)).max(-1)
        tops.append(torch.stack([token.to(prob.dtype), prob]))
    return [(int(token), prob) for token, prob in torch.stack(tops).tolist()]


def _distribution(logits: torch.Tensor, settings: SamplingSettings, previous_ids: torch.Tensor) -> torch.Tensor:
    """The distribution `settings` sample from at a step with these raw `logits` `(V,)`."""
    return probabilities_from_logits(
        logits, settings.temperature, settings.top_k, top_p=settings.top_p, min_p=settings.min_p,
        repetition_penalty=settings.repetition_penalty, previous_ids=previous_ids,
    )


class WhatIfNumbers(NamedTuple):
    """A step's distribution under other settings, against the one it was sampled from."""

    chosen: tuple[int, float, float]
    """(id, new probability, raw probability) of the reply's token at this step."""
    chosen_before: float
    """Its probability under the reply's settings."""
    top: list[tuple[int, float, float]]
    """(id, new probability, raw probability) of the best candidates under the new settings."""
    kept_before: int
    """Tokens the reply's settings could sample."""
    kept_after: int
    """Tokens the new settings could sample."""
    entered: list[tuple[int, float, float]]
    """(id, new probability, raw probability) of the likeliest tokens only the new settings keep."""
    dropped: list[tuple[int, float, float]]
    """(id, old probability, raw probability) of the likeliest tokens only the old settings kept."""
    entered_count: int
    """How many tokens only the new settings keep."""
    dropped_count: int
    """How many only the old settings kept."""


@torch.inference_mode()
def what_if(logits: torch.Tensor, previous_ids: torch.Tensor, before: SamplingSettings, after: SamplingSettings,
            chosen_id: int, top_n: int) -> WhatIfNumbers:
    """Compare the distributions `before` and `after` give the raw `logits` `(V,)` of one step
    (`previous_ids` `(T,)` are what a repetition penalty sees)."""
    old = _distribution(logits, before, previous_ids)  # (V,)
    new = _distribution(logits, after, previous_ids)  # (V,)
    raw = raw_probabilities(logits)  # (V,)

    def rows(ids: torch.Tensor, probs: torch.Tensor) -> list[tuple[int, float, float]]:
        return [(int(i), p, r) for i, p, r in zip(ids.tolist(), probs[ids].tolist(), raw[ids].tolist())]

    def likeliest(mask: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        count = min(int(mask.sum()), WHAT_IF_LISTED)
        return torch.topk(torch.where(mask, probs, -1.0), count).indices if count else mask.nonzero()[:0, 0]

    kept_old, kept_new = old > 0, new > 0
    only_new, only_old = kept_new & ~kept_old, kept_old & ~kept_new
    top = torch.topk(new, min(top_n, int(kept_new.sum()))).indices
    return WhatIfNumbers(
        chosen=rows(torch.tensor([chosen_id], device=logits.device), new)[0],
        chosen_before=float(old[chosen_id]),
        top=rows(top, new),
        kept_before=int(kept_old.sum()),
        kept_after=int(kept_new.sum()),
        entered=rows(likeliest(only_new, new), new),
        dropped=rows(likeliest(only_old, old), old),
        entered_count=int(only_new.sum()),
        dropped_count=int(only_old.sum()),
    )
