"""The statistics helpers: bounds must hold their stated false-failure probability."""

from __future__ import annotations

import pytest
from scipy import stats as scipy_stats

from harness.core.stats import (
    ALPHA,
    binomial_acceptance,
    clopper_pearson,
    evenness,
    samples_to_see_all,
    samples_to_see_two,
    share_interval,
)


@pytest.mark.parametrize(("n", "p"), [(100, 0.25), (400, 0.4375), (1000, 0.4), (50, 0.02), (30, 1.0)])
def test_acceptance_interval_has_at_most_alpha_outside(n: int, p: float) -> None:
    lo, hi = binomial_acceptance(n, p)
    dist = scipy_stats.binom(n, p)
    outside = dist.cdf(lo - 1) + dist.sf(hi)
    assert outside <= ALPHA
    # and it is tight: widening was needed, narrowing by one on either side would exceed alpha/2 there
    assert lo == 0 or dist.cdf(lo) > ALPHA / 2
    assert hi == n or dist.sf(hi - 1) > ALPHA / 2


def test_share_interval_contains_the_true_share() -> None:
    assert 0.25 in share_interval(400, 0.25)
    assert 0.4375 not in share_interval(400, 0.25)


def test_clopper_pearson_brackets_the_estimate() -> None:
    interval = clopper_pearson(170, 400)
    assert interval.low < 170 / 400 < interval.high
    assert clopper_pearson(0, 10).low == 0.0
    assert clopper_pearson(10, 10).high == 1.0


def test_samples_to_see_all_meets_its_bound() -> None:
    for k in (2, 3, 5):
        n = samples_to_see_all(k)
        assert k * (1 - 1 / k) ** n <= ALPHA
        assert k * (1 - 1 / k) ** (n - 1) > ALPHA


def test_samples_to_see_two_meets_its_bound() -> None:
    for max_share in (0.5, 0.42, 1 / 3):
        n = samples_to_see_two(max_share)
        assert max_share ** (n - 1) <= ALPHA
        assert max_share ** (n - 2) > ALPHA
    # an uneven 3-pod split with the largest share at the bound
    shares = (0.5, 0.3, 0.2)
    assert sum(p ** samples_to_see_two(0.5) for p in shares) <= ALPHA
    with pytest.raises(ValueError, match="one pod"):
        samples_to_see_two(1.0)


def test_evenness_detects_a_skew_and_accepts_an_even_split() -> None:
    assert evenness([334, 333, 333]).is_even()
    skewed = evenness([500, 300, 200])
    assert not skewed.is_even()
    assert skewed.max_over_min == 2.5
