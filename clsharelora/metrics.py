"""Continual-learning metrics on a score matrix R: pure functions, one definition shared by training
(which stores them in results.json) and analysis (which recomputes them from the stored matrices).

Conventions (docs/results-format.md). R has T columns, one per task in stream order, and k+1 rows:
row 0 = the model before any training, row i = after experience i (task i is trained in experience i).
The formulas below use 1-based task/experience indices as in the papers; in numpy, task i is column i-1.

    ACC        = 1/T     sum_{j=1..T}   R[T][j]
    BWT        = 1/(T-1) sum_{i=1..T-1} R[T][i] - R[i][i]                       (Lopez-Paz & Ranzato 2017)
    FWT        = 1/(T-1) sum_{i=2..T}   R[i-1][i] - R[0][i]                     (Lopez-Paz & Ranzato 2017)
    forgetting = 1/(T-1) sum_{j=1..T-1} max_{l=1..T-1} R[l][j] - R[T][j]        (Chaudhry et al. 2018)
    plasticity = 1/T     sum_{i=1..T}   R[i][i] - R[i-1][i]                     (learning when trained)
    avg_acc[k] = 1/k     sum_{j=1..k}   R[k][j]                                 for k = 1..T

Lower-is-better scores (NLL): ACC/BWT/FWT/avg_acc use the same formulas (so a positive NLL BWT means
forgetting, a negative NLL FWT means positive transfer). Forgetting's *formula* depends on the
direction (it takes the best earlier score): with ``higher_is_better=False`` it is
``R[T][j] - min_l R[l][j]``, i.e. the formula applied to -R, so that positive forgetting always means
the task got worse than its best. The literal max-formula on NLL would measure improvement instead.
Plasticity (how much task i was learned by its own experience: its score right after experience i minus
right before it; row i-1 is the row before experience i, row 0 the untrained model) is signed the same
way: with ``higher_is_better=False`` it is ``R[i-1][i] - R[i][i]``, so positive plasticity always means the
task was learned (NLL went down). It sits beside forgetting because an adapter with fewer trainable
parameters may "forget less" by "learning less" (Biderman et al. 2024): low forgetting means little next
to low plasticity.

Partial matrices (k < T experiences done, k+1 rows): every metric is computed "so far", defined as the
value the metric would have if the stream had stopped after experience k, i.e. over the first k tasks
(the tasks seen so far) with T replaced by k. Unseen tasks' columns are ignored. With k = 0 (only the
row before training) nothing is defined and every metric is NaN.

Undefined values are NaN, never 0: BWT, FWT and forgetting need two tasks (T = 1 or k = 1 -> NaN);
plasticity needs one trained task (k = 0 -> NaN).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "validate_matrix",
    "experiences_done",
    "acc",
    "bwt",
    "fwt",
    "forgetting",
    "forgetting_per_task",
    "plasticity",
    "plasticity_per_task",
    "average_accuracy",
    "summarize",
]


def validate_matrix(R: Any) -> np.ndarray:
    """R as a float (k+1) x T array, after checking it is 2-D, 1 <= k+1 <= T+1 rows, and all finite.

    Accepts anything numpy converts (nested lists, arrays, a DataFrame such as R_accuracy.csv read with
    index_col="after"). Raises ValueError saying what is wrong.
    """
    try:
        arr = np.asarray(R, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"score matrix R must be numeric (rows of numbers): {exc}") from None
    if arr.ndim != 2:
        raise ValueError(f"score matrix R must be 2-D (rows = after experience, columns = tasks), got shape {arr.shape}")
    rows, T = arr.shape
    if T < 1:
        raise ValueError(f"score matrix R must have at least one task column, got shape {arr.shape}")
    if rows < 1 or rows > T + 1:
        raise ValueError(
            f"score matrix R with T={T} task columns must have between 1 and T+1={T + 1} rows "
            f"(row 0 = before training, row i = after experience i), got {rows}"
        )
    bad = np.argwhere(~np.isfinite(arr))
    if bad.size:
        i, j = bad[0]
        raise ValueError(f"score matrix R has a non-finite value {arr[i, j]!r} at row {i}, column {j}")
    return arr


def experiences_done(R: Any) -> int:
    """k, the number of experiences the matrix covers (rows - 1); the matrix is complete iff k == T."""
    return validate_matrix(R).shape[0] - 1


def _seen(R: Any) -> tuple[np.ndarray, int]:
    """The validated matrix restricted to the tasks seen so far: (k+1) x k, and k."""
    arr = validate_matrix(R)
    k = arr.shape[0] - 1
    return arr[:, :k], k


def acc(R: Any) -> float:
    """ACC: mean final score over the tasks seen so far (all T tasks for a complete matrix)."""
    S, k = _seen(R)
    if k == 0:
        return math.nan
    return float(S[k].mean())


def bwt(R: Any) -> float:
    """BWT (Lopez-Paz & Ranzato 2017): mean change of each earlier task from just after it was trained
    to the end; negative = forgetting for accuracy, positive = forgetting for NLL. NaN below 2 tasks."""
    S, k = _seen(R)
    if k < 2:
        return math.nan
    i = np.arange(k - 1)  # 0-based columns of tasks 1..k-1
    return float(np.mean(S[k, i] - S[i + 1, i]))


def fwt(R: Any) -> float:
    """FWT (Lopez-Paz & Ranzato 2017): mean score on task i just before training it, relative to the
    untrained model, over tasks 2..T. NaN below 2 tasks."""
    S, k = _seen(R)
    if k < 2:
        return math.nan
    i = np.arange(1, k)  # 0-based columns of tasks 2..k; task (col c) is trained in row c+1
    return float(np.mean(S[i, i] - S[0, i]))


def forgetting_per_task(R: Any, *, higher_is_better: bool = True) -> np.ndarray:
    """Chaudhry et al. (2018) forgetting of each task: best score over rows 1..k-1 minus the current
    (row k) score, sign-flipped for lower-is-better scores so positive always means worse.

    Returns an array of length T aligned with the task columns; entries with no defined forgetting
    (the last trained task k, and tasks not trained yet) are NaN.
    """
    arr = validate_matrix(R)
    T = arr.shape[1]
    S, k = _seen(arr)
    out = np.full(T, np.nan)
    if k < 2:
        return out
    earlier = S[1:k, : k - 1]  # rows 1..k-1, tasks 1..k-1
    if higher_is_better:
        out[: k - 1] = earlier.max(axis=0) - S[k, : k - 1]
    else:
        out[: k - 1] = S[k, : k - 1] - earlier.min(axis=0)
    return out


def forgetting(R: Any, *, higher_is_better: bool = True) -> float:
    """Average forgetting (Chaudhry et al. 2018) over tasks 1..T-1; NaN below 2 tasks."""
    per_task = forgetting_per_task(R, higher_is_better=higher_is_better)
    defined = per_task[~np.isnan(per_task)]
    return float(defined.mean()) if defined.size else math.nan


def plasticity_per_task(R: Any, *, higher_is_better: bool = True) -> np.ndarray:
    """How much each task was learned when trained: R[i][i] - R[i-1][i] (row i-1 = just before
    experience i), sign-flipped for lower-is-better scores so positive always means learned.

    Returns an array of length T aligned with the task columns; tasks not trained yet are NaN.
    """
    arr = validate_matrix(R)
    T = arr.shape[1]
    S, k = _seen(arr)
    out = np.full(T, np.nan)
    c = np.arange(k)  # 0-based column of task c+1, trained in experience (row) c+1
    gain = S[c + 1, c] - S[c, c]
    out[:k] = gain if higher_is_better else -gain
    return out


def plasticity(R: Any, *, higher_is_better: bool = True) -> float:
    """Mean plasticity over the tasks trained so far (positive = learned); NaN before any training."""
    per_task = plasticity_per_task(R, higher_is_better=higher_is_better)
    defined = per_task[~np.isnan(per_task)]
    return float(defined.mean()) if defined.size else math.nan


def average_accuracy(R: Any) -> np.ndarray:
    """Average score after each experience k = 1..(done): mean of R[k][1..k], the tasks seen so far.
    Length = experiences done (empty for a matrix with only the row before training)."""
    S, k = _seen(R)
    return np.array([S[r, :r].mean() for r in range(1, k + 1)], dtype=float)


def summarize(R: Any, *, higher_is_better: bool = True) -> dict[str, Any]:
    """The ``metrics.<score>`` dict of results.json: {"acc", "bwt", "fwt", "forgetting", "plasticity",
    "avg_acc"}.

    A partial matrix (k < T experiences) is NOT an error: its metrics are the "so far" values over the
    first k tasks, as if the stream had ended after experience k (see the module docstring). Undefined
    values are float NaN (T or k = 1: bwt/fwt/forgetting; k = 0: all, with avg_acc = []).
    Pass ``higher_is_better=False`` for NLL (forgetting and plasticity depend on it: positive forgetting =
    worse, positive plasticity = learned, for both scores).
    """
    arr = validate_matrix(R)
    return {
        "acc": acc(arr),
        "bwt": bwt(arr),
        "fwt": fwt(arr),
        "forgetting": forgetting(arr, higher_is_better=higher_is_better),
        "plasticity": plasticity(arr, higher_is_better=higher_is_better),
        "avg_acc": [float(v) for v in average_accuracy(arr)],
    }
