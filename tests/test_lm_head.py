"""The LM head against the seed's reference code, and its documented edge cases."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from scipy.stats import chisquare
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from chatapp.chat.settings import SamplingSettings
from chatapp.lm_head import (
    NonFiniteLogitsError,
    choose_token,
    describe_choice,
    get_top_token,
    kept_ids,
    lm_head,
    probabilities_from_logits,
    sample_token_ids,
)
from tests import seed_reference

D_MODEL, VOCAB = 32, 500


class TinyHead(torch.nn.Module):
    """Just an output embedding, which is all the LM head needs from a model."""

    def __init__(self, d_model: int = D_MODEL, vocab: int = VOCAB, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.out = torch.nn.Linear(d_model, vocab, bias=False)
        torch.nn.init.normal_(self.out.weight, std=0.5)
        self.config = SimpleNamespace(model_type="tiny")

    def get_output_embeddings(self):
        return self.out


@pytest.mark.parametrize("temperature", [0.3, 0.7, 1.0, 1.8])
@pytest.mark.parametrize("k", [1, 5, 50, 499])
def test_single_vector_matches_seed(temperature, k):
    model = TinyHead()
    for trial in range(5):
        vec = torch.randn(D_MODEL, generator=torch.Generator().manual_seed(trial))
        ours = lm_head(model, vec, temperature, k)
        with torch.no_grad():
            reference = seed_reference.lm_head(model, vec, temperature, k)
        assert ours.shape == (VOCAB,)
        torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-7)
        assert int((ours > 0).sum()) == k


@pytest.mark.parametrize("temperature,k", [(0.5, 10), (1.0, 3), (1.3, 100)])
def test_batch_matches_seed_row_by_row(temperature, k):
    model = TinyHead()
    batch = torch.randn(4, D_MODEL, generator=torch.Generator().manual_seed(1))  # (B, d_model)
    ours = lm_head(model, batch, temperature, k)
    assert ours.shape == (4, VOCAB)
    with torch.no_grad():
        for row in range(4):
            torch.testing.assert_close(ours[row], seed_reference.lm_head(model, batch[row], temperature, k))


def test_temperature_zero_is_exact_argmax():
    model = TinyHead()
    batch = torch.randn(8, D_MODEL, generator=torch.Generator().manual_seed(2))
    probs = lm_head(model, batch, temperature=0, k=50)
    logits = model.get_output_embeddings()(batch)
    assert torch.equal(probs.argmax(-1), logits.argmax(-1))
    assert torch.equal(probs.sum(-1), torch.ones(8))
    assert torch.equal(sample_token_ids(probs)[:, 0], logits.argmax(-1))


@pytest.mark.parametrize("k", [0, VOCAB, VOCAB + 7])
def test_no_top_k_cut(k):
    logits = torch.randn(VOCAB, generator=torch.Generator().manual_seed(3))
    probs = probabilities_from_logits(logits, 1.0, k)
    torch.testing.assert_close(probs, torch.softmax(logits, -1))
    assert bool((probs > 0).all())


def test_ties_at_kth_value_keep_exactly_k():
    logits = torch.tensor([5.0, 3.0, 3.0, 3.0, 1.0, 0.0])
    probs = probabilities_from_logits(logits, 1.0, 2)
    assert int((probs > 0).sum()) == 2
    assert probs[0] > 0


def test_input_logits_are_not_mutated_and_float32_used():
    logits = torch.randn(2, VOCAB, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(4))
    before = logits.clone()
    previous = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(4))
    probs = probabilities_from_logits(
        logits, 0.8, 40, top_p=0.9, min_p=0.05, repetition_penalty=1.3, previous_ids=previous
    )
    assert torch.equal(logits, before)
    assert probs.dtype == torch.float32


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_raise(bad):
    logits = torch.randn(VOCAB)
    logits[7] = bad
    with pytest.raises(NonFiniteLogitsError):
        probabilities_from_logits(logits, 0.7, 50)


def test_chi_square_of_seeded_samples():
    logits = torch.randn(VOCAB, generator=torch.Generator().manual_seed(5)) * 2
    probs = probabilities_from_logits(logits, 0.9, 20)
    generator = torch.Generator().manual_seed(1234)
    n = 20_000
    # One draw per row, as the engine draws one token per step.
    samples = sample_token_ids(probs.expand(n, VOCAB), 1, generator)[:, 0]
    kept = torch.nonzero(probs).flatten()
    counts = torch.bincount(samples, minlength=VOCAB)
    assert int(counts.sum() - counts[kept].sum()) == 0, "sampled outside the top-k"
    expected = probs[kept].double() / probs[kept].double().sum() * n
    result = chisquare(counts[kept].double().numpy(), expected.numpy())
    assert result.pvalue > 1e-3, result


def test_same_generator_seed_same_samples():
    probs = probabilities_from_logits(torch.randn(VOCAB, generator=torch.Generator().manual_seed(6)), 1.0, 100)
    a = sample_token_ids(probs, 16, torch.Generator().manual_seed(9))
    b = sample_token_ids(probs, 16, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def _transformers_probs(logits, previous, temperature, k, top_p, min_p, penalty):
    processors = LogitsProcessorList()
    if penalty is not None:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty))
    processors.append(TemperatureLogitsWarper(temperature))
    processors.append(TopKLogitsWarper(k))
    if top_p is not None:
        processors.append(TopPLogitsWarper(top_p))
    if min_p is not None:
        processors.append(MinPLogitsWarper(min_p))
    return torch.softmax(processors(previous, logits.clone()), dim=-1)


@pytest.mark.parametrize(
    "temperature,k,top_p,min_p,penalty",
    [
        (0.7, 50, 0.9, None, None),
        (1.0, 0, None, 0.05, None),
        (0.8, 40, 0.8, 0.1, None),
        (1.2, 100, None, None, 1.3),
        (0.6, 30, 0.95, 0.02, 0.8),
    ],
)
def test_filters_match_transformers_processors(temperature, k, top_p, min_p, penalty):
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(7)) * 3  # (B, V)
    previous = torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(8))  # (B, T)
    ours = probabilities_from_logits(
        logits, temperature, k, top_p=top_p, min_p=min_p, repetition_penalty=penalty, previous_ids=previous
    )
    theirs = _transformers_probs(logits, previous, temperature, k if k else VOCAB, top_p, min_p, penalty)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


class FixedTokenizer:
    """Decodes ids as a bracketed list: enough to check get_top_token's plumbing."""

    def decode(self, ids):
        return "|".join(f"t{i}" for i in ids)


