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
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

from .. import atomic
from ..hardware import read_cpuinfo
from ..errors import UserError
from .grid import Cell, Study, dump, label_dir, load_study

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def available_cpus() -> int:
    """CPUs this process may use (its affinity mask), not the machine's core count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cell_paths(root: Path, cell: Cell) -> dict[str, Path]:
    leaf, folder = f"seed{cell.seed}-order{cell.order}", label_dir(cell.strategy.label)
    return {"config": root / "configs" / folder / f"{leaf}.yaml",
            "run": root / "runs" / folder / leaf,
            "log": root / "logs" / folder / f"{leaf}.log"}


def cell_state(run_dir: Path) -> str:
    """done (results.json complete), partial (a run was started: resume it) or todo."""
    results = run_dir / "results.json"
    if results.is_file():
        try:
            if json.loads(results.read_text()).get("complete"):
                return "done"
        except (OSError, json.JSONDecodeError):
            pass
    return "partial" if run_dir.is_dir() and any(run_dir.iterdir()) else "todo"


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


def _run_cell(root: Path, cell: Cell, threads: int) -> tuple[int, float]:
    paths = cell_paths(root, cell)
    resume = cell_state(paths["run"]) == "partial"
    env = {**os.environ, **{v: str(threads) for v in THREAD_VARS}}
    command = [sys.executable, "-m", "clsharelora.cli", "run", "--config", str(paths["config"]), "--no-progress"]
    if resume:
        command.append("--resume")
    paths["log"].parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(paths["log"], "a") as log:
        log.write(f"$ {' '.join(command)}  ({threads} thread(s))\n")
        log.flush()
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL).returncode
    return code, round(time.perf_counter() - start, 1)


def run_study(path: str | Path, out: str | Path, *, jobs: int = 1, resume: bool = False, progress: bool = True) -> int:
    """Run every cell not yet done; returns 0 when all cells are done, 1 when some failed."""
    if not isinstance(jobs, int) or jobs < 1:
        raise UserError(f"--jobs must be a positive integer, got {jobs!r}")
    study = load_study(path)
    root = Path(out)
    _prepare_dir(study, root, resume)
    lock = open(root / ".study.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UserError(f"study dir {root} is in use by another `clsharelora study` process") from None
    lock.write(str(os.getpid()))
    lock.flush()
    cpus = available_cpus()
    jobs = min(jobs, cpus)   # more cells than CPUs would oversubscribe: each step 10-20x slower
    threads = max(1, cpus // jobs)
    todo = [c for c in study.cells if cell_state(cell_paths(root, c)["run"]) != "done"]
    seconds: dict[str, float] = {}
    failed: dict[str, str] = {}
    bar = tqdm(total=len(study.cells), initial=len(study.cells) - len(todo), desc=f"study {study.name}",
               unit="cell", disable=not progress, dynamic_ncols=True)
    print(f"study {study.name}: {len(study.cells)} cells ({len(todo)} to run), {jobs} at a time x {threads} "
          f"thread(s) of {cpus} CPU(s) -> {root}", file=sys.stderr, flush=True)
    running: set[str] = set()
    timing = SessionLog(root, {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cells_to_run": len(todo),
                            "jobs": jobs, "threads_per_cell": threads, "cpus": cpus,
                            "cpu": read_cpuinfo()[0] or "unknown"})
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {}
            for cell in todo:
                futures[pool.submit(_run_cell, root, cell, threads)] = cell
            running.update(c.key for c in todo[:jobs])
            bar.set_postfix_str(", ".join(sorted(running))[:80])
            for future in as_completed(futures):
                cell = futures[future]
                code, took = future.result()
                seconds[cell.key] = took
                if code != 0 or cell_state(cell_paths(root, cell)["run"]) != "done":
                    failed[cell.key] = f"failed (exit {code}, see {cell_paths(root, cell)['log']})"
                running.discard(cell.key)
                started = [c.key for c in todo if c.key not in seconds][: max(0, jobs - len(running))]
                running.update(started)
                _write_status(root, study, seconds, failed)
                timing.update(len(seconds))
                bar.update(1)
                bar.set_postfix_str(", ".join(sorted(running))[:80])
    finally:
        bar.close()
        _write_status(root, study, seconds, failed)
        timing.update(len(seconds), finished=True)
        lock.close()
    for key, why in failed.items():
        print(f"error: cell {key} {why}", file=sys.stderr)
    return 1 if failed else 0
