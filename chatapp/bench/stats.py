"""How precisely a bench median is known: a confidence interval that assumes no distribution."""

from __future__ import annotations

import math


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A `confidence` interval for the median of the population `values` were drawn from.

    Distribution-free (from order statistics): the sorted values from rank `k` to rank `n + 1 - k`,
    with the largest `k` for which the chance that `k` or fewer of `n` independent draws fall
    below the median, `P(Binomial(n, 1/2) <= k - 1)`, is at most `(1 - confidence) / 2`. With
    fewer than 6 values no such `k` exists for 95%; the interval is then the whole range.
    """
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    n = len(ordered)
    tail = (1 - confidence) / 2
    k, below = 0, 0.0  # below: P(Binomial(n, 1/2) <= k)
    while k < n // 2:
        below += math.comb(n, k) / 2**n
        if below > tail:
            break
        k += 1
    k = max(k, 1)
    return ordered[k - 1], ordered[n - k]
