"""The run's results: the R matrices (accuracy, NLL) row by row, their CL metrics, and the files they go to.

This module owns the results.json schema (docs/results-format.md): training writes through `ResultsStore`,
and so do the test fixtures (`clsharelora.analysis.fake_runs`, whose runs say `"synthetic": true`).
Rows are only ever appended: a resumed run reloads the rows already written and never rewrites them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .. import atomic
from ..errors import UserError

SCHEMA = 1
SCORES = ("accuracy", "nll")


class ResultsStore:
    def __init__(self, run: dict[str, Any], tasks: list[str], experiences: list[str]):
        self.run = dict(run)
        self.tasks = list(tasks)
        self.experiences = list(experiences)
        self.rows: list[list[dict[str, Any]]] = []
        self.cost: dict[str, Any] = {}
        self.precision: dict[str, Any] = {}   # bf16 settings as requested and as used (CPU fallback to fp32)
        # per experience: what it trains on after the length policy (benchmarks/scenario.py TrainingData)
        self.training_data: dict[str, dict[str, Any]] = {}

    @property
    def done(self) -> int:
        """Experiences completed (row 0 is the untrained model)."""
        return max(0, len(self.rows) - 1)

    @property
    def complete(self) -> bool:
        return len(self.rows) == len(self.tasks) + 1

    def add_row(self, scores: list[dict[str, Any]]) -> None:
        if [s["task"] for s in scores] != self.tasks:
            raise ValueError(f"row tasks {[s['task'] for s in scores]} != stream tasks {self.tasks}")
        if self.complete:
            raise ValueError("all rows are already recorded")
        self.rows.append([dict(s) for s in scores])

    def scores(self) -> list[str]:
        """The scores every cell carries (accuracy always; nll when the evaluators report it)."""
        return [s for s in SCORES if self.rows and all(s in cell for row in self.rows for cell in row)]

    def matrix(self, score: str) -> np.ndarray:
        return np.array([[float(cell[score]) for cell in row] for row in self.rows], dtype=float)

    def metrics(self) -> dict[str, Any]:
        from ..metrics import summarize

        out = {}
        for score in self.scores():
            if len(self.rows) >= 2:
                out[score] = summarize(self.matrix(score), higher_is_better=score != "nll")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "run": self.run, "tasks": self.tasks, "experiences": self.experiences,
            "complete": self.complete,
            "matrices": {score: self.matrix(score).tolist() for score in self.scores()} if self.rows else
                        {score: [] for score in SCORES},
            "metrics": _jsonable(self.metrics()), "cost": self.cost, "training_data": self.training_data,
            "precision": self.precision, "scores": self.rows,
        }

    def write(self, run_dir: str | Path) -> None:
        run_dir = Path(run_dir)
        atomic.write_json(run_dir / "results.json", self.to_json())
        for score in self.scores() if self.rows else SCORES:
            lines = ["after," + ",".join(self.tasks)]
            for i, row in enumerate(self.rows):
                lines.append(f"{i}," + ",".join(repr(float(c[score])) for c in row))
            atomic.write_text(run_dir / f"R_{score}.csv", "\n".join(lines) + "\n")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ResultsStore":
        store = cls(data["run"], data["tasks"], data["experiences"])
        store.rows = [list(r) for r in data.get("scores", [])]
        store.cost = dict(data.get("cost", {}))
        store.precision = dict(data.get("precision", {}))
        store.training_data = dict(data.get("training_data", {}))  # absent in files written before it existed
        return store

    @classmethod
    def load(cls, run_dir: str | Path) -> "ResultsStore":
        path = Path(run_dir) / "results.json"
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{path}: cannot read results ({exc})") from None


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if np.isnan(obj) else float(obj)   # JSON has no NaN: undefined metrics are null
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
