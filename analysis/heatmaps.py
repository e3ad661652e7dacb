"""Heatmaps of the score matrix R per strategy (rows = after experience, columns = task), annotated,
on one colour scale across strategies so panels compare. Rows a run did not reach are hatched grey and
labelled "not run", never coloured as a value."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.patches import Rectangle

from . import style
from .runs import Run, mean_matrix, scored_groups

plt = style.plt


def plot_heatmaps(runs: Sequence[Run], score: str, out: str | Path, title: str | None = None) -> Path:
    """Write one figure with a heatmap panel per strategy of one setting's `runs` for `score`."""
    groups = scored_groups(runs, score)
    first = next(iter(groups.values()))[0]
    T, tasks, experiences = first.T, first.tasks, first.experiences
    means = {lab: mean_matrix(g, score)[0] for lab, g in groups.items()}
    values = np.concatenate([m[~np.isnan(m)] for m in means.values()])
    vmin, vmax = float(values.min()), float(values.max())
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    norm = Normalize(vmin, vmax)
    cmap = plt.get_cmap("viridis" if score == "accuracy" else "viridis_r").copy()

    n = len(groups)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    cell = 0.95
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(max(4.8, cell * T + 2.4) * ncols + 0.8, (cell * (T + 1) + 1.6) * nrows + 0.6),
        squeeze=False,
    )
    image = None
    for idx, (lab, g) in enumerate(groups.items()):
        ax = axes[idx // ncols][idx % ncols]
        M = means[lab]
        image = ax.imshow(np.ma.masked_invalid(M), cmap=cmap, norm=norm, aspect="auto")
        for i in range(T + 1):
            for j in range(T):
                v = M[i, j]
                if np.isnan(v):
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="0.85", hatch="//", edgecolor="0.6", lw=0))
                    ax.text(j, i, "not run", ha="center", va="center", fontsize=8, color="0.3")
                    continue
                r, gr, b, _ = cmap(norm(v))
                dark = 0.299 * r + 0.587 * gr + 0.114 * b < 0.5
                ax.text(j, i, style.cell_text(score, v), ha="center", va="center", fontsize=9,
                        color="white" if dark else "black")
            if 1 <= i <= T and not np.isnan(M[i, i - 1]):  # outline the cell of the task just trained
                ax.add_patch(Rectangle((i - 1 - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.6))
        k = min(r.done for r in g)
        sub = f"{len(g)} seeds, mean" if len(g) > 1 else f"seed {g[0].seed}"
        status = "" if k == T else f", incomplete {k}/{T}"
        ax.set_title(f"{lab}  ({sub}{status})", fontsize=10)
        ax.set_xticks(range(T), tasks, fontsize=9)
        ax.set_yticks(range(T + 1), ["before"] + [f"{i}: {e}" for i, e in enumerate(experiences, 1)], fontsize=9)
        ax.set_xlabel("task evaluated")
        ax.set_ylabel("after experience")
    for idx in range(n, nrows * ncols):
        axes[idx // ncols][idx % ncols].set_visible(False)
    unit = "accuracy (%)" if score == "accuracy" else "NLL (nats/token)"
    fig.suptitle(
        title or f"Score matrix R ({style.SCORE_TITLE[score]}): {first.stream} on {first.model}"
        "  (red box = task just trained)",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0, 0.9, 0.95))
    cax = fig.add_axes((0.92, 0.15, 0.018, 0.7))
    bar = fig.colorbar(image, cax=cax)
    bar.set_label(unit + (", higher is better" if score == "accuracy" else ", lower is better"))
    bar.ax.yaxis.set_major_formatter(style.value_formatter(score))
    out = Path(out)
    style.save(fig, out)
    return out
