"""Statistics for comparing strategies: standard errors of one score, intervals and tests over seeds x
orders, and item-level paired tests between two strategies scored on the same items.

Everything is numpy (scipy is not a dependency). The tests in tests/test_stats.py check each function
against closed forms and against its stated rate on simulated data (coverage, null p-value uniformity,
power at the minimum detectable effect).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from clsharelora.evaluation.items import binomial_se, ratio_se  # noqa: F401 (re-exported)

from .seeds import t_quantile

CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 10_000
EXACT_SIGN_FLIP_MAX_N = 16      # 2^16 sign patterns: exact; above, a seeded Monte Carlo sample


def _as_1d(values: Sequence[float], name: str, minimum: int = 1) -> np.ndarray:
    x = np.asarray(values, dtype=float).reshape(-1)
    if x.size < minimum:
        raise ValueError(f"{name} needs at least {minimum} value(s), got {x.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds a non-finite value: {x.tolist()}")
    return x


# ---------------------------------------------------------------------------------------------- one score

# binomial_se and ratio_se (imported above, re-exported) live with the per-item results they are computed
# from, in clsharelora.evaluation.items: training stores them in results.json, analysis uses the same ones.


# ------------------------------------------------------------------------------- seeds x orders

@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and Student-t interval (n >= 2; with n = 1 the interval is the point itself, flagged by n)."""
    x = _as_1d(values, "t_interval")
    if x.size == 1:
        return Interval(float(x[0]), float(x[0]), float(x[0]), 1)
    half = t_quantile(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return Interval(float(x.mean()), float(x.mean() - half), float(x.mean() + half), x.size)


def bootstrap_interval(values: Sequence[float], *, confidence: float = CONFIDENCE, samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = 0) -> Interval:
    """Mean and percentile-bootstrap interval of the mean (resampling the values with replacement).
    Used for paired differences (the values are per-pair differences), where it needs no normality."""
    x = _as_1d(values, "bootstrap_interval")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(samples, x.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(float(x.mean()), float(low), float(high), x.size)


def sign_flip_pvalue(differences: Sequence[float], *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> float:
    """Two-sided p-value of the paired sign-flip (randomisation) test of mean difference = 0: under the null
    each pair's difference is as likely to have either sign. Exact enumeration of all 2^n sign patterns for
    n <= 16, else a seeded Monte Carlo sample (the observed pattern counted, so p >= 1 / (samples + 1))."""
    d = _as_1d(differences, "sign_flip_pvalue")
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, observed)
    if d.size <= EXACT_SIGN_FLIP_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        stats = np.abs(signs @ d / d.size)
        return float(np.mean(stats >= observed - tol))
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(samples, d.size))
    stats = np.abs(signs @ d / d.size)
    return float((np.sum(stats >= observed - tol) + 1) / (samples + 1))


POWER_SIMULATIONS = 200_000    # Monte Carlo draws behind power and MDE: power's own sd is below 0.001


@functools.lru_cache(maxsize=64)
def _t_test_draws(n_pairs: int, simulations: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded draws of the standardised mean (N(0, 1/n)) and sd (chi with n - 1 df over sqrt(n - 1)) of n
    standard normal differences: their exact laws, so the cost does not grow with n."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(simulations) / math.sqrt(n_pairs),
            np.sqrt(rng.chisquare(n_pairs - 1, simulations) / (n_pairs - 1)))


def t_test_power(effect: float, sd_difference: float, n_pairs: int, *, alpha: float = 0.05,
                 simulations: int = POWER_SIMULATIONS, seed: int = 0) -> float:
    """Probability that the study's decision rule, the two-sided paired t test at level `alpha` (the
    1 - alpha t interval of the mean difference excludes 0: `PairedComparison.resolved`), declares a
    difference when the n paired differences are Normal(effect, sd). Simulated with seeded draws."""
    if n_pairs < 2:
        return 0.0
    if sd_difference < 0:
        raise ValueError(f"sd_difference must be >= 0, got {sd_difference}")
    if sd_difference == 0:
        return 1.0 if effect != 0 else 0.0
    means, sds = _t_test_draws(n_pairs, simulations, seed)
    half = t_quantile(1 - alpha / 2, n_pairs - 1) * sds / math.sqrt(n_pairs)
    return float(np.mean(np.abs(effect / sd_difference + means) > half))


@functools.lru_cache(maxsize=256)
def _mde_in_sd(n_pairs: int, alpha: float, power: float) -> float:
    low, high = 0.0, 2 * (t_quantile(1 - alpha / 2, n_pairs - 1) + 4) / math.sqrt(n_pairs)
    while t_test_power(high, 1.0, n_pairs, alpha=alpha) < power:
        low, high = high, 2 * high
    for _ in range(30):
        mid = (low + high) / 2
        if t_test_power(mid, 1.0, n_pairs, alpha=alpha) < power:
            low = mid
        else:
            high = mid
    return high


def minimum_detectable_effect(sd_difference: float, n_pairs: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean paired difference that the study's decision rule (the two-sided paired t test at
    level `alpha`) detects with probability `power` given n pairs whose differences have standard
    deviation sd: `t_test_power` solved for the effect by bisection on the same seeded draws (the rule is
    scale-free, so it is solved once per n, in units of sd). The textbook (t_{1-alpha/2} + t_{power}) sd /
    sqrt(n) understates it at few pairs (its power is 0.79 at 6 pairs, 0.77 at 3). Infinite below 2 pairs."""
    if n_pairs < 2:
        return math.inf
    if sd_difference < 0:
        raise ValueError(f"sd_difference must be >= 0, got {sd_difference}")
    return _mde_in_sd(n_pairs, alpha, power) * sd_difference


@dataclass(frozen=True)
class PairedComparison:
    mean_difference: float
    t_low: float              # Student-t interval: exact coverage for normal differences at any n
    t_high: float
    boot_low: float           # paired percentile bootstrap (descriptive): under-covers at very few pairs
    boot_high: float
    p_value: float            # sign-flip randomisation test (descriptive): at 6 pairs p < 0.05 iff all signs agree
    mde: float                # minimum detectable effect of `resolved` (80% power) at this many pairs
    n_pairs: int

    @property
    def resolved(self) -> bool:
        """The one pre-declared test: the t interval excludes zero (two-sided paired t test at 5%). Its
        level and power are known at any number of pairs, so the MDE printed beside it is its own. Asking the
        bootstrap and sign-flip to agree as well made a rule whose power at that MDE was 0.62 at 6 pairs
        (docs/studies.md, "Decision rule"); they are reported, not voted."""
        return self.t_low > 0 or self.t_high < 0


def paired_comparison(differences: Sequence[float], *, confidence: float = CONFIDENCE, seed: int = 0) -> PairedComparison:
    """Mean paired difference (strategy - reference over cells with the same seed and order), its t and
    paired bootstrap intervals, sign-flip p-value and the minimum detectable effect at this many pairs."""
    d = _as_1d(differences, "paired_comparison")
    t = t_interval(d, confidence)
    boot = bootstrap_interval(d, confidence=confidence, seed=seed)
    sd = float(d.std(ddof=1)) if d.size > 1 else math.nan
    mde = minimum_detectable_effect(sd, d.size, alpha=1 - confidence) if d.size > 1 else math.inf
    if d.size == 1:
        t = Interval(t.mean, -math.inf, math.inf, 1)
    return PairedComparison(float(d.mean()), t.low, t.high, boot.low, boot.high, sign_flip_pvalue(d, seed=seed),
                            mde, d.size)


# ------------------------------------------------------------------------------- items of one row

def mcnemar_pvalue(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> float:
    """Exact two-sided McNemar test on paired per-item correctness: under the null the discordant pairs
    (a right / b wrong: n01, a wrong / b right: n10) split Binomial(n01 + n10, 1/2); p = min(1, 2 P(X <= min))."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("mcnemar_pvalue needs two equally long 1-d sequences of per-item correctness")
    n01, n10 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = n01 + n10
    if n == 0:
        return 1.0
    k = min(n01, n10)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return float(min(1.0, 2 * tail))


def paired_bootstrap_nll(sums_a: Sequence[float], sums_b: Sequence[float], counts: Sequence[float], *,
                         confidence: float = CONFIDENCE, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> Interval:
    """Difference of token-weighted mean NLL (a - b) on the same items, with a paired bootstrap interval
    (items resampled together, so item difficulty cancels)."""
    sa, sb, c = _as_1d(sums_a, "sums_a"), _as_1d(sums_b, "sums_b"), _as_1d(counts, "counts")
    if not (sa.shape == sb.shape == c.shape):
        raise ValueError("paired_bootstrap_nll needs per-item sums of both strategies over the same items")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, c.size, size=(samples, c.size))
    diffs = (sa[idx].sum(1) - sb[idx].sum(1)) / c[idx].sum(1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return Interval(float((sa.sum() - sb.sum()) / c.sum()), float(low), float(high), int(c.size))


# ------------------------------------------------------------------------------- groups (task orders)

EXACT_GROUP_PERMUTATIONS_MAX_N = 8   # 8! = 40,320 relabellings: exact; above, a seeded Monte Carlo sample


def group_difference_pvalue(values: Sequence[float], groups: Sequence[int], *, samples: int = BOOTSTRAP_SAMPLES,
                            seed: int = 0) -> tuple[float, float]:
    """Permutation test that the groups (e.g. task orders) share one mean: the statistic is the between-group
    sum of squares, its null distribution from every relabelling of the values (exact up to 8 values, else
    a seeded Monte Carlo sample). Used on paired differences grouped by order, it tests order x strategy
    interaction without normality. Returns (p, the smallest p this design can give): with 3 + 3 values
    there are 20 distinct splits, so p can never go below 0.1."""
    x = _as_1d(values, "group_difference_pvalue", minimum=2)
    g = np.asarray(groups)
    if g.shape != x.shape:
        raise ValueError("group_difference_pvalue needs one group per value")
    labels = np.unique(g)
    if labels.size < 2:
        return 1.0, 1.0
    onehot = (g[None, :] == labels[:, None]).astype(float)          # (groups, n)
    sizes = onehot.sum(1)

    def between(perm_values: np.ndarray) -> np.ndarray:               # (P, n) -> (P,)
        means = perm_values @ onehot.T / sizes
        return ((means - perm_values.mean(1, keepdims=True)) ** 2 * sizes).sum(1)

    exact = x.size <= EXACT_GROUP_PERMUTATIONS_MAX_N
    if exact:
        perms = np.array(list(itertools.permutations(range(x.size))))
    else:
        rng = np.random.default_rng(seed)
        perms = np.array([rng.permutation(x.size) for _ in range(samples)])
    null = between(x[perms])
    observed = between(x[None, :])[0]
    tol = 1e-12 * max(1.0, observed)
    hits = int(np.sum(null >= observed - tol))
    p = hits / null.size if exact else (hits + 1) / (null.size + 1)   # Monte Carlo: the observed one counted
    floor = float(np.mean(null >= null.max() - 1e-12 * max(1.0, null.max()))) if null.max() > 0 else 1.0
    return p, floor
