"""The unbiased pass@k estimator of Chen et al. 2021 (Codex paper, eq. 1).

With n samples of which c pass, pass@k = 1 - C(n-c, k) / C(n, k): the probability that k samples drawn
without replacement from the n contain at least one passing one. The binomials overflow floats for
n in the hundreds, so the ratio is computed as the product prod_{i=n-c+1}^{n} (1 - k/i), which stays in
[0, 1] at every step.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import ConfigError


def _check_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"pass@k: {name} must be an integer, got {value!r}")
    return value


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with `n` samples, `c` of them correct (needs 0 <= c <= n, 1 <= k <= n)."""
    n, c, k = _check_int("n", n), _check_int("c", c), _check_int("k", k)
    if n < 1 or not 0 <= c <= n:
        raise ConfigError(f"pass@k: need n >= 1 and 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ConfigError(f"pass@k: k must be in [1, n={n}] (draw at least k samples per problem), got k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    prob_all_fail = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_fail *= 1.0 - k / i
    return 1.0 - prob_all_fail


def mean_pass_at_k(ns: int | Sequence[int], cs: Sequence[int], k: int) -> float:
    """Mean pass@k over problems; `ns` is one sample count for all problems or one per problem."""
    cs = list(cs)
    if not cs:
        raise ConfigError("pass@k: no problems to average over")
    ns = [ns] * len(cs) if isinstance(ns, int) and not isinstance(ns, bool) else list(ns)
    if len(ns) != len(cs):
        raise ConfigError(f"pass@k: {len(ns)} sample counts for {len(cs)} correct counts")
    return sum(pass_at_k(n, c, k) for n, c in zip(ns, cs)) / len(cs)
