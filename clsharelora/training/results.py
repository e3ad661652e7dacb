"""The run's results: the R matrices (accuracy, NLL) row by row, their CL metrics, and the files they go to.

This module owns the results.json schema (docs/results-format.md): training writes through `ResultsStore`,
and so do the test fixtures (`clsharelora.analysis.fake_runs`, whose runs say `"synthetic": true`).
Rows are only ever appended: a resumed run reloads the rows already written and never rewrites them.
The per-item results behind each row go to items/row_<i>.npz (`write_items` / `read_items`), written
before the row enters results.json, so every row a reader sees has its items on disk.
"""

from __future__ import annotations

import io
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
        # row-0 tasks another run of the same compare/study scored (training/shared_row0.py): task -> source
        self.shared_row0: dict[str, dict[str, Any]] = {}

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
        """The scores every cell carries: nll always, accuracy unless a task was scored without generation
        (its accuracy is null; the other tasks' accuracies stay in `scores`)."""
        return [s for s in SCORES if self.rows and all(cell.get(s) is not None for row in self.rows for cell in row)]

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
            **({"shared_row0": self.shared_row0} if self.shared_row0 else {}),
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
        store.shared_row0 = dict(data.get("shared_row0", {}))
        return store

    @classmethod
    def load(cls, run_dir: str | Path) -> "ResultsStore":
        path = Path(run_dir) / "results.json"
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{path}: cannot read results ({exc})") from None


def scored_rows(run_dir: str | Path) -> int:
    """How many score rows a run has written so far (0 while it has none or its file is mid-replace):
    for a progress bar that follows a run in another process."""
    try:
        return len(json.loads((Path(run_dir) / "results.json").read_text()).get("scores", []))
    except (OSError, ValueError, AttributeError):
        return 0


ITEMS_DIR = "items"


def items_path(run_dir: str | Path, row: int) -> Path:
    return Path(run_dir) / ITEMS_DIR / f"row_{row}.npz"


def write_items(run_dir: str | Path, row: int, items: dict[str, dict[str, np.ndarray]],
                ids: dict[str, list[str]]) -> Path:
    """Write row `row`'s per-item results, {task: {field: array}} plus each task's item ids, atomically to
    items/row_<row>.npz (keys "<task>.<field>", "<task>.id")."""
    arrays = {}
    for task, fields in items.items():
        arrays[f"{task}.id"] = np.asarray([str(i) for i in ids[task]], dtype=str)
        for key, value in fields.items():
            arrays[f"{task}.{key}"] = np.asarray(value)
    path = items_path(run_dir, row)
    write_arrays(path, arrays)
    return path


def write_arrays(path: str | Path, arrays: dict[str, Any]) -> None:
    """{name: array} as a compressed .npz, written atomically (a reader sees the old file or the new one)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic.write_bytes(path, buffer.getvalue())


def read_items(run_dir: str | Path, row: int) -> dict[str, dict[str, np.ndarray]]:
    """{task: {field: array, "id": item ids}} of row `row`; {} when the run stored no items for it (runs
    written before items existed)."""
    path = items_path(run_dir, row)
    if not path.is_file():
        return {}
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            task, _, field = key.rpartition(".")
            out.setdefault(task, {})[field] = data[key]
    return out


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
