"""Run a study: every cell an ordinary `clsharelora run` in its own process, N at a time with the CPU split
between them, resumable, with one progress bar for the whole grid and a status table on disk.

Study directory:
  study.yaml            the study file as given (a re-run must name the same study)
  grid.json             every cell: label, seed, order, its config and run directory, and the orders
  streams/orderK.yaml   the base stream in order K
  configs/<label>/seedS-orderK.yaml, runs/<label>/seedS-orderK/, logs/<label>/seedS-orderK.log
                        (<label>: the strategy label made path-safe, e.g. sharelora-share_a)
  status.tsv            cell, state, seconds: rewritten after every cell
  timing.json           one entry per `clsharelora study` session: start, end, wall seconds, jobs, threads,
                        CPUs and CPU model (the study's wall time is their sum; a resumed study has several)
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from .. import atomic
from ..errors import UserError
from ..hardware import read_cpuinfo, usable_cpus
from ..pathsafe import check_inside
from ..training.run_pool import RunJob, run_pool, split_cpus
from ..training.rundir import holds_run
from .grid import Cell, Study, dump, label_dir, load_study


def cell_paths(root: Path, cell: Cell) -> dict[str, Path]:
    leaf, folder = f"seed{cell.seed}-order{cell.order}", label_dir(cell.strategy.label)
    return {"config": root / "configs" / folder / f"{leaf}.yaml",
            "run": root / "runs" / folder / leaf,
            "log": root / "logs" / folder / f"{leaf}.log"}


def cell_state(run_dir: Path) -> str:
    """done (results.json complete), partial (a run holds its identity: resume it) or todo (nothing, or a
    start stopped before its identity.json: a lock and temporaries only)."""
    results = run_dir / "results.json"
    if results.is_file():
        try:
            if json.loads(results.read_text()).get("complete"):
                return "done"
        except (OSError, json.JSONDecodeError):
            pass
    return "partial" if holds_run(run_dir) else "todo"


def _prepare_dir(study: Study, root: Path, resume: bool) -> None:
    """Refuse a directory that holds something else; write the grid (idempotent for the same study)."""
    given = study.source.read_text()
    saved = root / "study.yaml"
    if root.exists() and any(root.iterdir()):
        if not saved.is_file():
            raise UserError(f"study dir {root} is not empty and holds no study; choose another --out")
        if saved.read_text() != given:
            raise UserError(f"study dir {root} holds a different study ({saved} differs from {study.source}); "
                            "choose another --out")
        if not resume:
            raise UserError(f"study dir {root} already holds this study: add --resume to continue it")
    root.mkdir(parents=True, exist_ok=True)
    atomic.write_text(saved, given)
    cells = []
    for k in range(len(study.orders)):
        atomic.write_text(root / "streams" / f"order{k}.yaml", dump(study.stream_for(k)))
    for cell in study.cells:
        paths = cell_paths(root, cell)
        config = study.config_for(cell, (root / "streams" / f"order{cell.order}.yaml").resolve(), paths["run"].resolve())
        atomic.write_text(paths["config"], dump(config))
        cells.append({"key": cell.key, "label": cell.strategy.label, "seed": cell.seed, "order": cell.order,
                      "config": str(paths["config"].relative_to(root)), "run": str(paths["run"].relative_to(root))})
    atomic.write_json(root / "grid.json", {"name": study.name, "description": study.description,
                                           "orders": [list(o) for o in study.orders],
                                           "strategies": [s.label for s in study.strategies],
                                           "seeds": list(study.seeds), "cells": cells})


def recorded_seconds(root: Path) -> dict[str, float]:
    """Each cell's run time from an earlier session's status.tsv, so a resumed session that does not re-run
    a cell keeps its time (status.tsv is rewritten whole; without this a no-op resume blanked every time)."""
    try:
        lines = (root / "status.tsv").read_text().splitlines()[1:]
    except OSError:
        return {}
    out = {}
    for line in lines:
        parts = line.split("\t")
        if len(parts) == 3 and parts[2]:
            try:
                out[parts[0]] = float(parts[2])
            except ValueError:
                continue
    return out


def _write_status(root: Path, study: Study, seconds: dict[str, float], failed: dict[str, str]) -> None:
    lines = ["cell\tstate\tseconds"]
    for cell in study.cells:
        state = failed.get(cell.key) or cell_state(cell_paths(root, cell)["run"])
        lines.append(f"{cell.key}\t{state}\t{seconds.get(cell.key, '')}")
    atomic.write_text(root / "status.tsv", "\n".join(lines) + "\n")


class SessionLog:
    """timing.json: this session's entry is written when it starts and rewritten after every cell, so a
    killed study keeps the time up to its last finished cell."""

    def __init__(self, root: Path, session: dict):
        self.path = root / "timing.json"
        try:
            self.earlier = list(json.loads(self.path.read_text())["sessions"])
        except (OSError, ValueError, KeyError, TypeError):
            self.earlier = []
        self.session = session
        self.start = time.perf_counter()
        self.update(0)

    def update(self, cells_run: int, finished: bool = False) -> None:
        now = {**self.session, "wall_s": round(time.perf_counter() - self.start, 1), "cells_run": cells_run,
               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z") if finished else None}
        sessions = [*self.earlier, now]
        atomic.write_json(self.path, {"sessions": sessions,
                                      "wall_s": round(sum(float(s.get("wall_s") or 0.0) for s in sessions), 1)})


def cell_job(root: Path, cell: Cell) -> RunJob:
    """The cell's run; its row 0 shared with the other cells of the same seed (training/shared_row0.py)."""
    paths = cell_paths(root, cell)
    return RunJob(cell.key, paths["config"], paths["run"], paths["log"], shared_row0=(root / ".row0").resolve())


