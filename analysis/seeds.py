"""Several seeds: mean ± std and a 95% Student-t interval per metric, and paired differences
(e.g. ShareLoRA − LoRA) matched by seed.

The t quantile is computed here (scipy is not a dependency): the Student-t CDF through the regularized
incomplete beta function (continued fraction, Numerical Recipes §6.4), inverted by bisection.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .runs import Run, by_strategy, strategy_label

#: metrics with one number per run (avg_acc is a curve, shown in the figures instead)
METRICS = ("acc", "bwt", "fwt", "forgetting", "plasticity")
CONFIDENCE = 0.95


# ---------------------------------------------------------------------------------------------------
# Student t


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"betainc needs a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` > 0 degrees of freedom (df = inf: standard normal)."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(df):
        return statistics.NormalDist().cdf(t)
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom, e.g. t_quantile(0.975, 4) = 2.776."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile probability must be in (0, 1), got {p}")
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(df):
        return statistics.NormalDist().inv_cdf(p)
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
        if hi > 1e300:
            raise ArithmeticError(f"t quantile out of range (p={p}, df={df})")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------------------------------------------
# Per-metric statistics


@dataclass(frozen=True)
class SeedStats:
    """Mean, sample std (ddof=1) and a two-sided t interval over n seeds; NaN where n is too small."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


def describe(values: Sequence[float], confidence: float = CONFIDENCE) -> SeedStats:
    """mean ± std and the `confidence` t-interval mean ± t_{(1+c)/2, n-1} · std/√n of finite `values`.
    NaN values (metric undefined for that run) are rejected: an interval over fewer seeds than shown
    would mislead."""
    x = np.asarray(list(values), dtype=float)
    if np.isnan(x).any():
        raise ValueError("describe() got NaN values: drop undefined metrics before averaging")
    n = int(x.size)
    if n == 0:
        return SeedStats(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return SeedStats(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return SeedStats(n, mean, std, mean - half, mean + half)


def _common_done(runs: Iterable[Run]) -> int:
    return min(r.done for r in runs)


def seed_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per (strategy, score, metric) of one setting: n seeds, mean, std, 95% CI.

    Runs of a strategy are compared over their common completed prefix (the fewest experiences any of
    its seeds finished), flagged in `status`; undefined metrics (e.g. BWT with one task) give NaN rows.
    """
    rows = []
    for label, group in by_strategy(runs).items():
        k = _common_done(group)
        T = group[0].T
        status = "complete" if k == T else f"incomplete ({k}/{T} experiences)"
        for score in group[0].scores:
            per_run = [r.metrics(score, upto=k) for r in group]
            for m in METRICS:
                vals = [pr[m] for pr in per_run]
                st = describe([] if any(math.isnan(v) for v in vals) else vals)
                rows.append(
                    {
                        "strategy": label,
                        "score": score,
                        "metric": m,
                        "status": status,
                        "seeds": ",".join(str(r.seed) for r in group),
                        "n": len(vals),
                        "mean": st.mean,
                        "std": st.std,
                        "ci95_low": st.ci_low,
                        "ci95_high": st.ci_high,
                    }
                )
    return pd.DataFrame(rows, columns=_SEED_COLUMNS)


_SEED_COLUMNS = ["strategy", "score", "metric", "status", "seeds", "n", "mean", "std", "ci95_low", "ci95_high"]


def _baseline_label(groups: dict[str, list[Run]], cl: str, baseline_adapter: str) -> str | None:
    """The baseline strategy with the same CL method: the only one of that adapter, else its plain label."""
    cands = [lab for lab, g in groups.items() if g[0].adapter == baseline_adapter and g[0].cl == cl]
    if len(cands) == 1:
        return cands[0]
    plain = strategy_label(baseline_adapter, None, cl)
    return plain if plain in cands else None


def paired_differences(runs: Sequence[Run], baseline_adapter: str = "lora") -> pd.DataFrame:
    """Per seed: metric(strategy) − metric(baseline) for every strategy whose adapter is not the
    baseline's (e.g. sharelora/share_a − lora), the baseline having the same CL method; seeds present in
    only one of the two are left out. Both sides are cut to the pair's common completed prefix."""
    groups = by_strategy(runs)
    rows = []
    for label, group in groups.items():
        if group[0].adapter == baseline_adapter:
            continue
        base = _baseline_label(groups, group[0].cl, baseline_adapter)
        if base is None:
            continue
        mine = {r.seed: r for r in group}
        theirs = {r.seed: r for r in groups[base]}
        seeds = sorted(set(mine) & set(theirs))
        if not seeds:
            continue
        k = _common_done([mine[s] for s in seeds] + [theirs[s] for s in seeds])
        T = group[0].T
        status = "complete" if k == T else f"incomplete ({k}/{T} experiences)"
        for score in group[0].scores:
            if score not in groups[base][0].matrices:
                continue
            for s in seeds:
                a, b = mine[s].metrics(score, upto=k), theirs[s].metrics(score, upto=k)
                for m in METRICS:
                    rows.append(
                        {
                            "strategy": label,
                            "baseline": base,
                            "score": score,
                            "metric": m,
                            "status": status,
                            "seed": s,
                            "strategy_value": a[m],
                            "baseline_value": b[m],
                            "difference": a[m] - b[m],
                        }
                    )
    return pd.DataFrame(
        rows,
        columns=["strategy", "baseline", "score", "metric", "status", "seed", "strategy_value", "baseline_value", "difference"],
    )


def summarize_differences(diffs: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std and 95% t-interval of the per-seed differences, per (strategy, baseline, score, metric).
    An interval excluding 0 means the difference is consistent across seeds (paired t-test at 5%)."""
    rows = []
    keys = ["strategy", "baseline", "score", "metric", "status"]
    for key, g in diffs.groupby(keys, sort=False):
        vals = g["difference"].to_numpy(dtype=float)
        st = describe([] if np.isnan(vals).any() else vals)
        rows.append(
            {
                **dict(zip(keys, key)),
                "seeds": ",".join(str(s) for s in g["seed"]),
                "n": len(vals),
                "mean": st.mean,
                "std": st.std,
                "ci95_low": st.ci_low,
                "ci95_high": st.ci_high,
            }
        )
    return pd.DataFrame(rows, columns=keys + ["seeds", "n", "mean", "std", "ci95_low", "ci95_high"])