def test_get_top_token_samples_and_decodes():
    probs = torch.zeros(VOCAB)
    probs[42] = 1.0
    assert get_top_token(probs, FixedTokenizer()) == "t42"
    probs[43] = 1.0
    two = get_top_token(probs / 2, FixedTokenizer(), top_n=2, generator=torch.Generator().manual_seed(0))
    assert sorted(two.split("|")) == ["t42", "t43"]


def test_chi_square_of_single_draws_as_the_engine_makes_them():
    # The engine draws one token per step from a 1-D distribution (the compact-support path).
    logits = torch.randn(VOCAB, generator=torch.Generator().manual_seed(11)) * 2
    probs = probabilities_from_logits(logits, 0.8, 25)
    generator = torch.Generator().manual_seed(99)
    n = 20_000
    samples = torch.cat([sample_token_ids(probs, 1, generator) for _ in range(n)])
    kept = torch.nonzero(probs).flatten()
    counts = torch.bincount(samples, minlength=VOCAB)
    assert int(counts.sum() - counts[kept].sum()) == 0, "sampled outside the top-k"
    expected = probs[kept].double() / probs[kept].double().sum() * n
    assert chisquare(counts[kept].double().numpy(), expected.numpy()).pvalue > 1e-3


@pytest.mark.parametrize(("temperature", "k", "top_p"), [(0.7, 50, None), (1.0, 10, None), (1.3, 400, 0.9),
                                                         (0.7, 3, None), (0.0, 50, None), (0.8, 0, 0.05)])
def test_candidates_ranked_among_the_kept_tokens_are_the_same(temperature, k, top_p):
    """The engine passes the kept ids it sampled over to `describe_choice`; the candidates must be
    the ones a top-k over the whole vocabulary gives (fewer kept tokens than candidates included)."""
    model = TinyHead()
    for trial in range(8):
        vec = torch.randn(D_MODEL, generator=torch.Generator().manual_seed(100 + trial))
        probs, logits = lm_head(model, vec, temperature, k, return_logits=True, top_p=top_p)
        support = kept_ids(probs)
        assert torch.equal(support, torch.nonzero(probs).squeeze(-1))
        token = sample_token_ids(probs, 1, torch.Generator().manual_seed(trial), support)[0]
        assert token == sample_token_ids(probs, 1, torch.Generator().manual_seed(trial))[0]
        assert describe_choice(token, probs, logits, 10, support) == describe_choice(token, probs, logits, 10)


@pytest.mark.parametrize("settings", [
    SamplingSettings(temperature=0.7, top_k=50),
    SamplingSettings(temperature=1.3, top_k=0, top_p=0.9, min_p=0.05, repetition_penalty=1.3),
    SamplingSettings(temperature=0, top_k=5),
])
def test_choose_token_is_the_seed_pipeline_step_by_step(settings):
    """`choose_token` (what the engine calls) is `lm_head`, the kept ids, one seeded draw and
    `describe_choice`, nothing else: the same choice and numbers for the same seed."""
    model = TinyHead()
    previous = torch.tensor([3, 17, 17, 250])
    for trial in range(6):
        vec = torch.randn(D_MODEL, generator=torch.Generator().manual_seed(200 + trial))
        devices = []

        def generator(device):
            devices.append(device)
            return torch.Generator(device=device).manual_seed(trial)

        choice = choose_token(model, vec, settings, generator, 8, previous)
        probs, logits = lm_head(model, vec, settings.temperature, settings.top_k, return_logits=True,
                                top_p=settings.top_p, min_p=settings.min_p,
                                repetition_penalty=settings.repetition_penalty, previous_ids=previous)
        token = sample_token_ids(probs, 1, torch.Generator().manual_seed(trial))[0]
        assert choice == describe_choice(token, probs, logits, 8)
        assert devices == [probs.device]
