"""Write run directories from given score matrices, through the one results writer (`ResultsStore`), so
analysis can be tested and tried on known numbers without training. Their results.json says
`"run": {"synthetic": true}` and reports mark such runs: they are fixtures, never results."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clsharelora.training.results import ResultsStore

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
    mats = {"accuracy": acc}
    if nll is not None:
        mats["nll"] = np.asarray(nll, dtype=float)
    run_dir = Path(root) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    done = acc.shape[0] - 1
    store = ResultsStore(
        run={"name": name, "stream": stream, "adapter": adapter, "variant": variant, "cl": cl, "model": model,
             "seed": seed, "synthetic": True},
        tasks=list(tasks), experiences=list(experiences)[:len(tasks)])
    store.rows = [[{"task": t, **{s: float(m[i, j]) for s, m in mats.items()}, "n": 50} for j, t in enumerate(tasks)]
                  for i in range(done + 1)]
    store.cost = dict(cost or {})
    store.write(run_dir)
    return run_dir
