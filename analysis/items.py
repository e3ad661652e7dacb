"""Item-level comparisons of two runs scored on the same items (same stream, seed and order): how much of a
difference between them is evaluation noise.

Every row of a run's R has its per-item results on disk (items/row_<i>.npz, docs/results-format.md), so
any CL metric can be recomputed on a bootstrap resample of the items. Resampling the same items for both
runs (a paired bootstrap) gives an interval for the difference of any metric, e.g. NLL forgetting; at the
final row McNemar's test compares the two runs' per-item correctness. These intervals cover evaluation
noise only (which items were scored), not training noise (seeds, orders): that needs a study.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clsharelora import metrics
from clsharelora.errors import DataError
from clsharelora.training.results import read_items

from . import stats
from .runs import SCORES, Run
from .tables import p_text, signed

BOOTSTRAP_SAMPLES = 2000
METRICS = ("acc", "bwt", "forgetting", "plasticity")


@dataclass(frozen=True)
class RunItems:
    """A run's per-item results: per task (in the run's column order) a (rows x items) array per field."""

    run: Run
    ids: dict[str, np.ndarray]
    fields: dict[str, dict[str, np.ndarray]]

    @classmethod
    def load(cls, run: Run) -> "RunItems | None":
        """The items of every row of `run`, or None when the run stored none (written before items existed)."""
        rows = [read_items(run.path, i) for i in range(run.done + 1)]
        if not rows or any(not set(run.tasks) <= set(r) for r in rows):
            return None
        ids, fields = {}, {}
        for task in run.tasks:
            ids[task] = rows[0][task]["id"]
            if any(not np.array_equal(r[task]["id"], ids[task]) for r in rows):
                raise DataError(f"{run.path}: the items of {task} differ between rows")
            keys = set.intersection(*(set(r[task]) for r in rows)) - {"id"}
            fields[task] = {k: np.stack([np.asarray(r[task][k], dtype=float) for r in rows]) for k in keys}
        return cls(run, ids, fields)

    def matrix(self, score: str, index: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """R for `score` rebuilt from the items, on the items `index[task]` (bootstrap indices: an array
        (B, n) gives B matrices, shape (B, rows, T)); all items when `index` is None."""
        columns = []
        for task in self.run.tasks:
            f = self.fields[task]
            n = f["nll_sum"].shape[1]
            idx = np.arange(n)[None, :] if index is None else index[task]
            if score == "nll":
                col = f["nll_sum"][:, idx].sum(-1) / f["nll_tokens"][:, idx].sum(-1)
            elif "correct" in f:
                col = f["correct"][:, idx].mean(-1)
            else:
                raise DataError(f"{self.run.path}: task {task} has no per-item accuracy (scored without generation)")
            columns.append(col.T)  # (B, rows)
        out = np.stack(columns, axis=-1)  # (B, rows, T)
        return out[0] if index is None else out


def task_options(tasks) -> dict[str, int]:
    """Per scored task name (a column of R): its answer options when it is multiple choice (chance accuracy
    = 1/options, from the evaluator's `max_options`: 4 for MMLU, at most 10 for MMLU-Pro); generation tasks
    and unknown names have none."""
    from clsharelora.errors import ConfigError
    from clsharelora.evaluation.tasks import evaluator_class

    out = {}
    for task in tasks:
        try:
            options = getattr(evaluator_class(task), "max_options", None)
        except ConfigError:
            options = None
        if options:
            out[task] = int(options)
    return out


def chance_sentence(task: str, final_accuracy: dict[str, float], options: dict[str, int]) -> str | None:
    """"At or below chance" for `task` naming the strategies whose final accuracy is <= 1/options, or None."""
    if task not in options:
        return None
    chance = 1 / options[task]
    low = {label: m for label, m in final_accuracy.items() if m <= chance}
    if not low:
        return None
    named = ", ".join(f"{label} {m:.3f}" for label, m in low.items())
    return (f"**At or below chance ({task})**: final accuracy {named}"
            + f" against chance {chance:.3f} (1/{options[task]} options): {task}'s accuracy and its differences "
            "measure guessing, not what was learned or forgotten; read its NLL instead.")


def _paired(a: RunItems, b: RunItems) -> None:
    if a.run.tasks != b.run.tasks or a.run.done != b.run.done:
        raise DataError(f"{a.run.path} and {b.run.path} are not scored on the same tasks and rows")
    for task in a.run.tasks:
        if not np.array_equal(a.ids[task], b.ids[task]):
            raise DataError(f"{a.run.path} and {b.run.path} scored different {task} items (different seeds?)")


def batched_metrics(R: np.ndarray, higher_is_better: bool) -> dict[str, np.ndarray]:
    """`clsharelora.metrics` ACC, BWT, forgetting and plasticity of B matrices at once (R: (B, k+1, T)),
    the same formulas (tests/test_analysis_items.py checks them against metrics.summarize), vectorised
    because a bootstrap needs thousands. Undefined values are NaN."""
    B, rows, _ = R.shape
    k = rows - 1
    S = R[:, :, :k]
    nan = np.full(B, np.nan)
    out = {"acc": S[:, k].mean(-1) if k else nan}
    if k >= 2:
        i = np.arange(k - 1)
        out["bwt"] = (S[:, k, i] - S[:, i + 1, i]).mean(-1)
        earlier = S[:, 1:k, : k - 1]
        final = S[:, k, : k - 1]
        drop = earlier.max(1) - final if higher_is_better else final - earlier.min(1)
        out["forgetting"] = drop.mean(-1)
    else:
        out["bwt"] = out["forgetting"] = nan
    if k >= 1:
        c = np.arange(k)
        gain = S[:, c + 1, c] - S[:, c, c]
        out["plasticity"] = (gain if higher_is_better else -gain).mean(-1)
    else:
        out["plasticity"] = nan
    return out


@dataclass(frozen=True)
class ItemComparison:
    metric: str
    score: str
    difference: float        # metric(a) - metric(b) on all items
    low: float               # 95% paired-bootstrap interval over items
    high: float
    p_value: float           # two-sided bootstrap p: how often the resampled difference crosses 0

    @property
    def resolved(self) -> bool:
        return self.low > 0 or self.high < 0


def compare_metrics(a: RunItems, b: RunItems, score: str, *, samples: int = BOOTSTRAP_SAMPLES,
                    seed: int = 0) -> list[ItemComparison]:
    """Every CL metric of `a` minus `b` for `score`, with a paired bootstrap over items (the same resampled
    items for both runs, per task)."""
    _paired(a, b)
    rng = np.random.default_rng(seed)
    index = {t: rng.integers(0, a.fields[t]["nll_sum"].shape[1], size=(samples, a.fields[t]["nll_sum"].shape[1]))
             for t in a.run.tasks}
    high = SCORES[score]
    point_a = metrics.summarize(a.matrix(score), higher_is_better=high)
    point_b = metrics.summarize(b.matrix(score), higher_is_better=high)
    ma, mb = batched_metrics(a.matrix(score, index), high), batched_metrics(b.matrix(score, index), high)
    boot = {m: ma[m] - mb[m] for m in METRICS}
    out = []
    for m in METRICS:
        d = boot[m]
        if np.isnan(point_a[m]) or np.isnan(point_b[m]) or np.isnan(d).any():
            continue
        low, high_ = np.quantile(d, [0.025, 0.975])
        p = min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0)))
        out.append(ItemComparison(m, score, float(point_a[m] - point_b[m]), float(low), float(high_), float(p)))
    return out


@dataclass(frozen=True)
class FinalRowTest:
    task: str
    accuracy_difference: float | None   # a - b at the final row
    mcnemar_p: float | None
    nll_difference: float               # a - b, token-weighted
    nll_low: float
    nll_high: float
    accuracy: float | None = None            # a's and b's own final accuracy: is either above chance?
    reference_accuracy: float | None = None


def final_row_tests(a: RunItems, b: RunItems, *, seed: int = 0) -> list[FinalRowTest]:
    """Per task at the last row: McNemar on per-item correctness (where the task has it) and a paired
    bootstrap interval of the NLL difference."""
    _paired(a, b)
    out = []
    for task in a.run.tasks:
        fa, fb = a.fields[task], b.fields[task]
        acc, p, acc_a, acc_b = None, None, None, None
        if "correct" in fa and "correct" in fb and np.isin(fa["correct"][-1], (0.0, 1.0)).all() \
                and np.isin(fb["correct"][-1], (0.0, 1.0)).all():
            acc_a, acc_b = float(fa["correct"][-1].mean()), float(fb["correct"][-1].mean())
            acc = acc_a - acc_b
            p = stats.mcnemar_pvalue(fa["correct"][-1] == 1, fb["correct"][-1] == 1)
        iv = stats.paired_bootstrap_nll(fa["nll_sum"][-1], fb["nll_sum"][-1], fa["nll_tokens"][-1], seed=seed)
        out.append(FinalRowTest(task, acc, p, iv.mean, iv.low, iv.high, acc_a, acc_b))
    return out


def compare_pairs(pairs, reference: str, *, samples: int = BOOTSTRAP_SAMPLES) -> "pd.DataFrame":
    """Item-level comparison of each (label, keys, run, reference_run) pair (both complete, scored on the
    same items): one row per score and metric with the item-bootstrap interval of run - reference, and one
    per task at the final row (NLL interval, accuracy difference, McNemar). Pairs without items are skipped."""
    import pandas as pd

    rows = []
    loaded: dict = {}   # a reference run is in one pair per strategy: read its items once

    def load(run):
        if run.path not in loaded:
            loaded[run.path] = RunItems.load(run)
        return loaded[run.path]

    for label, keys, run, ref in pairs:
        if not (run.complete and ref.complete) or ref.tasks != run.tasks:
            continue
        a, b = load(run), load(ref)
        if a is None or b is None:
            continue
        base = {"label": label, "reference": reference, **keys}
        for score in [s for s in SCORES if s in run.matrices and s in ref.matrices]:
            for c in compare_metrics(a, b, score, samples=samples, seed=run.seed):
                rows.append({**base, "kind": "metric", "score": score, "what": c.metric, "difference": c.difference,
                             "low": c.low, "high": c.high, "p_value": c.p_value, "resolved": c.resolved})
        for t in final_row_tests(a, b, seed=run.seed):
            rows.append({**base, "kind": "final row", "score": "nll", "what": t.task, "difference": t.nll_difference,
                         "low": t.nll_low, "high": t.nll_high, "p_value": np.nan,
                         "resolved": t.nll_low > 0 or t.nll_high < 0,
                         "accuracy_difference": t.accuracy_difference, "mcnemar_p": t.mcnemar_p,
                         "accuracy": t.accuracy, "reference_accuracy": t.reference_accuracy})
    return pd.DataFrame(rows)


def item_level_table(runs, reference: str, *, samples: int = BOOTSTRAP_SAMPLES) -> "pd.DataFrame":
    """`compare_pairs` for run directories: every strategy against `reference`, runs paired by seed."""
    from .runs import by_strategy

    groups = by_strategy([r for r in runs if not r.is_reference])
    ref_by_seed = {r.seed: r for r in groups.get(reference, [])}
    pairs = [(label, {"seed": run.seed}, run, ref_by_seed[run.seed]) for label, group in groups.items()
             if label != reference for run in group if run.seed in ref_by_seed]
    return compare_pairs(pairs, reference, samples=samples)


def item_level_sentences(table) -> list[str]:
    """Which metric differences exceed the noise of the scored items, in words (evaluation noise only)."""
    import pandas as pd

    out = []
    if table is None or not len(table):
        return out
    for _, r in table[table["kind"] == "metric"].iterrows():
        what = f"{r['what']} ({r['score']}), {r['label']} − {r['reference']}, seed {r['seed']}"
        if "order" in r and not pd.isna(r["order"]):
            what += f", order {int(r['order'])}"
        ci = (f"{signed(r['difference'])} (95% item-bootstrap interval {signed(r['low'])}..{signed(r['high'])}, "
              f"{p_text(r['p_value'], BOOTSTRAP_SAMPLES)})")
        if r["resolved"]:
            out.append(f"**Beyond item noise**: {what}: {ci}.")
        else:
            out.append(f"Within item noise: {what}: {ci}; the scored items cannot tell these runs apart.")
    return out


def forgetting_intervals(items: RunItems, score: str, *, samples: int = BOOTSTRAP_SAMPLES,
                         seed: int = 0) -> list[tuple[str, float, float, float]]:
    """Does one run forget at all? (task, forgetting, low, high) per task learned before the last and for
    their mean ("all"), with 95% bootstrap intervals over the scored items (evaluation noise only)."""
    run = items.run
    k = run.done
    if k < 2:
        return []
    rng = np.random.default_rng(seed)
    index = {t: rng.integers(0, items.fields[t]["nll_sum"].shape[1], size=(samples, items.fields[t]["nll_sum"].shape[1]))
             for t in run.tasks}
    higher = SCORES[score]

    def drops(R: np.ndarray) -> np.ndarray:           # (B, rows, T) -> (B, k - 1)
        earlier, final = R[:, 1:k, : k - 1], R[:, k, : k - 1]
        return earlier.max(1) - final if higher else final - earlier.min(1)

    point = drops(items.matrix(score)[None])[0]
    boot = drops(items.matrix(score, index))
    out = []
    for j in range(k - 1):
        low, high = np.quantile(boot[:, j], [0.025, 0.975])
        out.append((run.tasks[j], float(point[j]), float(low), float(high)))
    low, high = np.quantile(boot.mean(1), [0.025, 0.975])
    out.append(("all", float(point.mean()), float(low), float(high)))
    return out
