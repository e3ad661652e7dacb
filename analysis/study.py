"""Report on a study directory (`clsharelora study`): cells aligned by task name, per-strategy means and
95% intervals over seeds x orders, paired comparisons against a reference strategy, and a verdict in words.

Cells of different task orders are comparable only through task names: a run's R has its columns in its
own order, so every per-task quantity (forgetting, plasticity, the score after j later experiences) is
keyed by task name here, and the order-level summaries (ACC, BWT, FWT, mean forgetting, mean plasticity)
are each cell's own. Pairs for the paired comparisons are cells with the same seed and the same order.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from clsharelora import metrics  # noqa: E402
from clsharelora.errors import DataError  # noqa: E402
from clsharelora.study.runner import recorded_seconds  # noqa: E402

from . import stats  # noqa: E402
from .items import chance_sentence, compare_pairs, task_options  # noqa: E402
from .runs import SCORES, Run, load_run  # noqa: E402
from .tables import signed  # noqa: E402

GRID = "grid.json"
SUMMARY_METRICS = ("acc", "bwt", "fwt", "forgetting", "plasticity")
#: for each metric: is a larger value better?  (forgetting is signed positive = worse for both scores)
BETTER_HIGH = {"acc": None, "bwt": True, "fwt": True, "forgetting": False, "plasticity": True}


@dataclass(frozen=True)
class Cell:
    label: str
    seed: int
    order: int
    run: Run


def is_study(path: str | Path) -> bool:
    return (Path(path) / GRID).is_file()


def load_study_cells(root: str | Path) -> tuple[dict, list[Cell], list[str]]:
    """(grid, complete cells, keys of cells that are missing or incomplete)."""
    root = Path(root)
    try:
        grid = json.loads((root / GRID).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{root / GRID}: cannot be read as a study grid: {exc}") from None
    cells, missing = [], []
    for c in grid["cells"]:
        run_dir = root / c["run"]
        if not (run_dir / "results.json").is_file():
            missing.append(c["key"])
            continue
        run = load_run(run_dir)
        if not run.complete:
            missing.append(c["key"])
            continue
        cells.append(Cell(c["label"], int(c["seed"]), int(c["order"]), run))
    return grid, cells, missing



def cell_table(cells: Sequence[Cell]) -> pd.DataFrame:
    """One row per (cell, score): the order-level metrics and trainable parameters."""
    rows = []
    for c in cells:
        for score in c.run.scores:
            m = metrics.summarize(c.run.matrices[score], higher_is_better=SCORES[score])
            rows.append({"label": c.label, "seed": c.seed, "order": c.order, "score": score,
                         "trainable_params": c.run.cost.get("trainable_params", math.nan),
                         **{k: m[k] for k in SUMMARY_METRICS}})
    return pd.DataFrame(rows)


def per_task_table(cells: Sequence[Cell]) -> pd.DataFrame:
    """One row per (cell, score, task name): final score, forgetting and plasticity of that task."""
    rows = []
    for c in cells:
        for score in c.run.scores:
            R = c.run.matrices[score]
            forget = metrics.forgetting_per_task(R, higher_is_better=SCORES[score])
            plastic = metrics.plasticity_per_task(R, higher_is_better=SCORES[score])
            for j, task in enumerate(c.run.tasks):
                rows.append({"label": c.label, "seed": c.seed, "order": c.order, "score": score, "task": task,
                             "position": j, "final": float(R[-1, j]), "forgetting": float(forget[j]),
                             "plasticity": float(plastic[j])})
    return pd.DataFrame(rows)


def strategy_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% t interval of every metric per (strategy, score) over its cells."""
    rows = []
    for (label, score), g in table.groupby(["label", "score"], sort=False):
        row = {"label": label, "score": score, "cells": len(g), "trainable_params": g["trainable_params"].iloc[0]}
        for m in SUMMARY_METRICS:
            values = g[m].dropna().to_numpy()
            if values.size:
                iv = stats.t_interval(values)
                row.update({m: iv.mean, f"{m}_low": iv.low, f"{m}_high": iv.high})
            else:
                row.update({m: math.nan, f"{m}_low": math.nan, f"{m}_high": math.nan})
        rows.append(row)
    return pd.DataFrame(rows)


