"""A decode step for a GPU: its choice stays on the model's device until one copy to the host.

On a GPU the host queues kernels ahead of the device, and every value it reads back (`.item()`,
`bool(tensor)`, `torch.nonzero`, torch.multinomial's checks, a tensor made from a Python int)
makes it wait until the queue drains (`chatapp.engine.host_syncs`). The CPU's path reads back
several times a step, which costs a CPU nothing. A step here reads back once:

1. the seed's LM head, `lm_head(..., host_reads=False)`: logits -> penalty -> temperature ->
   top-k (by a stable sort) -> top-p -> min-p -> softmax, the logits left unchecked;
2. one draw, `sample_token_ids(..., host_reads=False)`: torch.multinomial's own algorithm over
   the whole distribution, without its checks;
3. the numbers the panel shows packed into one float64 tensor on the device (`step_numbers`:
   whether the logits were finite rides in the rank), in the layout of the native choice;
4. one copy of them to the host (`chatapp.lm_head.choice_from`).

The drawn token stays on the device as the next step's input (`Decoder.decode_one`'s `token`)
and as the repetition penalty's newest id. The same code runs on a CPU, where the tests hold it
to `choose_token` and count its waits (tests/test_device_steps.py). On a GPU a seed's draws
are torch.multinomial's over the whole vocabulary, so they differ from the CPU's, which draw
over the kept tokens alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from chatapp.lm_head import (
    LN2,
    candidate_order,
    lm_head,
    packed_numbers,
    raw_numbers_in_torch,
    raw_probabilities,
    raw_probabilities_of,
    sample_token_ids,
)

if TYPE_CHECKING:
    from chatapp.chat.settings import SamplingSettings


def steps_on_device(device: torch.device) -> bool:
    """Whether a model on `device` decodes with `choose_on_device`: everywhere but a CPU, where
    host reads cost nothing and chatapp's kernels run the step."""
    return device.type != "cpu"


@torch.inference_mode()
def choose_on_device(
    model,
    hidden: torch.Tensor,
    settings: "SamplingSettings",
    generator: Callable[[torch.device], torch.Generator],
    top_n: int,
    previous_ids: torch.Tensor | None = None,
    watch_index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`chatapp.lm_head.choose_token`'s choice (its arguments mean the same) without a read back
    to the host.

    Args:
        watch_index: `(W,)` long ids on the model's device whose numbers to report too.

    Returns:
        the step's numbers (`step_numbers`: pass them to `choice_from` with the watched ids)
        and the drawn token `(1,)`, both on the device.
    """
    # The seed's LM head: logits -> penalty -> temperature -> top-k -> top-p -> min-p -> softmax.
    probs, logits = lm_head(
        model, hidden, settings.temperature, settings.top_k, return_logits=True, top_p=settings.top_p,
        min_p=settings.min_p, repetition_penalty=settings.repetition_penalty, previous_ids=previous_ids,
        host_reads=False,
    )  # (V,), (V,)
    # One draw with torch.multinomial's algorithm from the seeded generator.
    token = sample_token_ids(probs, 1, generator(probs.device), host_reads=False)  # (1,)
    return step_numbers(token, probs, logits, top_n, watch_index), token


def step_numbers(token: torch.Tensor, probs: torch.Tensor, logits: torch.Tensor, top_n: int,
                 watch_index: torch.Tensor | None = None) -> torch.Tensor:
    """float64 numbers of one step, on the device: the chosen token's raw rank (NaN where the
    logits or the probabilities were not all finite) and the raw entropy in bits, then the ids, sampled and raw
    probabilities of the token and its `top_n` best candidates (kept tokens by sampled
    probability, then filtered ones by raw), then the sampled and raw probabilities and the raw
    rank of each watched id: `describe_choice`'s and `watched_odds`' numbers.

    Args:
        token: `(1,)` the drawn id.
        probs: `(V,)` the distribution it was drawn from.
        logits: `(V,)` raw float32 logits.
        top_n: how many candidates.
        watch_index: `(W,)` ids to report too, or None.
    """
    log_z, entropy, above = raw_numbers_in_torch(logits, token)  # float64 each
    finite = torch.isfinite(logits.sum()) & torch.isfinite(probs.sum())  # (a tiny temperature overflows)
    rank = torch.where(finite, above + 1, torch.full_like(above, float("nan")))
    n = min(top_n, probs.shape[-1])
    top_ids = torch.topk(candidate_order(probs, raw_probabilities(logits, log_z)), n).indices  # (n,)
    parts = [packed_numbers(token, (rank, entropy / LN2, log_z), top_ids, probs, logits)]
    if watch_index is not None and watch_index.numel():
        watch_index = watch_index.to(logits.device)  # (the head's, where Accelerate spread the layers)
        ranks = (logits.unsqueeze(0) > logits[watch_index].unsqueeze(1)).sum(-1) + 1  # (W,)
        raw = raw_probabilities_of(logits, watch_index, log_z)  # (W,)
        parts += [probs[watch_index].double(), raw.double(), ranks.double()]
    return torch.cat(parts)
