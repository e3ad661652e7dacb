"""Forgetting curves: for each task, its score after each experience (x = experience), one line per
strategy (seed mean, ±1 std band when several seeds; a single run gets 95% bars over its scored items),
the experience that trained the task marked.
Experiences a run did not finish are not drawn (the line stops), never drawn as zero."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.patches import Patch

from . import style
from .runs import Run, by_strategy, mean_matrix, scored_groups

plt = style.plt


def _legend_label(label: str, group: Sequence[Run]) -> str:
    k = min(r.done for r in group)
    T = group[0].T
    parts = [label]
    if len(group) > 1:
        parts.append(f"({len(group)} seeds)")
    if k < T:
        parts.append(f"[incomplete {k}/{T}]")
    return " ".join(parts)


Z95 = 1.959964   # two-sided 95% normal quantile: bars are +-1.96 standard errors over items
#: the values each score can take: 95% bars are clipped to them (an accuracy of 0 has no bar below 0)
SCORE_RANGE = {"accuracy": (0.0, 1.0), "nll": (0.0, math.inf)}
MARKERS = "osD^vP*X"
DODGE = 0.08     # x offset between strategies, so curves that coincide stay visible side by side


def flat_panel_limits(score: str, values: np.ndarray) -> tuple[float, float] | None:
    """A flat accuracy panel (e.g. all zero) is drawn on the whole 0-100% axis, not on matplotlib's
    autoscaled sliver around one value (which makes 0 look like a curve with a scale)."""
    v = values[~np.isnan(values)]
    return (-0.05, 1.05) if score == "accuracy" and v.size and np.ptp(v) == 0 else None


def clipped_bars(y: np.ndarray, half: np.ndarray, score: str) -> np.ndarray:
    """yerr (2, n) of y ± half, cut at the score's range."""
    low, high = SCORE_RANGE[score]
    return np.vstack([np.minimum(half, y - low), np.minimum(half, high - y)]).clip(min=0)


def plot_forgetting_curves(runs: Sequence[Run], score: str, out: str | Path, title: str | None = None) -> Path:
    """Write the forgetting-curve figure of one setting's `runs` for `score` ("accuracy" or "nll")."""
    references = scored_groups([r for r in runs if r.is_reference], score) if any(
        r.is_reference and score in r.matrices for r in runs) else {}
    runs = [r for r in runs if not r.is_reference] or runs
    groups = {lab: g for lab, g in scored_groups(runs, score).items() if lab not in references}
    first = next(iter(groups.values()))[0]
    T, tasks, experiences = first.T, first.tasks, first.experiences
    colour = style.colors([*by_strategy(runs), *references])
    ncols = 1 if T == 1 else 2 if T <= 4 else 3
    nrows = math.ceil(T / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.6 * ncols, 3.6 * nrows + 1.2), squeeze=False, sharex=True)
    x = np.arange(T + 1)
    item_bars = False
    stats = {lab: mean_matrix(g, score) for lab, g in groups.items()}
    ref_final = {lab: np.nanmean([r.matrices[score][1] for r in g], axis=0) for lab, g in references.items()}
    for j, task in enumerate(tasks):
        ax = axes[j // ncols][j % ncols]
        ax.axvspan(j + 0.6, j + 1.4, color="0.92", zorder=0)
        for i, (lab, g) in enumerate(groups.items()):
            mean, std, _ = stats[lab]
            y = mean[:, j]
            ok = ~np.isnan(y)
            xs = x + (i - (len(groups) - 1) / 2) * DODGE
            ax.plot(xs[ok], y[ok], marker=MARKERS[i % len(MARKERS)], ms=5, lw=1.8, color=colour[lab],
                    label=_legend_label(lab, g))
            se = g[0].errors.get(score)
            if len(g) == 1 and se is not None and not np.isnan(se[:, j]).all():   # one run: item noise
                e = np.full(T + 1, np.nan)
                e[: se.shape[0]] = se[:, j]
                bars = ok & ~np.isnan(e)
                ax.errorbar(xs[bars], y[bars], yerr=clipped_bars(y[bars], Z95 * e[bars], score), fmt="none",
                            ecolor=colour[lab], elinewidth=1.1,
                            capsize=3, alpha=0.8)
                item_bars = True
            if len(g) > 1:
                s = std[:, j]
                band = ok & ~np.isnan(s)
                ax.fill_between(xs[band], (y - s)[band], (y + s)[band], color=colour[lab], alpha=0.15, lw=0)
            if ok[j + 1]:
                ax.plot([xs[j + 1]], [y[j + 1]], marker="*", ms=13, color=colour[lab], mec="black", mew=0.6, zorder=5)
        for lab, final in ref_final.items():  # joint training: a level, not a curve over experiences
            ax.axhline(final[j], ls="--", lw=1.4, color=colour.get(lab, "0.3"), label=f"{lab} (upper bound)")
        ax.set_title(f"{task}  (trained in experience {j + 1}: {experiences[j]})", fontsize=10)
        ax.set_xticks(x, style.experience_ticks(experiences), fontsize=8)
        ax.set_xlim(-0.3, T + 0.3)
        limits = flat_panel_limits(score, np.concatenate([stats[lab][0][:, j] for lab in groups]))
        if limits:
            ax.set_ylim(*limits)
        ax.yaxis.set_major_formatter(style.value_formatter(score))
        ax.set_ylabel(style.SCORE_AXIS[score], fontsize=9)
        ax.grid(alpha=0.3)
    for j in range(T, nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("after experience")
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], ls="", marker="*", ms=12, color="0.5", mec="black", mew=0.6))
    labels.append("score right after training the task")
    handles.append(Patch(facecolor="0.92", edgecolor="0.8"))
    labels.append("experience that trained the task")
    if any(len(g) > 1 for g in groups.values()):
        handles.append(Patch(facecolor="0.5", alpha=0.25))
        labels.append("shaded: ±1 std over seeds")
    if item_bars:
        handles.append(plt.Line2D([], [], ls="", marker="|", ms=12, color="0.3"))
        labels.append("bars: 95% interval over the scored items (one run)")
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=9, frameon=False)
    fig.suptitle(title or f"Forgetting curves ({style.SCORE_TITLE[score]}): {first.stream} on {first.model}",
                 fontsize=12)
    legend_rows = math.ceil(len(labels) / 3)
    fig.tight_layout(rect=(0, 0.04 + 0.035 * legend_rows, 1, 0.97))
    out = Path(out)
    style.save(fig, out)
    return out
