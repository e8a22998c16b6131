"""The LM head's top-k step: `top_k_reference` keeps the k highest scores with ties broken by
the lower id, the block kernel's `top_k` gives exactly its numbers, and the distribution over
the kept logits is the softmax of the whole row with the others at -inf; the kernel's
`kept_ids` is `torch.nonzero`'s answer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from chatapp.lm_head import kept_ids, probabilities_from_logits, top_k, top_k_reference, use_kernels
from chatapp.runtime import block_kernel
from tests.conftest import block_kernel_build


def _by_definition(scores: torch.Tensor, k: int) -> tuple[list[float], list[int]]:
    ranked = sorted(range(scores.numel()), key=lambda i: (-float(scores[i]), i))[:k]
    return [float(scores[i]) for i in ranked], ranked


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 3, 50, 199, 200])
def test_reference_keeps_the_k_highest_ties_by_lower_id(seed, k):
    scores = (torch.randn(200, generator=torch.Generator().manual_seed(seed)) * 2).round()  # many ties
    values, ids = top_k_reference(scores, k)
    assert (values.tolist(), ids.tolist()) == _by_definition(scores, k)


def test_reference_rows_each_their_own():
    scores = (torch.randn(3, 300, generator=torch.Generator().manual_seed(9)) * 2).round()
    values, ids = top_k_reference(scores, 40)
    for row in range(3):
        assert (values[row].tolist(), ids[row].tolist()) == _by_definition(scores[row], 40)


@pytest.mark.skipif(block_kernel.ops() is None, reason="no C++ compiler for the block kernel")
@pytest.mark.parametrize("seed", range(4))
def test_kernel_equals_the_reference(seed):
    kernel = block_kernel.ops().top_k
    generator = torch.Generator().manual_seed(seed)
    for scores in (torch.randn(262_144, generator=generator) * 4,  # a Gemma-sized vocabulary
                   (torch.randn(5_003, generator=generator) * 2).round(),  # ties at the cut
                   torch.zeros(40)):  # all tied
        for k in (1, 17, 40, scores.numel()):
            got, expected = kernel(scores, k), top_k_reference(scores, k)
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), k


@pytest.mark.skipif(block_kernel.ops() is None, reason="no C++ compiler for the block kernel")
def test_the_head_uses_the_kernel_named_and_gets_the_same_distribution():
    logits = (torch.randn(1, 5_000, generator=torch.Generator().manual_seed(2)) * 3).round(decimals=1)
    use_kernels()
    reference = probabilities_from_logits(logits, 0.7, 50)
    calls = []

    def counting(scores, k):
        calls.append(k)
        return block_kernel.ops().top_k(scores, k)

    use_kernels(top_k=counting)
    try:
        assert torch.equal(probabilities_from_logits(logits, 0.7, 50), reference) and calls == [50]
        assert torch.equal(top_k(logits[0], 5)[1], top_k_reference(logits[0], 5)[1])
    finally:
        use_kernels()


@pytest.mark.parametrize("filters", [{}, {"top_p": 0.9}, {"min_p": 0.05}])
def test_kept_logits_softmax_equals_the_masked_row_softmax(filters):
    """What the seed computes: the whole row with all but the top k at -inf, through softmax."""
    logits = torch.randn(2, 4_000, generator=torch.Generator().manual_seed(5)) * 3
    probs = probabilities_from_logits(logits, 0.8, 40, **filters)
    scaled = logits / 0.8
    values, ids = top_k_reference(scaled, 40)
    masked = torch.full_like(scaled, -float("inf")).scatter(-1, ids, values)
    if not filters:
        torch.testing.assert_close(probs, F.softmax(masked, -1), rtol=0, atol=1e-7)
    assert bool(((probs > 0).sum(-1) <= 40).all())
    assert bool((probs[masked == -float("inf")] == 0).all())


@pytest.mark.skipif(block_kernel.ops() is None, reason="no C++ compiler for the block kernel")
def test_kept_ids_kernel_equals_nonzero():
    kernel = block_kernel.ops().kept_ids
    generator = torch.Generator().manual_seed(3)
    for probabilities in (torch.zeros(262_144).index_fill_(0, torch.randperm(262_144, generator=generator)[:50], 0.02),
                          torch.rand(1_000, generator=generator), torch.zeros(33), torch.tensor([0.0, -0.0, 1e-45])):
        assert torch.equal(kernel(probabilities), torch.nonzero(probabilities).squeeze(-1))
    use_kernels(kept_ids=kernel)
    try:
        assert kept_ids(torch.tensor([0.0, 0.5, 0.0, 0.5])).tolist() == [1, 3]
    finally:
        use_kernels()


@pytest.mark.parametrize("build", block_kernel.runnable_builds())
def test_every_build_s_scans_equal_the_reference(build):
    """The vector compares of the two scans (AVX512, AVX2) and the plain loop (generic) give
    the same answers, lengths not a multiple of 16 included."""
    ops = block_kernel_build(build)
    generator = torch.Generator().manual_seed(11)
    for scores in (torch.randn(262_144, generator=generator) * 4, (torch.randn(1_037, generator=generator) * 2).round()):
        for k in (1, 50, 333):
            got, expected = ops.top_k(scores, k), top_k_reference(scores, k)
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), (build, k)
    for size in (262_144, 1_037, 15):
        probabilities = torch.zeros(size).index_fill_(0, torch.randperm(size, generator=generator)[:9], 0.1)
        assert torch.equal(ops.kept_ids(probabilities), torch.nonzero(probabilities).squeeze(-1)), (build, size)
    # odd values in the vector compares: -0.0 is no probability, a denormal and +inf are
    odd = torch.zeros(48)
    odd[[3, 17, 40]] = torch.tensor([-0.0, 1e-45, float("inf")])
    assert ops.kept_ids(odd).tolist() == [17, 40]
    scores = torch.full((48,), -1.0)
    scores[[5, 20, 33]] = torch.tensor([float("inf"), -0.0, 1e-45])
    assert ops.top_k(scores, 3)[1].tolist() == top_k_reference(scores, 3)[1].tolist() == [5, 33, 20]


def _raw_by_definition(logits: torch.Tensor, token: int) -> tuple[float, float, int]:
    x = logits.double()
    log_z = torch.logsumexp(x, -1)
    p = torch.exp(x - log_z)
    entropy = -(p * (x - log_z)).nan_to_num().sum()  # a -inf logit's share is 0
    return float(log_z), float(entropy), int((logits > logits[token]).sum())


@pytest.mark.parametrize("build", block_kernel.runnable_builds())
def test_every_build_s_raw_summary_equals_the_float64_definition(build):
    """The raw distribution's log-normaliser and entropy within 1e-6 of float64 arithmetic (torch's
    own float32 log-sum-exp is within about 7e-7 on these rows), the rank exact: long and short
    rows, wide ranges, -inf and very negative logits, ties with the token's logit."""
    ops = block_kernel_build(build)
    generator = torch.Generator().manual_seed(5)
    rows = [torch.randn(262_144, generator=generator) * 4, torch.randn(49_152, generator=generator) * 9 + 30,
            (torch.randn(1_037, generator=generator) * 2).round(), torch.randn(15, generator=generator)]
    spiky = torch.randn(4_096, generator=generator)
    spiky[[7, 99]] = torch.tensor([float("-inf"), -1e30])
    spiky[2_000] = 60.0  # one token holds nearly all the mass
    rows.append(spiky)
    for logits in rows:
        for token in (0, int(logits.argmax()), logits.numel() - 1):
            log_z, entropy, above = ops.raw_summary(logits, token).tolist()
            expected = _raw_by_definition(logits, token)
            assert abs(log_z - expected[0]) < 1e-6 and abs(entropy - expected[1]) < 1e-6, (build, logits.numel(), token)
            assert above == expected[2]
    assert ops.raw_summary(rows[0], -1)[2] == 0