def check_plan(study: Study, root: Path) -> None:
    """Before anything is written (load_study has checked every cell's config): each strategy's options and
    its adapter on the model's meta-device copy, as `run` checks them; --out can hold the study, and every
    cell's files stay under it (a symbolic link inside a resumed study directory could point elsewhere)."""
    from ..config import from_dict
    from ..training.preflight import check_strategies
    from ..training.rundir import check_location

    for cell in study.cells[: len(study.strategies)]:   # one cell per strategy: the others differ in seed/order
        check_strategies(from_dict(study.config_for(cell, Path("unused"), Path("unused"))))
    check_location(root)
    for shared in ("streams", ".row0"):
        check_inside(root / shared, root, f"the study's {shared} folder")
    for cell in study.cells:
        for what, where in cell_paths(root, cell).items():
            check_inside(where, root, f"cell {cell.key}: {what} path")


def run_study(path: str | Path, out: str | Path, *, jobs: int = 1, resume: bool = False, progress: bool = True) -> int:
    """Run every cell not yet done; returns 0 when all cells are done, 1 when some failed."""
    jobs, threads = split_cpus(jobs)     # validates --jobs before anything is written
    study = load_study(path)
    root = Path(out)
    check_plan(study, root)
    _prepare_dir(study, root, resume)
    lock = open(root / ".study.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UserError(f"study dir {root} is in use by another `clsharelora study` process") from None
    lock.write(str(os.getpid()))
    lock.flush()
    cpus = usable_cpus()
    todo = [c for c in study.cells if cell_state(cell_paths(root, c)["run"]) != "done"]
    seconds = {key: s for key, s in recorded_seconds(root).items() if key not in {c.key for c in todo}}
    ran = 0
    failed: dict[str, str] = {}
    bar = tqdm(total=len(study.cells), initial=len(study.cells) - len(todo), desc=f"study {study.name}",
               unit="cell", disable=not progress, dynamic_ncols=True)
    print(f"study {study.name}: {len(study.cells)} cells ({len(todo)} to run), {jobs} at a time x {threads} "
          f"thread(s) of {cpus} usable CPU(s) -> {root}", file=sys.stderr, flush=True)
    timing = SessionLog(root, {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cells_to_run": len(todo),
                            "jobs": jobs, "threads_per_cell": threads, "cpus": cpus,
                            "cpu": read_cpuinfo()[0] or "unknown"})

    def done(job: RunJob, code: int, took: float) -> None:
        nonlocal ran
        seconds[job.key] = took
        ran += 1
        if code != 0 or cell_state(job.run_dir) != "done":
            failed[job.key] = f"failed (exit {code}, see {job.log})"
        _write_status(root, study, seconds, failed)
        timing.update(ran)
        bar.update(1)

    try:
        run_pool([cell_job(root, c) for c in todo], jobs=jobs, threads=threads,
                 resume=lambda job: cell_state(job.run_dir) == "partial",
                 on_start=lambda running: bar.set_postfix_str(", ".join(sorted(running))[:80]), on_done=done)
    finally:
        bar.close()
        _write_status(root, study, seconds, failed)
        timing.update(ran, finished=True)
        lock.close()
    for key, why in failed.items():
        print(f"error: cell {key} {why}", file=sys.stderr)
    return 1 if failed else 0
