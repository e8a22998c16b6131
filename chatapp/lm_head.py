"""Where a token is chosen: the LM head and sampling, as in the seed document.

The path, one short step each, follows `../shared/seed/000_ea6efaac940ed9f8.txt`:
the last token's context vector -> `model.get_output_embeddings()` -> vocabulary logits ->
temperature -> top-k -> softmax -> `torch.multinomial` -> decode.

`lm_head` and `get_top_token` keep the seed's signatures. `choose_token` is the whole choice of
one token as the engine makes it, in four steps: `lm_head` (asked for the logits too, so the
panel can show raw probabilities), the kept ids, `sample_token_ids` (the sampling half of
`get_top_token`) and `describe_choice`, which turns the step into the plain numbers the UI
shows with a single device-to-host copy.

The projection is the model's own output embedding, whatever it holds. For an int4 model it is
`chatapp.runtime.quantize.OutputHead`: a 4-bit pass over every row, then the best
`EXACT_TOP` rows recomputed from the float32 weights, so the logits of every token shown, and of
every token top-k (k up to `EXACT_TOP`) can choose, are exact; that pass runs on chatapp's kernel once `runtime.kernel_switch` has
moved the decoder onto it. A large head kept in wider GGUF blocks (Gemma's Q8_0) is read the same
way once its 4-bit copy is made (`chatapp.runtime.requantized_head.RequantizedHead`), its exact
rows from the file's blocks.

The top-k step keeps the k highest logits, ties broken by the lower id (`top_k_reference`).
Where the block kernel is loaded, it and `kept_ids` run on its one-pass steps (the same numbers:
top-k about 0.08 against 1.1 ms for a 262,144-token vocabulary), and the raw distribution's
numbers (`raw_numbers`: its normaliser, entropy and the chosen token's rank) on its two-pass
summary with float64 sums (0.1 against 0.65 ms), which the engine names with `use_kernels`.
With top-k alone, the softmax runs over the kept logits: the same distribution as over the
whole row with the others at -inf.

On the kernels, the steps after the projection run as one call (`native_choice`: the block
kernel's `choose_token`, C++ in `runtime/kernels/lm_head_steps.h`), the same operations in the
same order, so the same numbers and draws (tests/test_native_choice.py); and on either kernel
a whole decode step is one call, its layers, this head and this choice (the decoders'
`decode_choosing`, which the engine's turn uses for every step after the first). These
functions stay the reference the native steps are held to, and run wherever those do not.

Beyond the seed, and off by default: repetition penalty, top-p and min-p, applied with
transformers' own logits processors (imported only when one is on: importing transformers
costs a second of start-up) in transformers' order (penalty on the raw logits, then
temperature, top-k, top-p, min-p) so each setting means what it means in `model.generate`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, NamedTuple

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from chatapp.chat.settings import SamplingSettings

LN2 = math.log(2.0)
"""Converts nats to bits for the entropy shown to users."""
COMPACT_SAMPLING_RATIO = 4
"""Sample over the support alone when it is under a quarter of the vocabulary."""


class NonFiniteLogitsError(RuntimeError):
    """The model produced NaN or infinite logits (e.g. a float16 overflow)."""


def project(head, hidden: torch.Tensor) -> torch.Tensor:
    """`head(hidden)`, through a matrix-vector product when that is the same thing.

    For one context vector, `torch.mv` streams the `(V, d_model)` matrix about 1.6x faster on
    CPU than `nn.Linear`'s general matrix product does; the numbers differ only in rounding order.
    """
    if hidden.dim() == 1 and type(head) is torch.nn.Linear and head.bias is None:
        return torch.mv(head.weight, hidden.to(head.weight.dtype))
    return head(hidden)


@torch.inference_mode()
def output_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Project context vectors to vocabulary logits exactly as the model itself would.

    Args:
        model: a transformers causal LM.
        hidden: `(d_model,)` or `(B, d_model)` context vectors from the final block.

    Returns:
        float32 logits, `(V,)` or `(B, V)`.
    """
    # Project d_model -> vocabulary with the model's own output embedding matrix (an int4
    # model's is `OutputHead`: a 4-bit pass, then its best rows exact in float32).
    head = model.get_output_embeddings()
    logits = project(head, hidden)
    config = model.config
    # Some architectures transform logits after the projection; match them exactly.
    softcap = getattr(config, "final_logit_softcapping", None)
    if softcap:  # Gemma 2/3
        logits = torch.tanh(logits / softcap) * softcap
    if getattr(config, "model_type", "") == "cohere" and getattr(config, "logit_scale", None):
        logits = logits * config.logit_scale
    if getattr(config, "logits_scaling", None):  # Granite
        logits = logits / config.logits_scaling
    return logits.float()