def test_the_step_s_numbers_on_the_kernel_equal_torch_s_within_float32_rounding():
    """`describe_choice` with the kernel's raw numbers and with torch's: the same candidates,
    sampled probabilities and rank; raw probabilities within float32 rounding, the entropy nearer
    float64's on the kernel (float64 sums) than in torch (a float32 dot). The
    lens, watched tokens and candidates compute a token's raw probability alike, to the bit."""
    from chatapp.lm_head import describe_choice, raw_numbers, raw_probabilities, raw_probabilities_of

    ops = block_kernel.ops()
    if ops is None:
        pytest.skip("no block kernel here")
    generator = torch.Generator().manual_seed(8)
    logits = torch.randn(262_144, generator=generator) * 3
    probabilities = probabilities_from_logits(logits, 0.7, 40)
    token = torch.multinomial(probabilities, 1, generator=generator)[0]
    choices = []
    for summary in (ops.raw_summary, None):
        use_kernels(raw_summary=summary)
        try:
            choices.append(describe_choice(token, probabilities, logits, 10))
            log_z = raw_numbers(logits)[0]
            ids = torch.tensor(choices[-1].top_ids)
            assert torch.equal(raw_probabilities_of(logits, ids, log_z), raw_probabilities(logits)[ids])
            assert raw_probabilities_of(logits, ids, log_z).tolist() == choices[-1].top_raw_probs
        finally:
            use_kernels()
    on_kernel, on_torch = choices
    assert (on_kernel.token_id, on_kernel.top_ids, on_kernel.prob, on_kernel.top_probs, on_kernel.rank) == (
        on_torch.token_id, on_torch.top_ids, on_torch.prob, on_torch.top_probs, on_torch.rank)
    assert on_kernel.raw_prob == pytest.approx(on_torch.raw_prob, rel=2e-6)
    assert on_kernel.top_raw_probs == pytest.approx(on_torch.top_raw_probs, rel=2e-6)
    exact_bits = _raw_by_definition(logits, int(token))[1] / math.log(2)
    assert abs(on_kernel.entropy - exact_bits) < 1e-6 and abs(on_torch.entropy - exact_bits) < 1e-5  # a float32 dot of 262,144 terms
