"""Per-item results of one scoring of one task, the standard errors they give its scores, and the split of
a task's items over ranks.

An evaluator scores items (`Evaluator.score_items`) into `Items`: one numpy array per field, one entry per
item, in the order of the indices it was given. Every task reports

    nll_sum     summed NLL (nats) of the item's reference answer under teacher forcing
    nll_tokens  the number of target tokens of that answer
    correct     the item's primary score in [0, 1] (0/1 for exact match and letters; HumanEval: the unbiased
                pass@1 of its samples), absent when the task was scored without generation (`generate: false`)

and task-specific fields besides (e.g. `nll_norm` for MMLU, `flexible` for GSM8K). Scores are means over
items, so the items are the independent units of the standard errors: `mean_se` for accuracy (the binomial
sqrt(p(1-p)/n) for 0/1 items) and `ratio_se` for the token-weighted NLL sum(nll_sum) / sum(nll_tokens).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Items = dict[str, np.ndarray]

REQUIRED = ("nll_sum", "nll_tokens")


def _finite_1d(values, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=float).reshape(-1)
    if x.size < 1:
        raise ValueError(f"{name} needs at least one value")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds a non-finite value: {x.tolist()}")
    return x


def mean_se(values: Sequence[float]) -> float:
    """Standard error of a mean over independent items, sqrt(var / n) with the plug-in variance: for 0/1
    items exactly the binomial sqrt(p (1 - p) / n)."""
    x = _finite_1d(values, "mean_se")
    return float(math.sqrt(x.var() / x.size))


def binomial_se(accuracy: float, n: int) -> float:
    """Standard error of an accuracy over n independent items: sqrt(p (1 - p) / n)."""
    if n < 1 or not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"binomial_se needs n >= 1 and 0 <= accuracy <= 1, got n={n}, accuracy={accuracy}")
    return math.sqrt(accuracy * (1.0 - accuracy) / n)


def ratio_se(sums: Sequence[float], counts: Sequence[float]) -> float:
    """Standard error of a token-weighted mean NLL = sum(s_i) / sum(c_i) over items i (per-item summed NLL
    s_i over c_i tokens): the delta-method (ratio-estimator) SE, items being the independent units,
    sqrt(n / (n - 1) * sum((s_i - R c_i)^2)) / sum(c_i). Zero for a single item (no spread to estimate)."""
    s, c = _finite_1d(sums, "sums"), _finite_1d(counts, "counts")
    if s.shape != c.shape or np.any(c <= 0):
        raise ValueError("ratio_se needs one positive token count per item")
    n = s.size
    if n == 1:
        return 0.0
    ratio = s.sum() / c.sum()
    return float(math.sqrt(n / (n - 1) * np.sum((s - ratio * c) ** 2)) / c.sum())


def token_weighted_nll(items: Items) -> float:
    return float(items["nll_sum"].sum() / items["nll_tokens"].sum())


def standard_errors(items: Items) -> dict[str, float]:
    """{"nll_se": ..., "accuracy_se": ... (when the items carry `correct`)} of one scoring."""
    out = {"nll_se": ratio_se(items["nll_sum"], items["nll_tokens"])}
    if "correct" in items:
        out["accuracy_se"] = mean_se(items["correct"])
    return out


def check_items(items: Items, n: int, where: str) -> Items:
    """`items` as float/int arrays of length n each, with the required fields; ValueError naming `where`."""
    missing = [k for k in REQUIRED if k not in items]
    if missing:
        raise ValueError(f"{where}: item results lack {', '.join(missing)}")
    out = {}
    for key, value in items.items():
        arr = np.asarray(value)
        if arr.shape != (n,):
            raise ValueError(f"{where}: item field {key!r} has shape {arr.shape}, expected ({n},)")
        out[key] = arr
    return out


def shard_indices(costs: Sequence[float], world_size: int) -> list[list[int]]:
    """Split items 0..n-1 over `world_size` ranks with balanced total cost (longest first, each to the
    least-loaded rank; ties to the lower rank), each rank's indices ascending. Deterministic, so every rank
    computes the same split without talking to the others."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    loads = [0.0] * world_size
    shards: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(costs)), key=lambda i: (-float(costs[i]), i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        shards[rank].append(i)
        loads[rank] += float(costs[i])
    return [sorted(s) for s in shards]


def merge_shards(parts: Sequence[tuple[Sequence[int], Items]], n: int) -> Items:
    """Every rank's (indices, items) back into item order; each index must appear exactly once."""
    seen = np.zeros(n, dtype=int)
    keys = None
    out: Items = {}
    for indices, items in parts:
        if not len(indices):
            continue
        if keys is None:
            keys = set(items)
            out = {k: np.empty(n, dtype=np.asarray(v).dtype) for k, v in items.items()}
        elif set(items) != keys:
            raise ValueError(f"ranks report different item fields: {sorted(keys)} vs {sorted(items)}")
        idx = np.asarray(indices, dtype=int)
        seen[idx] += 1
        for k, v in items.items():
            out[k][idx] = np.asarray(v)
    if n and not np.all(seen == 1):
        raise ValueError(f"item shards do not cover items 0..{n - 1} exactly once")
    return out
