"""Shared look of every figure: headless Agg backend, one colour per strategy across all figures,
axis labels with units, experience tick labels."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import PercentFormatter, ScalarFormatter  # noqa: E402

DPI = 110
_PALETTE = plt.get_cmap("tab10").colors

SCORE_AXIS = {
    "accuracy": "accuracy (%), higher is better",
    "nll": "NLL (nats/token), lower is better",
}
SCORE_TITLE = {"accuracy": "Accuracy", "nll": "NLL"}


def colors(labels: list[str]) -> dict[str, tuple]:
    """A fixed colour per strategy label, by its position in the (sorted) strategy list."""
    return {lab: _PALETTE[i % len(_PALETTE)] for i, lab in enumerate(labels)}


def experience_ticks(experiences: tuple[str, ...]) -> list[str]:
    """x tick labels: 'before' for row 0, then 'i\\nname' for each experience."""
    return ["before"] + [f"{i}\n{name}" for i, name in enumerate(experiences, start=1)]


def value_formatter(score: str):
    """Axis formatter: accuracy as percent (decimals chosen from the axis range, so a narrow range never
    shows repeated labels), NLL in plain numbers (no offset label, which collides with panel titles)."""
    if score == "accuracy":
        return PercentFormatter(xmax=1.0, decimals=None, symbol="")
    return ScalarFormatter(useOffset=False)


def cell_text(score: str, value: float) -> str:
    """Heatmap annotation: accuracy in percent (1 decimal), NLL with 2 decimals."""
    return f"{100 * value:.1f}" if score == "accuracy" else f"{value:.2f}"


def save(fig, path) -> None:
    """Write `fig` as PNG (fixed metadata so reruns give identical bytes) and free it."""
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": None})
    plt.close(fig)