def paired_table(table: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Every strategy against `reference`: pairs are cells with the same seed and order."""
    rows = []
    ref = table[table["label"] == reference].set_index(["score", "seed", "order"])
    for label in [lab for lab in table["label"].unique() if lab != reference]:
        mine = table[table["label"] == label].set_index(["score", "seed", "order"])
        for score in mine.index.get_level_values(0).unique():
            common = mine.loc[score].index.intersection(ref.loc[score].index) if score in ref.index.get_level_values(0) else []
            if len(common) == 0:
                continue
            for m in SUMMARY_METRICS:
                d = (mine.loc[score].loc[common, m] - ref.loc[score].loc[common, m]).dropna().to_numpy()
                if d.size == 0:
                    continue
                pc = stats.paired_comparison(d)
                rows.append({"label": label, "reference": reference, "score": score, "metric": m, "pairs": pc.n_pairs,
                             "mean_difference": pc.mean_difference, "t_low": pc.t_low, "t_high": pc.t_high,
                             "boot_low": pc.boot_low, "boot_high": pc.boot_high, "p_value": pc.p_value,
                             "mde": pc.mde, "resolved": pc.resolved})
    return pd.DataFrame(rows)


def _better(metric: str, score: str, diff: float) -> str:
    high = BETTER_HIGH[metric]
    if high is None:  # ACC: accuracy higher is better, NLL lower is better
        high = SCORES[score]
    return "better" if (diff > 0) == high else "worse"


def verdicts(pairs: pd.DataFrame) -> list[str]:
    """Sentences saying which differences the study resolves and which are below what it can detect."""
    out = []
    for _, r in pairs.iterrows():
        what = f"{r['label']} vs {r['reference']}, {r['metric']} ({r['score']})"
        if r["mean_difference"] == 0 and r["t_low"] == r["t_high"] == 0:
            out.append(f"Identical: {what}: the same value in all {r['pairs']} pairs.")
        elif r["resolved"]:
            out.append(f"**Resolved**: {what}: difference {r['mean_difference']:+.4f} "
                       f"(95% t CI {r['t_low']:+.4f}..{r['t_high']:+.4f}, bootstrap {r['boot_low']:+.4f}.."
                       f"{r['boot_high']:+.4f}, sign-flip p = {r['p_value']:.3g}, {r['pairs']} pairs): "
                       f"{_better(r['metric'], r['score'], r['mean_difference'])}.")
        else:
            why = (f"with {r['pairs']} pair(s) no test can resolve anything" if r["pairs"] < 2 else
                   f"with {r['pairs']} pairs the study detects (80% power, paired t test) only differences of "
                   f"about {r['mde']:.4f} or more")
            out.append(f"Not resolved: {what}: difference {r['mean_difference']:+.4f} "
                       f"(95% t CI {r['t_low']:+.4f}..{r['t_high']:+.4f}, p = {r['p_value']:.3g}); {why}.")
    return out


def reference_regime(table: pd.DataFrame, tasks: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Does the reference forget at all? Per score: its forgetting per task name and overall (each cell's
    mean forgetting) with a 95% t interval over its cells; `forgets` when the interval lies above zero.
    Where it does not, "forgets less than the reference" has nothing to be less than."""
    rows = []
    ref_cells, ref_tasks = table[table["label"] == reference], tasks[tasks["label"] == reference]
    for score in ref_cells["score"].unique():
        parts = [("all", ref_cells[ref_cells["score"] == score]["forgetting"])]
        t = ref_tasks[ref_tasks["score"] == score]
        parts += [(task, g["forgetting"]) for task, g in t.groupby("task", sort=True)]
        for task, values in parts:
            v = values.dropna().to_numpy()
            if v.size == 0:
                continue
            iv = stats.t_interval(v)
            rows.append({"score": score, "task": task, "mean": iv.mean, "low": iv.low, "high": iv.high, "n": iv.n,
                         "forgets": bool(iv.n > 1 and iv.low > 0)})
    return pd.DataFrame(rows, columns=["score", "task", "mean", "low", "high", "n", "forgets"])


def moot_scores(regime: pd.DataFrame) -> set[str]:
    """Scores on which the reference forgets neither overall nor on any task."""
    return {score for score, g in regime.groupby("score") if not g["forgets"].any()}


def regime_sentences(regime: pd.DataFrame, reference: str) -> list[str]:
    out = []
    for score, g in regime.groupby("score", sort=False):
        overall = g[g["task"] == "all"].iloc[0]
        per = "; ".join(f"{r['task']} {r['mean']:+.4f} ({r['low']:+.4f}..{r['high']:+.4f})"
                        for _, r in g[g["task"] != "all"].iterrows())
        what = (f"its {score} forgetting is {overall['mean']:+.4f} (95% t CI {overall['low']:+.4f}.."
                f"{overall['high']:+.4f}, {overall['n']} cells; per task: {per})")
        if not g["forgets"].any():
            below = ("; below zero: later experiences improved the earlier tasks" if overall["high"] < 0 else "")
            out.append(f"**{reference} does not measurably forget here ({score})**: {what}{below}. \"Does a "
                       f"strategy forget less than {reference}?\" is moot on this score: the differences below "
                       "compare backward transfer (below zero = more backward transfer than "
                       f"{reference}), not less forgetting.")
        else:
            which = ", ".join(g[g["forgets"] & (g["task"] != "all")]["task"]) or "overall only"
            out.append(f"{reference} forgets ({score}): {what}; resolved above zero for: {which}.")
    return out


def chance_sentences(items: pd.DataFrame, options: dict[str, int], reference: str) -> list[str]:
    """Tasks whose final accuracy (mean over cells, per strategy) is at or below chance, 1/options."""
    if not len(items) or "accuracy" not in items:
        return []
    final = items[(items["kind"] == "final row") & items["accuracy"].notna()]
    out = []
    for task, g in final.groupby("what", sort=False):
        means = {reference: float(g["reference_accuracy"].mean()),
                 **{label: float(h["accuracy"].mean()) for label, h in g.groupby("label", sort=False)}}
        sentence = chance_sentence(task, means, options)
        if sentence:
            out.append(sentence)
    return out


def order_table(table: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Task order as a factor: per strategy, score, metric and order, the paired difference against the
    reference with its own t interval over seeds, and the order x strategy interaction test (do the paired
    differences share one mean across orders? `stats.group_difference_pvalue`) with its smallest possible p."""
    rows = []
    ref = table[table["label"] == reference].set_index(["score", "seed", "order"])
    for label in [lab for lab in table["label"].unique() if lab != reference]:
        mine = table[table["label"] == label].set_index(["score", "seed", "order"])
        for (score, m) in [(sc, m) for sc in mine.index.get_level_values(0).unique() for m in SUMMARY_METRICS]:
            if score not in ref.index.get_level_values(0):
                continue
            d = (mine.loc[score][m] - ref.loc[score][m]).dropna()
            if d.empty:
                continue
            orders = d.index.get_level_values("order").to_numpy()
            p, floor = stats.group_difference_pvalue(d.to_numpy(), orders) if len(d) > 1 else (1.0, 1.0)
            for k in sorted(set(orders)):
                iv = stats.t_interval(d[orders == k].to_numpy())
                rows.append({"label": label, "score": score, "metric": m, "order": int(k), "pairs": iv.n,
                             "mean_difference": iv.mean, "t_low": iv.low, "t_high": iv.high,
                             "interaction_p": p, "interaction_floor": floor})
    return pd.DataFrame(rows)


def orders_agree(by_order: pd.DataFrame, pooled_mean: float) -> bool:
    """A pooled statement is made only where orders agree: every order's mean difference has the pooled
    sign and the interaction test does not reject at 5%."""
    if len(by_order) < 2:
        return True
    same_sign = bool((np.sign(by_order["mean_difference"]) == np.sign(pooled_mean)).all())
    return same_sign and float(by_order["interaction_p"].iloc[0]) >= 0.05


def order_sentence(by_order: pd.DataFrame) -> str:
    per = "; ".join(f"order {int(r['order'])}: {signed(r['mean_difference'])} ({signed(r['t_low'])}..{signed(r['t_high'])}, "
                    f"{int(r['pairs'])} pairs)" for _, r in by_order.iterrows())
    first = by_order.iloc[0]
    weak = (": it cannot reject at 5% with this design, so agreement rests on the signs alone"
            if first["interaction_floor"] >= 0.05 else "")
    return (f"Per order: {per}; order x strategy interaction: permutation p = {first['interaction_p']:.3g} "
            f"(the smallest p this design can give is {first['interaction_floor']:.3g}{weak}).")


HEADLINE = "forgetting"   # the study's question: does a strategy forget less than the reference?


def headline(pairs: pd.DataFrame, summary: pd.DataFrame, reference: str, moot: set[str] = frozenset(),
             by_order: pd.DataFrame | None = None) -> list[str]:
    """The answer to the study's question, one sentence per strategy and score: its forgetting against the
    reference's, at what parameter cost, resolved or not, and (when not) the smallest difference the study
    could have detected and the range its interval still allows. On a score where the reference does not
    forget (`moot`) a resolved difference is named backward transfer; where task orders disagree no pooled
    verdict is given, only the per-order intervals."""
    params = {(r["label"], r["score"]): r["trainable_params"] for _, r in summary.iterrows()}
    plastic = {(r["label"], r["score"]): r for _, r in pairs[pairs["metric"] == "plasticity"].iterrows()}
    out = []
    for _, r in pairs[pairs["metric"] == HEADLINE].iterrows():
        mine, ref = params.get((r["label"], r["score"]), math.nan), params.get((reference, r["score"]), math.nan)
        cost = (f"{mine:,.0f} trainable parameters, {100 * mine / ref:.1f}% of {reference}'s {ref:,.0f}"
                if ref and not (math.isnan(mine) or math.isnan(ref)) else "trainable parameters unknown")
        head = (f"**{r['label']}** ({cost}): {r['score'].upper() if r['score'] == 'nll' else r['score']} "
                f"forgetting minus {reference}'s = {r['mean_difference']:+.4f} (95% t CI {r['t_low']:+.4f}.."
                f"{r['t_high']:+.4f}, bootstrap {r['boot_low']:+.4f}..{r['boot_high']:+.4f}, sign-flip p = "
                f"{r['p_value']:.3g}, {r['pairs']} seed x order pairs)")
        orders = (by_order[(by_order["label"] == r["label"]) & (by_order["score"] == r["score"])
                           & (by_order["metric"] == HEADLINE)] if by_order is not None and len(by_order) else None)
        agree = orders is None or orders_agree(orders, r["mean_difference"])
        if r["mean_difference"] == 0 and r["t_low"] == r["t_high"] == 0:
            out.append(f"{head}: identical in every pair.")
        elif not agree:
            out.append(f"{head}: **the task orders disagree**, so no pooled verdict: read each order's own "
                       "interval.")
        elif r["resolved"] and r["score"] in moot:
            word = "more" if r["mean_difference"] < 0 else "less"
            out.append(f"{head}: **resolved: {word} backward transfer** than {reference} (which does not forget "
                       "here, so this is not less or more forgetting).")
        elif r["resolved"]:
            word = "less" if r["mean_difference"] < 0 else "more"
            out.append(f"{head}: **resolved, it forgets {word}** than {reference}.")
        else:
            mde = "∞" if math.isinf(r["mde"]) else f"{r['mde']:.4f}"
            out.append(f"{head}: not resolved. At this size the study detects (80% power) a difference of "
                       f"{mde} or more; the interval allows anything from {r['t_low']:+.4f} to {r['t_high']:+.4f}.")
        if orders is not None and len(orders) > 1:
            out[-1] += " " + order_sentence(orders)
        p = plastic.get((r["label"], r["score"]))
        if p is not None:   # forgetting less by learning less is no win (Biderman et al. 2024)
            learns = ("it learns less" if p["mean_difference"] < 0 else "it learns more") if p["resolved"] else "not resolved"
            out[-1] += (f" Plasticity (how much each task improved when trained) minus {reference}'s = "
                        f"{signed(p['mean_difference'])} (95% t CI {signed(p['t_low'])}..{signed(p['t_high'])}, p = "
                        f"{p['p_value']:.3g}): {learns}.")
    return out


def plot_task_curves(cells: Sequence[Cell], score: str, out: Path) -> Path:
    """Per task: its score after 0, 1, 2, ... later experiences (aligned by task name across orders),
    mean over cells per strategy with a 95% t band."""
    tasks = sorted({t for c in cells for t in c.run.tasks})
    labels = list(dict.fromkeys(c.label for c in cells))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for label in labels:
            series: dict[int, list[float]] = {}
            for c in cells:
                if c.label != label or score not in c.run.matrices:
                    continue
                j = c.run.tasks.index(task)
                R = c.run.matrices[score]
                for later, row in enumerate(range(j + 1, R.shape[0])):
                    series.setdefault(later, []).append(float(R[row, j]))
            xs = sorted(series)
            if not xs:
                continue
            ivs = [stats.t_interval(series[x]) for x in xs]
            means = [iv.mean for iv in ivs]
            line, = ax.plot(xs, means, marker="o", label=label)
            if all(iv.n > 1 for iv in ivs):
                ax.fill_between(xs, [iv.low for iv in ivs], [iv.high for iv in ivs], alpha=0.2, color=line.get_color())
        ax.set_title(task)
        ax.set_xlabel("experiences after it was trained")
        ax.set_ylabel(score)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{score} of each task after its own experience (mean, 95% t band over seeds x orders)", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_params_vs_forgetting(summary: pd.DataFrame, score: str, out: Path) -> Path:
    """Trainable parameters (x, log) against mean forgetting (y) with its 95% interval, one point per strategy."""
    rows = summary[summary["score"] == score]
    fig, ax = plt.subplots(figsize=(6, 4))
    for _, r in rows.iterrows():
        yerr = [[r["forgetting"] - r["forgetting_low"]], [r["forgetting_high"] - r["forgetting"]]]
        ax.errorbar([r["trainable_params"]], [r["forgetting"]], yerr=yerr, fmt="o", capsize=4, label=r["label"])
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(f"forgetting ({score}; positive = worse)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.legend(fontsize=8)
    ax.set_title("parameters vs forgetting (mean, 95% t interval over seeds x orders)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _timing(root: Path) -> str:
    """How long the study took: timing.json's sessions (written by `clsharelora study`). File times are no
    substitute: a resumed study rewrites grid.json, so their span can even come out negative."""
    cell_s = sum(recorded_seconds(root).values())
    cells = f"; the cells' own run times sum to {cell_s / 60:.1f} min" if cell_s else ""
    try:
        timing = json.loads((root / "timing.json").read_text())
        sessions = timing["sessions"]
        last = sessions[-1]
        return (f"Wall time: {timing['wall_s'] / 60:.1f} min in {len(sessions)} session(s) of `clsharelora study` "
                f"({last['jobs']} cell(s) at a time x {last['threads_per_cell']} thread(s), {last['cpus']} CPU(s), "
                f"{last['cpu']}){cells} (timing.json, status.tsv).")
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        pass
    return f"Wall time: not recorded (no readable timing.json){cells}."


def _study_stream(root: Path) -> dict | None:
    """The study's stream file in order 0 (streams/order0.yaml), or None when unreadable."""
    import yaml

    try:
        return yaml.safe_load((root / "streams" / "order0.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None


def setup_lines(root: Path, grid: dict) -> list[str]:
    """What each cell trained on and how each task was scored, read from the study's own stream file
    (streams/order0.yaml), so the doc says e.g. that generation tasks were scored by NLL only."""
    stream = _study_stream(root)
    if stream is None:
        return []
    lines = [f"Setup ({grid.get('description') or stream.get('description', '')}); per experience, from the "
             "study's stream file:"]
    for e in stream.get("experiences", []):
        t, ev = e.get("train", {}), e.get("eval", {})
        if ev.get("generate") is False:
            how = "NLL of the reference answers only (`generate: false`: no generation, no accuracy)"
        elif ev.get("task") in ("mmlu", "mmlu_pro"):
            how = f"{ev.get('shots', 5)}-shot letter log-likelihood (accuracy and NLL of the gold letter)"
        else:
            how = f"greedy generation, up to {ev.get('max_new_tokens', 'the default')} new tokens (accuracy), and NLL"
        lines.append(f"- {e['name']}: trains on {t.get('benchmark')} {t.get('split')} (n = {t.get('n', 'all')}, "
                     f"{t.get('max_steps', 'all')} steps); scored on {ev.get('task')} (n = {ev.get('n', 'all')}) by {how}.")
    return lines


def item_pairs(cells: Sequence[Cell], reference: str) -> pd.DataFrame:
    """`analysis.items.compare_pairs` on the study's pairs (same seed and order) against `reference`."""
    ref = {(c.seed, c.order): c.run for c in cells if c.label == reference}
    pairs = [(c.label, {"seed": c.seed, "order": c.order}, c.run, ref[(c.seed, c.order)])
             for c in cells if c.label != reference and (c.seed, c.order) in ref]
    return compare_pairs(pairs, reference)


def build_study_report(root: Path, out: Path, title: str, reference: str | None = None):
    """Write tables and figures for the study in `root` under `out`; returns the report Page."""
    from .report import Page

    grid, cells, missing = load_study_cells(root)
    if not cells:
        raise DataError(f"{root}: no complete cell yet ({len(missing)} missing or incomplete)")
    reference = reference or grid["strategies"][0]
    out.mkdir(parents=True, exist_ok=True)
    table = cell_table(cells)
    tasks = per_task_table(cells)
    summary = strategy_summary(table)
    pairs = paired_table(table, reference)
    by_order = order_table(table, reference)
    regime = reference_regime(table, tasks, reference)
    items = item_pairs(cells, reference)
    if len(items):
        items.to_csv(out / "item_level.csv", index=False)
    table.to_csv(out / "cells.csv", index=False)
    for name in ("grid.json", "status.tsv", "timing.json"):   # the study's own record, kept beside its summary
        if (root / name).is_file():
            shutil.copyfile(root / name, out / name)
    tasks.to_csv(out / "per_task.csv", index=False)
    summary.to_csv(out / "strategies.csv", index=False)
    pairs.to_csv(out / "paired.csv", index=False)
    by_order.to_csv(out / "paired_by_order.csv", index=False)
    regime.to_csv(out / "reference_forgetting.csv", index=False)

    page = Page(title)
    page.para(f"Study {grid['name']}: {len(grid['strategies'])} strategies x {len(grid['seeds'])} seeds x "
              f"{len(grid['orders'])} orders; {len(cells)} complete cells"
              + (f", {len(missing)} missing or incomplete (left out): {', '.join(missing)}" if missing else "")
              + ". Orders: " + "; ".join(f"{k}: {' → '.join(o)}" for k, o in enumerate(grid["orders"])) + ".")
    page.para(_timing(root))
    setup = setup_lines(root, grid)
    if setup:
        page.para(setup[0])
        page.para("\n".join(setup[1:]))
    page.heading(2, "Answer")
    options = task_options(sorted({t for c in cells for t in c.run.tasks}))
    for sentence in regime_sentences(regime, reference) + chance_sentences(items, options, reference):
        page.para(sentence)
    page.para(f"The question: does a strategy forget less than {reference}, and at what parameter cost? Forgetting "
              "of a task is how far its score fell from its best value over the earlier experiences to the end of the "
              "stream, averaged "
              "over the tasks learned before the last; positive is worse for both scores (for NLL, lower is "
              "better, so forgetting is the rise in NLL). A difference below zero means less forgetting than "
              f"{reference}. Pairs are cells with the same seed and task order. One test is pre-declared: a difference "
              "is resolved when its 95% paired t interval excludes zero; the MDE printed is that test's (80% "
              "power, simulated). The bootstrap interval and the sign-flip p-value are descriptive.")
    for sentence in headline(pairs, summary, reference, moot_scores(regime), by_order):
        page.para(sentence)
    page.heading(3, "Every paired comparison in words")
    for sentence in verdicts(pairs):
        page.para(sentence)
    page.heading(2, "Strategies (mean and 95% t interval over cells)")
    heads = ["strategy", "score", "cells", "trainable", *SUMMARY_METRICS]
    body = []
    for _, r in summary.iterrows():
        body.append([r["label"], r["score"], str(r["cells"]), f"{r['trainable_params']:,.0f}"] +
                    [f"{r[m]:.4f} [{r[m + '_low']:.4f}, {r[m + '_high']:.4f}]" if not math.isnan(r[m]) else "—"
                     for m in SUMMARY_METRICS])
    page.table(heads, body)
    page.heading(2, f"Paired against {reference} (same seed and order)")
    page.table(["strategy", "score", "metric", "pairs", "mean diff", "t CI", "bootstrap CI", "p", "MDE", "resolved"],
               [[r["label"], r["score"], r["metric"], str(r["pairs"]), f"{r['mean_difference']:+.4f}",
                 f"{r['t_low']:+.4f}..{r['t_high']:+.4f}", f"{r['boot_low']:+.4f}..{r['boot_high']:+.4f}",
                 f"{r['p_value']:.3g}", f"{r['mde']:.4f}", "yes" if r["resolved"] else "no"] for _, r in pairs.iterrows()])
    if len(by_order) and by_order["order"].nunique() > 1:
        page.heading(2, "By task order (order as a factor)")
        page.para("Orders are not seeds: each order's paired difference has its own t interval over seeds, and "
                  "a permutation test asks whether the orders share one mean difference (order x strategy "
                  "interaction). The answer above pools orders only where every order has the pooled sign and "
                  "that test does not reject; with few pairs per order its smallest possible p is printed too.")
        page.table(["strategy", "score", "metric", "order", "pairs", "mean diff", "t CI", "interaction p (floor)"],
                   [[r["label"], r["score"], r["metric"], str(r["order"]), str(r["pairs"]),
                     signed(r["mean_difference"]), f"{signed(r['t_low'])}..{signed(r['t_high'])}",
                     f"{r['interaction_p']:.3g} ({r['interaction_floor']:.3g})"]
                    for _, r in by_order.iterrows()])
    if len(items):
        page.heading(2, "Evaluation noise against training noise (item level)")
        page.para("Every cell stored its per-item results, so each pair's difference is also tested against the "
                  "noise of the items scored (paired bootstrap over items, the same resample for both cells; "
                  "McNemar on the final row's per-item correctness). A pair can differ beyond item noise while "
                  "the strategies do not differ over seeds and orders: then training noise, not the number of "
                  "items, limits the study.")
        body = []
        for (label, score, what), g in items[items["kind"] == "metric"].groupby(["label", "score", "what"], sort=False):
            half = float(np.median((g["high"] - g["low"]) / 2))
            spread = float(g["difference"].std(ddof=1)) if len(g) > 1 else math.nan
            body.append([label, score, what, str(len(g)), f"{int(g['resolved'].sum())}/{len(g)}",
                         f"{half:.4f}", "—" if math.isnan(spread) else f"{spread:.4f}"])
        page.table(["strategy", "score", "metric", "pairs", "pairs beyond item noise",
                    "median item half-width (95%)", "sd of the difference over pairs"], body)
        final = items[(items["kind"] == "final row") & items["mcnemar_p"].notna()] if "mcnemar_p" in items else items[:0]
        if len(final):
            page.table(["strategy", "task", "pairs", "mean accuracy diff (final row)", "pairs with McNemar p < 0.05"],
                       [[label, task, str(len(g)), signed(g["accuracy_difference"].mean()),
                         f"{int((g['mcnemar_p'] < 0.05).sum())}/{len(g)}"]
                        for (label, task), g in final.groupby(["label", "what"], sort=False)])
    page.heading(2, "Figures")
    for score in [s for s in SCORES if s in table["score"].unique()]:
        path = plot_task_curves(cells, score, out / "figures" / f"task_curves_{score}.png")
        page.image(path, f"figures/{path.name}", f"per-task curves, {score}")
        path = plot_params_vs_forgetting(summary, score, out / "figures" / f"params_vs_forgetting_{score}.png")
        page.image(path, f"figures/{path.name}", f"parameters vs forgetting, {score}")
    return page