TopK = Callable[[torch.Tensor, int], "tuple[torch.Tensor, torch.Tensor]"]
"""`(V,)` scores and k -> the k highest scores, highest first, and their ids (`top_k_reference`)."""


def top_k_reference(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k highest of each row of `scores` `(..., V)`, highest first, ties at equal scores broken
    by the lower id (torch.topk breaks them in no stated order): values and ids `(..., k)`."""
    values, ids = torch.topk(scores, min(k + 1, scores.shape[-1]), dim=-1)  # (..., k + 1)
    if k < scores.shape[-1] and bool((values[..., k] == values[..., k - 1]).any()):
        # equal scores across the cut: keep every higher one, then the tied ones with the lowest ids
        kth = values[..., k - 1 : k]  # (..., 1)
        above, tied = scores > kth, scores == kth
        wanted = k - above.sum(-1, keepdim=True)
        keep = above | (tied & (tied.cumsum(-1) <= wanted))
        ids = torch.nonzero(keep)[:, -1].view(*scores.shape[:-1], k)  # ascending ids
    else:
        ids = ids[..., :k].sort(dim=-1).values  # the same k tokens, in ascending ids
    values = scores.gather(-1, ids)
    order = torch.sort(values, dim=-1, descending=True, stable=True).indices  # equal scores keep id order
    return values.gather(-1, order), ids.gather(-1, order)


def top_k_by_sort(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`top_k_reference`'s answer without reading anything back to the host: a stable sort puts
    equal scores in ascending id order, so its first k are the k highest with ties broken by the
    lower id, highest first. A full sort, so for a device whose host reads cost more than
    sorting the vocabulary (a GPU), not for a CPU (`top_k`)."""
    values, ids = torch.sort(scores, dim=-1, descending=True, stable=True)  # (..., V)
    return values[..., :k], ids[..., :k]


RawSummary = Callable[[torch.Tensor, int], torch.Tensor]
"""`(V,)` raw logits and a token id (or -1) -> float64 `(3,)`: `raw_numbers`' answer."""
NativeChoice = Callable[..., "tuple[torch.Tensor, torch.Tensor, torch.Tensor]"]
"""The block kernel's `choose_token`: `choose_token`'s steps after the projection, in one call
(`kernels/lm_head_steps.cpp`)."""


class _Kernels:
    top_k: TopK | None = None
    kept_ids: Callable[[torch.Tensor], torch.Tensor] | None = None
    raw_summary: RawSummary | None = None
    choose: NativeChoice | None = None


def use_kernels(top_k: TopK | None = None, kept_ids: Callable[[torch.Tensor], torch.Tensor] | None = None,
                raw_summary: RawSummary | None = None, choose: NativeChoice | None = None) -> None:
    """Compute the top-k step, the kept ids and the raw distribution's numbers of one row on these
    kernels (`top_k_reference`'s and `torch.nonzero`'s answers; `raw_numbers`' within float32
    rounding, in two passes), and with `choose` every step of `choose_token` after the
    projection in one call; or in torch again (None)."""
    _Kernels.top_k, _Kernels.kept_ids, _Kernels.raw_summary, _Kernels.choose = top_k, kept_ids, raw_summary, choose


def top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`top_k_reference`, on the kernel `use_kernels` named for a single float32 CPU row."""
    kernel = _Kernels.top_k
    if kernel is not None and scores.device.type == "cpu" and scores.dtype == torch.float32:
        if scores.dim() == 1:
            return kernel(scores, k)
        if scores.dim() == 2 and scores.shape[0] == 1:
            values, ids = kernel(scores[0], k)
            return values.unsqueeze(0), ids.unsqueeze(0)
    return top_k_reference(scores, k)


def probabilities_from_logits(
    logits: torch.Tensor,
    temperature: float = 0.7,
    k: int = 50,
    *,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    previous_ids: torch.Tensor | None = None,
    host_reads: bool = True,
) -> torch.Tensor:
    """Turn logits into the distribution to sample from. `logits` is never modified.

    Args:
        logits: `(V,)` or `(B, V)` raw logits.
        temperature: divide logits by this; 0 means greedy (a one-hot at the argmax).
        k: keep exactly the k highest logits (ties at the k-th broken by index); 0 keeps all.
        top_p: keep the smallest set of tokens whose probability reaches top_p.
        min_p: drop tokens below min_p times the most likely token's probability.
        repetition_penalty: penalise tokens in `previous_ids`, as transformers does.
        previous_ids: `(T,)` or `(B, T)` ids the penalty applies to.
        host_reads: False computes the same distribution without reading a value back to the
            host (on a GPU each read waits for its queue to drain): NaN or infinite logits are
            then not checked here but left to the caller, and top-k runs as `top_k_by_sort`.

    Returns:
        float32 probabilities of the same shape as `logits`, zero outside the kept set.
    """
    # One reduction instead of a full isfinite pass: any NaN or inf makes the sum non-finite.
    if host_reads and not torch.isfinite(logits.float().sum()):
        raise NonFiniteLogitsError("the model produced NaN or infinite logits")
    single = logits.dim() == 1
    scores = logits.float().unsqueeze(0) if single else logits.float()  # (B, V)
    # Repetition penalty acts on the raw logits, before temperature (transformers' order).
    if repetition_penalty is not None and repetition_penalty != 1.0 and previous_ids is not None:
        ids = previous_ids.unsqueeze(0) if previous_ids.dim() == 1 else previous_ids
        if ids.numel():
            from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

            scores = RepetitionPenaltyLogitsProcessor(repetition_penalty)(ids.to(scores.device), scores)
    if temperature == 0:
        # Greedy, exactly: all probability on the argmax.
        probs = F.one_hot(scores.argmax(dim=-1), scores.shape[-1]).to(torch.float32)
        return probs[0] if single else probs
    # Temperature scaling: lower -> more confident, higher -> more random.
    scaled = scores / temperature
    # Top-k: keep exactly k logits, every other one becomes -inf.
    vocab = scaled.shape[-1]
    if 0 < k < vocab:
        top_values, top_indices = (top_k if host_reads else top_k_by_sort)(scaled, k)  # (B, k)
        if (top_p is None or top_p >= 1.0) and not min_p:
            # Softmax over the kept logits: the distribution of the whole row with the rest at
            # -inf, without a pass over the vocabulary.
            probs = torch.zeros_like(scaled).scatter(-1, top_indices, F.softmax(top_values, dim=-1))
            return probs[0] if single else probs
        scaled = torch.full_like(scaled, -float("inf")).scatter(-1, top_indices, top_values)
    if top_p is not None and top_p < 1.0:
        from transformers.generation.logits_process import TopPLogitsWarper

        scaled = TopPLogitsWarper(top_p)(None, scaled)
    if min_p is not None and min_p > 0.0:
        from transformers.generation.logits_process import MinPLogitsWarper

        scaled = MinPLogitsWarper(min_p)(None, scaled)
    # Softmax turns the filtered logits into a probability distribution.
    probs = F.softmax(scaled, dim=-1)
    return probs[0] if single else probs


@torch.inference_mode()
def lm_head(
    model,
    last_token_context_vector: torch.Tensor,
    temperature: float = 0.7,
    k: int = 50,
    *,
    return_logits: bool = False,
    **filters,
):
    """The seed's LM head: context vector -> logits -> temperature -> top-k -> softmax.

    Args:
        model: a transformers causal LM.
        last_token_context_vector: `(d_model,)` or `(B, d_model)` output of the final block.
        temperature: 0 means greedy.
        k: top-k cut; 0 or k >= vocabulary size means no cut.
        return_logits: also return the float32 logits (for raw probabilities).
        **filters: `top_p`, `min_p`, `repetition_penalty`, `previous_ids`
            (see `probabilities_from_logits`).

    Returns:
        probabilities `(V,)`/`(B, V)`, or `(probabilities, logits)` with `return_logits`.
    """
    logits = output_logits(model, last_token_context_vector)
    probabilities = probabilities_from_logits(logits, temperature, k, **filters)
    return (probabilities, logits) if return_logits else probabilities


def raw_numbers(logits: torch.Tensor, token_id: torch.Tensor | int | None = None) -> torch.Tensor:
    """float64 `(3,)` numbers of the raw distribution (temperature 1, no filter) of one row of raw
    `logits` `(V,)`: its log-normaliser `log sum(exp(logits))`, its entropy in nats, and how many
    logits lie above `token_id`'s (0 without one). On the block kernel's `raw_summary` where the
    engine named it (two passes, float64 sums), else in torch (a float32 log-sum-exp)."""
    kernel = _Kernels.raw_summary
    if kernel is not None and logits.dim() == 1 and logits.device.type == "cpu" and logits.dtype == torch.float32:
        return kernel(logits, -1 if token_id is None else int(token_id))
    return raw_numbers_in_torch(logits, token_id)


def raw_numbers_in_torch(logits: torch.Tensor, token_id: torch.Tensor | int | None = None) -> torch.Tensor:
    """`raw_numbers` in torch (a float32 log-sum-exp) wherever the logits are, reading nothing
    back to the host when `token_id` is a tensor on their device."""
    log_z = torch.logsumexp(logits.float(), -1)  # ()
    log_raw = logits.float() - log_z  # (V,)
    entropy = -torch.dot(log_raw.exp(), log_raw)
    if token_id is None:
        above = torch.zeros((), dtype=torch.long, device=logits.device)
    else:  # gather, not logits[token_id]: indexing by a tensor reads it back to the host
        chosen = torch.as_tensor(token_id, device=logits.device).reshape(1)
        above = torch.count_nonzero(logits > logits.gather(-1, chosen))
    return torch.stack([log_z.double(), entropy.double(), above.double()])


def raw_probabilities(logits: torch.Tensor, log_normalizer: torch.Tensor | None = None) -> torch.Tensor:
    """The raw distribution `(..., V)` of raw `logits`, computed as every raw probability the UI
    shows is (the step's candidates, the lens, what-if, watched tokens): `exp(logit - log_z)` in
    float64, rounded to float32, with `log_z` from `raw_numbers` (or `log_normalizer`, its first
    number, where the caller has it). Each probability is thus a function of its own logit and the
    row's normaliser alone, the same to the last bit wherever it appears (`raw_probabilities_of`)."""
    if log_normalizer is None:
        log_normalizer = torch.stack([raw_numbers(row)[0] for row in logits.reshape(-1, logits.shape[-1])])
        log_normalizer = log_normalizer.reshape(*logits.shape[:-1], 1) if logits.dim() > 1 else log_normalizer[0]
    return torch.exp(logits.double() - log_normalizer).float()


def raw_probabilities_of(logits: torch.Tensor, ids: torch.Tensor, log_normalizer: torch.Tensor) -> torch.Tensor:
    """`raw_probabilities(logits, log_normalizer)[ids]`, computing only those `(n,)`."""
    return raw_probabilities(logits[ids], log_normalizer)


def kept_ids(probabilities: torch.Tensor) -> torch.Tensor:
    """`(S,)` ids of the tokens a single distribution `(V,)` can be sampled to (its nonzero
    entries), in ascending order."""
    kernel = _Kernels.kept_ids
    if kernel is not None and probabilities.device.type == "cpu" and probabilities.dtype == torch.float32:
        return kernel(probabilities)
    return torch.nonzero(probabilities).squeeze(-1)


def sample_token_ids(
    probabilities: torch.Tensor,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    support: torch.Tensor | None = None,
    host_reads: bool = True,
) -> torch.Tensor:
    """Sample token ids with `torch.multinomial` (seeded when `generator` is given).

    For a single distribution whose support is small (top-k kept 50 of 49,152 tokens), the draw
    runs over the support alone: the same distribution, about 15 times cheaper on a CPU.
    `support` is `kept_ids(probabilities)` when the caller has it already. With `host_reads`
    False, one draw over the whole distribution by `multinomial_without_sync`.
    """
    if not host_reads:
        if num_samples != 1:
            raise ValueError("a draw without host reads takes one sample")
        return multinomial_without_sync(probabilities, generator)
    if probabilities.dim() == 1:
        support = kept_ids(probabilities) if support is None else support  # (S,)
        if support.numel() * COMPACT_SAMPLING_RATIO < probabilities.numel():
            picks = torch.multinomial(probabilities[support], num_samples=num_samples, generator=generator)
            return support[picks]
    return torch.multinomial(probabilities, num_samples=num_samples, generator=generator)


def multinomial_without_sync(probabilities: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """`torch.multinomial(probabilities, 1, generator=generator)`: the same draw from the same
    generator state (tests/test_device_steps.py), by torch's own one-sample algorithm (ATen's
    exponential race: the argmax of `p / q`, `q ~ Exp(1)` for every entry). What it leaves out
    are torch.multinomial's two checks of the distribution, each a value read back to the host
    (on a GPU a wait for its queue): the caller has checked its logits are finite instead."""
    race = torch.empty_like(probabilities).exponential_(1, generator=generator)  # (..., V)
    return torch.argmax(probabilities / race, dim=-1, keepdim=True)  # (..., 1)


def get_top_token(probabilities: torch.Tensor, tokenizer, top_n: int = 1, generator=None) -> str:
    """The seed's decoder: sample `top_n` token(s) from `probabilities` and decode them."""
    final_token_id = sample_token_ids(probabilities, top_n, generator)
    return tokenizer.decode(final_token_id.reshape(-1).tolist())


class Choice(NamedTuple):
    """One step's numbers, on the host."""

    token_id: int
    """The chosen token."""
    prob: float
    """Its probability in the sampled distribution."""
    raw_prob: float
    """Its probability at temperature 1, before any filter."""
    rank: int
    """Its 1-based rank in the raw distribution."""
    entropy: float
    """Entropy of the raw distribution, in bits."""
    top_ids: list[int]
    """Best candidates, by sampled then raw probability."""
    top_probs: list[float]
    """Their sampled probabilities."""
    top_raw_probs: list[float]
    """Their raw probabilities."""
    watched: tuple[tuple[int, float, float, int], ...] = ()
    """(id, sampled probability, raw probability, raw rank) of each watched token."""


def describe_choice(
    token_id: torch.Tensor,
    probabilities: torch.Tensor,
    logits: torch.Tensor,
    top_n: int,
    support: torch.Tensor | None = None,
) -> Choice:
    """The numbers one step shows, copied to the host in a single transfer (two when fewer than
    `top_n` tokens survive the filters).

    Args:
        token_id: `()` the chosen id (on the model's device).
        probabilities: `(V,)` the distribution it was sampled from.
        logits: `(V,)` raw float32 logits.
        top_n: how many candidates to report.
        support: `kept_ids(probabilities)`, when the caller has it: the best candidates are then
            ranked among the kept tokens alone (tens of values instead of the whole vocabulary,
            about 0.2 ms a step on a CPU).
    """
    log_z, entropy, above = raw_numbers(logits, token_id)  # float64 each
    n = min(top_n, probabilities.shape[-1])
    # Kept tokens by sampled probability first; filtered-out ones after them, by raw probability.
    if support is not None and support.numel() >= n:  # the n best are kept tokens, all > 0
        top_ids = support[torch.topk(probabilities[support], n).indices]  # (n,)
    else:
        top_ids = torch.topk(probabilities, n).indices  # (n,): right whenever n tokens are kept
    numbers = (above + 1, entropy / LN2, log_z)
    choice = choice_from(packed_numbers(token_id, numbers, top_ids, probabilities, logits))
    if choice.top_probs and choice.top_probs[-1] == 0.0:  # the n-th candidate was filtered out
        top_ids = torch.topk(candidate_order(probabilities, raw_probabilities(logits, log_z)), n).indices
        choice = choice_from(packed_numbers(token_id, numbers, top_ids, probabilities, logits))
    return choice


def candidate_order(probabilities: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """`(V,)` keys whose highest are the best candidates: kept tokens by sampled probability
    first, then filtered-out ones by `raw` probability."""
    return torch.where(probabilities > 0, probabilities, raw - 1.0)


def packed_numbers(token_id: torch.Tensor, numbers: tuple, top_ids: torch.Tensor, probabilities: torch.Tensor,
                   logits: torch.Tensor) -> torch.Tensor:
    """float64 `(2 + 3 (n + 1),)` on the logits' device, in `choice_from`'s layout: [rank,
    entropy], then the ids, sampled and raw probabilities of the chosen token followed by
    `top_ids` (`numbers`: the rank, the entropy in bits and the log-normaliser, float64). Ids and
    ranks are exact in float64; the probabilities are float32 numbers already."""
    rank, entropy, log_z = numbers
    ids = torch.cat([token_id.reshape(1), top_ids])  # (n + 1,)
    raw = raw_probabilities_of(logits, ids, log_z)  # (n + 1,)
    return torch.cat([torch.stack([rank, entropy]), ids.double(), probabilities[ids].double(), raw.double()])


@torch.inference_mode()
def choose_token(
    model,
    hidden: torch.Tensor,
    settings: "SamplingSettings",
    generator: Callable[[torch.device], torch.Generator],
    top_n: int,
    previous_ids: torch.Tensor | None = None,
    watch_ids: tuple[int, ...] = (),
) -> Choice:
    """Choose the next token from the last position's context vector, as the engine does.

    Args:
        model: a transformers causal LM (or a plain module tree with its output embeddings).
        hidden: `(d_model,)` the final block's output at the last position.
        settings: temperature, top-k, top-p, min-p and repetition penalty.
        generator: the turn's seeded generator for the device the probabilities land on.
        top_n: how many candidates to describe.
        previous_ids: `(T,)` the ids the repetition penalty applies to.
        watch_ids: tokens whose numbers to report too, wherever they rank.

    Returns:
        the chosen token and the numbers the panel shows.
    """
    if _Kernels.choose is not None and hidden.device.type == "cpu":
        return native_choice(model, hidden, settings, generator, top_n, previous_ids, watch_ids)
    # The seed's LM head: logits -> penalty -> temperature -> top-k -> top-p -> min-p -> softmax.
    probs, logits = lm_head(
        model, hidden, settings.temperature, settings.top_k, return_logits=True, top_p=settings.top_p,
        min_p=settings.min_p, repetition_penalty=settings.repetition_penalty, previous_ids=previous_ids,
    )  # (V,), (V,)
    # The tokens the filters kept: shared by the draw and the candidates.
    support = kept_ids(probs)  # (S,)
    # One draw with torch.multinomial from the seeded generator.
    token = sample_token_ids(probs, 1, generator(probs.device), support)[0]  # ()
    # The step's numbers, in one copy to the host.
    choice = describe_choice(token, probs, logits, top_n, support)
    return choice._replace(watched=watched_odds(probs, logits, watch_ids)) if watch_ids else choice


@torch.inference_mode()
def native_choice(model, hidden: torch.Tensor, settings: "SamplingSettings",
                  generator: Callable[[torch.device], torch.Generator], top_n: int,
                  previous_ids: torch.Tensor | None = None, watch_ids: tuple[int, ...] = ()) -> Choice:
    """`choose_token` (its arguments mean the same), its steps after the projection in one call of the block kernel
    (`use_kernels`' `choose`): the same operations in the same order, so the same distribution,
    draws and numbers (tests/test_native_choice.py holds the two together)."""
    # The seed's projection: the context vector through model.get_output_embeddings().
    logits = output_logits(model, hidden)  # (V,)
    # Penalty -> temperature -> top-k -> top-p -> min-p -> softmax -> torch.multinomial -> numbers.
    numbers, kept, kept_probs = _Kernels.choose(
        logits, *native_choice_settings(settings, generator(logits.device), top_n, previous_ids))
    choice = choice_from(numbers)
    if not watch_ids:
        return choice
    probabilities = torch.zeros_like(logits).index_copy_(0, kept, kept_probs)  # (V,)
    return choice._replace(watched=watched_odds(probabilities, logits, watch_ids))


def native_choice_settings(settings: "SamplingSettings", generator: torch.Generator, top_n: int,
                           previous_ids: torch.Tensor | None = None) -> tuple:
    """The native choice's arguments after the logits (the block kernel's `choose_token`, and the
    int4 kernel's whole `decode_step`): temperature, k, top-p (1: off), min-p (0: off), the
    repetition penalty (1: off) and its ids, the generator and how many candidates."""
    penalty = settings.repetition_penalty
    previous = previous_ids if penalty is not None and previous_ids is not None else _NO_IDS
    return (settings.temperature, settings.top_k, 1.0 if settings.top_p is None else settings.top_p,
            settings.min_p or 0.0, 1.0 if penalty is None else penalty, previous, generator, top_n)


def choice_from(numbers: torch.Tensor, watch_ids: tuple[int, ...] = ()) -> Choice:
    """The `Choice` of a native choice's float64 numbers (the block kernel's `choose_token`: the
    rank and entropy, then the ids, probabilities and raw probabilities of the token and its
    candidates; a device step's end with the sampled and raw probabilities and the rank of each
    of `watch_ids`), in one copy to the host; NonFiniteLogitsError where it found none (empty,
    or a NaN rank)."""
    packed = numbers.tolist()
    if not packed or math.isnan(packed[0]):
        raise NonFiniteLogitsError("the model produced NaN or infinite logits")
    w = len(watch_ids)
    watched = packed[len(packed) - 3 * w :] if w else []
    packed = packed[: len(packed) - 3 * w]
    m = (len(packed) - 2) // 3  # the token and its candidates
    ids, probs, raws = packed[2 : 2 + m], packed[2 + m : 2 + 2 * m], packed[2 + 2 * m :]
    return Choice(
        token_id=int(ids[0]), prob=probs[0], raw_prob=raws[0], rank=int(packed[0]), entropy=packed[1],
        top_ids=[int(i) for i in ids[1:]], top_probs=probs[1:], top_raw_probs=raws[1:],
        watched=tuple((i, watched[j], watched[w + j], int(watched[2 * w + j])) for j, i in enumerate(watch_ids)),
    )


_NO_IDS = torch.empty(0, dtype=torch.long)


def watched_odds(probabilities: torch.Tensor, logits: torch.Tensor,
                 ids: tuple[int, ...]) -> tuple[tuple[int, float, float, int], ...]:
    """(id, sampled probability, raw probability, raw rank) of each of `ids` at this step, from
    the step's own `(V,)` distribution and logits (exact, not guessed from the top candidates)."""
    index = torch.tensor(ids, dtype=torch.long, device=logits.device)  # (W,)
    raw = raw_probabilities_of(logits, index, raw_numbers(logits)[0])  # (W,)
    ranks = (logits.unsqueeze(0) > logits[index].unsqueeze(1)).sum(-1) + 1  # (W,)
    rows = zip(ids, probabilities[index].tolist(), raw.tolist(), ranks.tolist())
    return tuple((i, p, r, int(k)) for i, p, r, k in rows)
