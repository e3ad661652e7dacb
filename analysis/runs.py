"""Load and validate run directories (docs/results-format.md) into `Run` objects and a tidy frame.

Everything analysis shows comes from the score matrices in results.json; metrics are recomputed from
them with `clsharelora.metrics` (one definition, and the stored `metrics` block cannot drift from the
pictures). A malformed file raises DataError naming the file and the field.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from clsharelora import metrics
from clsharelora.errors import DataError

RESULTS = "results.json"
SCHEMA = 1
#: score name -> higher is better. A run has at least one; `accuracy` is absent when a task was scored
#: without generation (NLL only), `nll` (nats/token) in runs whose evaluators did not report it.
SCORES: dict[str, bool] = {"accuracy": True, "nll": False}
COST_FIELDS = (
    "trainable_params",
    "lora_trainable_params",
    "optimizer_state_bytes",
    "peak_memory_bytes",
    "train_time_s",
    "eval_time_s",
)
#: cl methods / variants that add nothing to a strategy's label
_PLAIN_CL = {"", "naive", "none", "finetune", "sequential"}
#: cl methods whose run is a reference (one training phase, two score rows), not a sequential stream
REFERENCE_CL = {"joint"}
_PLAIN_VARIANT = {"", "default", "none"}


@dataclass(frozen=True)
class Run:
    """One run directory: identity, the score matrices (k+1 rows when k experiences are done) and cost."""

    path: Path
    name: str
    stream: str
    model: str
    adapter: str
    variant: str | None
    cl: str
    seed: int
    tasks: tuple[str, ...]
    experiences: tuple[str, ...]
    matrices: dict[str, np.ndarray] = field(repr=False)
    cost: dict[str, float] = field(repr=False)
    #: how peak memory was measured ("cuda_allocated", "process_rss", ...), when the run says
    memory_kind: str | None = None
    #: written by a test fixture (analysis.fake_runs), not by training: reports say so
    synthetic: bool = False
    #: task -> evaluation protocol ("lm-eval:mmlu", "clsharelora:mmlu_pro_letters", ...), when the run says
    protocols: dict[str, str] = field(default_factory=dict, repr=False)
    #: score -> standard errors over items of each R entry (same shape; NaN where the run stored none)
    errors: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    #: items scored in each R entry (NaN where the run did not say)
    n_items: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)

    @property
    def T(self) -> int:
        return len(self.tasks)

    @property
    def done(self) -> int:
        """Experiences completed (k); -1 for a run with no scores yet (not even row 0)."""
        return next(iter(self.matrices.values())).shape[0] - 1

    @property
    def started(self) -> bool:
        """Whether the run has any score (row 0); runs without one are listed but not analysed."""
        return self.done >= 0

    @property
    def is_reference(self) -> bool:
        """Joint training: its row 1 is the upper bound on every task, drawn as a reference line."""
        return self.cl in REFERENCE_CL

    @property
    def complete(self) -> bool:
        return self.done >= 1 if self.is_reference else self.done == self.T

    @property
    def status(self) -> str:
        if not self.started:
            return "not started (no scores yet)"
        if self.is_reference:
            status = "reference (joint training)" if self.complete else "reference, not trained yet"
        else:
            status = "complete" if self.complete else f"incomplete ({self.done}/{self.T} experiences)"
        return status

    @property
    def label(self) -> str:
        """Strategy label: adapter[/variant][+cl], e.g. "lora", "sharelora/share_a", "lora+replay"."""
        return strategy_label(self.adapter, self.variant, self.cl)

    @property
    def setting(self) -> tuple[str, str]:
        """(stream, model): runs are only compared within one setting."""
        return (self.stream, self.model)

    @property
    def scores(self) -> list[str]:
        return [s for s in SCORES if s in self.matrices]

    def metrics(self, score: str, upto: int | None = None) -> dict[str, Any]:
        """`clsharelora.metrics.summarize` of one score's matrix, over the first `upto` experiences
        (default: all done; metrics "so far" when the run is incomplete)."""
        R = self.matrices[score]
        if upto is not None:
            if not 0 <= upto <= self.done:
                raise ValueError(f"{self.path}: upto={upto} outside 0..{self.done} experiences done")
            R = R[: upto + 1]
        return metrics.summarize(R, higher_is_better=SCORES[score])


def strategy_label(adapter: str, variant: str | None, cl: str | None) -> str:
    label = adapter
    if variant is not None and str(variant).lower() not in _PLAIN_VARIANT and variant != adapter:
        label += f"/{variant}"
    if cl is not None and str(cl).lower() not in _PLAIN_CL:
        label += f"+{cl}"
    return label


# ---------------------------------------------------------------------------------------------------
# Loading


def _need(obj: dict, key: str, kind: type | tuple[type, ...], where: str, file: Path) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"{file}: missing field '{where}{key}'")
    value = obj[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{file}: field '{where}{key}' must be {names}, got {value!r}")
    return value


def _matrix(value: Any, T: int, field_name: str, file: Path) -> np.ndarray:
    if not isinstance(value, list):
        raise DataError(f"{file}: field '{field_name}' must be a list of rows, got {value!r:.80}")
    if not value:  # written before the first evaluation finished: a run with no points yet
        return np.zeros((0, T))
    if len(value) > T + 1:
        raise DataError(f"{file}: field '{field_name}' has {len(value)} rows; at most T+1 = {T + 1} allowed")
    for i, row in enumerate(value):
        if not isinstance(row, list) or len(row) != T:
            raise DataError(
                f"{file}: field '{field_name}' row {i} must be a list of {T} numbers (one per task), got {row!r:.80}"
            )
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise DataError(
                    f"{file}: field '{field_name}' row {i} column {j} must be a finite number, got {v!r} "
                    "(a missing point is a missing row, never a placeholder)"
                )
    return np.asarray(value, dtype=float)


def load_run(path: str | Path) -> Run:
    """Read and validate `path/results.json` (or a results.json path) into a Run."""
    path = Path(path)
    file = path if path.name == RESULTS else path / RESULTS
    if not file.is_file():
        raise DataError(f"{file}: not found (is {file.parent} a run directory?)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{file}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{file}: top level must be a JSON object, got {type(data).__name__}")
    schema = _need(data, "schema", int, "", file)
    if schema != SCHEMA:
        raise DataError(f"{file}: field 'schema' is {schema}; this analysis reads schema {SCHEMA}")

    run = _need(data, "run", dict, "", file)
    ident = {k: _need(run, k, str, "run.", file) for k in ("stream", "adapter", "model")}
    name = run.get("name") or file.parent.name
    cl = run.get("cl") or "naive"
    variant = run.get("variant")
    if variant is not None and not isinstance(variant, str):
        raise DataError(f"{file}: field 'run.variant' must be a string or null, got {variant!r}")
    if not isinstance(cl, str):
        raise DataError(f"{file}: field 'run.cl' must be a string, got {cl!r}")
    seed = _need(run, "seed", int, "run.", file)

    tasks = _need(data, "tasks", list, "", file)
    experiences = _need(data, "experiences", list, "", file)
    if not tasks or not all(isinstance(t, str) for t in tasks):
        raise DataError(f"{file}: field 'tasks' must be a non-empty list of task names, got {tasks!r}")
    if len(set(tasks)) != len(tasks):
        raise DataError(f"{file}: field 'tasks' has duplicate names: {tasks!r}")
    if len(experiences) != len(tasks) or not all(isinstance(e, str) for e in experiences):
        raise DataError(
            f"{file}: field 'experiences' must list {len(tasks)} names (one per task, T = number of experiences), "
            f"got {experiences!r}"
        )
    T = len(tasks)

    raw = _need(data, "matrices", dict, "", file)
    if not any(s in raw for s in SCORES):
        raise DataError(f"{file}: field 'matrices' holds none of {', '.join(SCORES)}")
    mats = {s: _matrix(raw[s], T, f"matrices.{s}", file) for s in SCORES if s in raw}
    rows = {s: m.shape[0] for s, m in mats.items()}
    if len(set(rows.values())) != 1:
        raise DataError(f"{file}: field 'matrices' has different row counts per score: {rows}")
    done = next(iter(rows.values())) - 1
    complete = _need(data, "complete", bool, "", file)
    if complete != (done == T):
        raise DataError(
            f"{file}: field 'complete' is {str(complete).lower()} but 'matrices' has {done + 1} rows "
            f"({done} of {T} experiences done)"
        )

    cost_raw = data.get("cost") or {}
    if not isinstance(cost_raw, dict):
        raise DataError(f"{file}: field 'cost' must be an object, got {cost_raw!r}")
    cost: dict[str, float] = {}
    for key in COST_FIELDS:
        v = cost_raw.get(key)
        if v is None:
            cost[key] = math.nan
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise DataError(f"{file}: field 'cost.{key}' must be a number, got {v!r}")
        else:
            cost[key] = float(v)
    memory_kind = cost_raw.get("peak_memory_kind")
    if memory_kind is not None and not isinstance(memory_kind, str):
        raise DataError(f"{file}: field 'cost.peak_memory_kind' must be a string, got {memory_kind!r}")

    scores = data.get("scores")
    first_row = scores[0] if isinstance(scores, list) and scores and isinstance(scores[0], list) else []
    protocols = {c["task"]: c["protocol"] for c in first_row
                 if isinstance(c, dict) and isinstance(c.get("task"), str) and isinstance(c.get("protocol"), str)}
    errors = {score: _cell_field(scores, f"{score}_se", m.shape) for score, m in mats.items()}
    n_items = _cell_field(scores, "n", next(iter(mats.values())).shape) if mats else np.zeros((0, T))

    return Run(
        path=file.parent,
        name=str(name),
        stream=ident["stream"],
        model=ident["model"],
        adapter=ident["adapter"],
        variant=variant,
        cl=cl,
        seed=seed,
        tasks=tuple(tasks),
        experiences=tuple(experiences),
        matrices=mats,
        cost=cost,
        memory_kind=memory_kind,
        synthetic=run.get("synthetic") is True,
        protocols=protocols,
        errors=errors,
        n_items=n_items,
    )


def _cell_field(scores: Any, key: str, shape: tuple[int, int]) -> np.ndarray:
    """Field `key` (e.g. `accuracy_se`, `n`) of every cell of results.json `scores` as a matrix; NaN where
    absent or malformed."""
    out = np.full(shape, np.nan)
    if not isinstance(scores, list):
        return out
    for i, row in enumerate(scores[: shape[0]]):
        for j, cell in enumerate(row[: shape[1]] if isinstance(row, list) else []):
            v = cell.get(key) if isinstance(cell, dict) else None
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[i, j] = float(v)
    return out


def find_run_dirs(path: str | Path) -> list[Path]:
    """`path` itself when it holds results.json, else every directory below it that does (sorted).
    A plain file other than results.json gives [] (a shell glob like runs/demo/* may include one)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such run directory")
    if path.is_file():
        return [path.parent] if path.name == RESULTS else []
    if (path / RESULTS).is_file():
        return [path]
    found = sorted(p.parent for p in path.rglob(RESULTS))
    if not found:
        raise DataError(f"{path}: no {RESULTS} in it or below it: not a run directory")
    return found


def load_runs(paths: Iterable[str | Path], skipped: list[Path] | None = None) -> list[Run]:
    """Load every run under `paths` (run dirs or folders of run dirs); plain files that are not
    results.json are skipped (appended to `skipped` when given). Refuses two runs that claim the same
    stream/model/strategy/seed, since averaging over them would silently double-count a seed."""
    dirs: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        found = find_run_dirs(p)
        if not found and skipped is not None:
            skipped.append(Path(p))
        for d in found:
            if d.resolve() not in seen:
                seen.add(d.resolve())
                dirs.append(d)
    runs = [load_run(d) for d in dirs]
    if not runs:
        raise DataError(f"no run directory among {[str(p) for p in paths]}")
    owner: dict[tuple, Run] = {}
    tasks_of: dict[tuple[str, str], Run] = {}
    for r in runs:
        key = (r.stream, r.model, r.label, r.seed)
        if key in owner:
            raise DataError(
                f"{owner[key].path} and {r.path} are the same run (stream={r.stream}, model={r.model}, "
                f"strategy={r.label}, seed={r.seed}); pass only one of them"
            )
        owner[key] = r
        first = tasks_of.setdefault(r.setting, r)
        if first.tasks != r.tasks:
            raise DataError(
                f"{r.path / RESULTS}: field 'tasks' {list(r.tasks)} differs from {list(first.tasks)} in "
                f"{first.path / RESULTS}, though both are stream {r.stream!r} on {r.model}"
            )
    return runs


# ---------------------------------------------------------------------------------------------------
# Grouping and the tidy frame


def _strategy_order(label: str) -> tuple:
    # The LoRA baseline first, then everything else alphabetically.
    return (not label.startswith("lora"), label)


def by_setting(runs: Iterable[Run]) -> dict[tuple[str, str], list[Run]]:
    """Runs grouped by (stream, model), in first-seen order."""
    out: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        out.setdefault(r.setting, []).append(r)
    return out


def by_strategy(runs: Iterable[Run]) -> dict[str, list[Run]]:
    """Runs grouped by strategy label (LoRA first), each list sorted by seed."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[r.label].append(r)
    return {k: sorted(groups[k], key=lambda r: r.seed) for k in sorted(groups, key=_strategy_order)}


def scored_groups(runs: Iterable[Run], score: str) -> dict[str, list[Run]]:
    """`by_strategy`, keeping the strategies whose runs have a `score` matrix; ValueError when none has."""
    groups = {lab: g for lab, g in by_strategy(runs).items() if score in g[0].matrices}
    if not groups:
        raise ValueError(f"no run has a {score!r} matrix")
    return groups


def tidy(runs: Iterable[Run]) -> pd.DataFrame:
    """One row per (run, score, row of R, task) that exists: missing experiences are absent, not zero."""
    records = []
    for r in runs:
        for score, R in r.matrices.items():
            for after in range(R.shape[0]):
                for j, task in enumerate(r.tasks):
                    records.append(
                        {
                            "run": r.name,
                            "path": str(r.path),
                            "stream": r.stream,
                            "model": r.model,
                            "strategy": r.label,
                            "adapter": r.adapter,
                            "variant": r.variant,
                            "cl": r.cl,
                            "seed": r.seed,
                            "score": score,
                            "after": after,
                            "experience": "before" if after == 0 else r.experiences[after - 1],
                            "task": task,
                            "value": float(R[after, j]),
                        }
                    )
    return pd.DataFrame.from_records(records)


def mean_matrix(runs: Sequence[Run], score: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seed-average of one score's matrix over `runs` of one strategy: (mean, std, n) where mean/std
    are (T+1) x T with NaN rows for experiences no seed reached (never zero), std is the sample std
    (NaN below two seeds) and n[i] counts the seeds that reached row i."""
    T = runs[0].T
    stack = np.full((len(runs), T + 1, T), np.nan)
    for s, r in enumerate(runs):
        R = r.matrices[score]
        stack[s, : R.shape[0]] = R
    n = (~np.isnan(stack[:, :, 0])).sum(axis=0)
    mean = np.full((T + 1, T), np.nan)
    std = np.full((T + 1, T), np.nan)
    for i in range(T + 1):
        rows = stack[~np.isnan(stack[:, i, 0]), i]
        if len(rows):
            mean[i] = rows.mean(axis=0)
        if len(rows) > 1:
            std[i] = rows.std(axis=0, ddof=1)
    return mean, std, n
