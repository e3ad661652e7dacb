"""Write run directories from given score matrices, in the results-format.md layout (results.json,
R_accuracy.csv, R_nll.csv), so analysis can be tested and tried on known numbers without training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from clsharelora import metrics

from .runs import SCORES

TASKS = ("gsm8k", "humaneval", "mmlu", "mmlu_pro")
EXPERIENCES = ("gsm8k", "code", "mmlu", "mmlu_pro")


def write_run(
    root: str | Path,
    name: str,
    accuracy: Sequence[Sequence[float]],
    nll: Sequence[Sequence[float]] | None = None,
    *,
    stream: str = "demo",
    model: str = "smollm2-135m",
    adapter: str = "lora",
    variant: str | None = None,
    cl: str = "naive",
    seed: int = 0,
    tasks: Sequence[str] = TASKS,
    experiences: Sequence[str] = EXPERIENCES,
    cost: dict[str, Any] | None = None,
) -> Path:
    """Write `root/name/` holding `accuracy` (and `nll`) as the run's matrices; rows = experiences
    done + 1, so fewer than T+1 rows makes an incomplete run. `cost` fields left out are absent (shown
    as unknown), not zero. Returns the run directory."""
    acc = np.asarray(accuracy, dtype=float)
    T = len(tasks)
    mats = {"accuracy": acc}
    if nll is not None:
        mats["nll"] = np.asarray(nll, dtype=float)
    run_dir = Path(root) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    done = acc.shape[0] - 1
    results = {
        "schema": 1,
        "run": {"name": name, "stream": stream, "adapter": adapter, "variant": variant, "cl": cl,
                "model": model, "seed": seed},
        "tasks": list(tasks),
        "experiences": list(experiences)[:T],
        "complete": done == T,
        "matrices": {s: m.tolist() for s, m in mats.items()},
        "metrics": {s: metrics.summarize(m, higher_is_better=SCORES[s]) for s, m in mats.items()},
        "cost": dict(cost or {}),
        "scores": [
            [{"task": t, **{s: float(m[i, j]) for s, m in mats.items()}, "n": 50} for j, t in enumerate(tasks)]
            for i in range(done + 1)
        ],
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    for s, m in mats.items():
        frame = pd.DataFrame(m, columns=list(tasks), index=pd.Index(range(m.shape[0]), name="after"))
        frame.to_csv(run_dir / f"R_{s}.csv")
    return run_dir
