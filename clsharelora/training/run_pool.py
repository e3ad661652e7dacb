"""Run several `clsharelora run` processes at once with the CPUs split between them: the one pool behind
`clsharelora study --jobs N` and `clsharelora compare --jobs N`.

Each run is its own process (its own torch, its own OpenMP pool, its own run-directory lock), so runs never
share state; the parent only sets each child's thread count (OMP/MKL/OpenBLAS = usable CPUs // jobs, so the
children never oversubscribe the CPU: on 2 cores an oversubscribed step was measured 10-20x slower) and
collects exit codes and wall times. A child resumes when its run directory already holds a run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import UserError
from ..hardware import usable_cpus

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class RunJob:
    key: str          # how progress and errors name it
    config: Path      # a YAML run config (`clsharelora run --config`)
    run_dir: Path     # where the config's `out` points: resumed when it already holds a run
    log: Path         # the child's stdout and stderr, appended
    shared_row0: Path | None = None   # `run --shared-row0`: the folder where the runs share row 0


def split_cpus(jobs: int) -> tuple[int, int]:
    """(jobs actually run at once, threads per job): never more jobs than usable CPUs."""
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise UserError(f"--jobs must be a positive integer, got {jobs!r}")
    cpus = usable_cpus()
    jobs = min(jobs, cpus)
    return jobs, max(1, cpus // jobs)


def run_one(job: RunJob, threads: int, resume: bool) -> tuple[int, float]:
    """(exit code, wall seconds) of one `clsharelora run --config` child with `threads` threads."""
    env = {**os.environ, **{v: str(threads) for v in THREAD_VARS}}
    command = [sys.executable, "-m", "clsharelora.cli", "run", "--config", str(job.config), "--no-progress"]
    if resume:
        command.append("--resume")
    if job.shared_row0 is not None:
        command += ["--shared-row0", str(job.shared_row0)]
    job.log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(job.log, "a") as log:
        log.write(f"$ {' '.join(command)}  ({threads} thread(s))\n")
        log.flush()
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                              stdin=subprocess.DEVNULL).returncode
    return code, round(time.perf_counter() - start, 1)


def run_pool(todo: Sequence[RunJob], *, jobs: int, threads: int, resume: Callable[[RunJob], bool],
             on_start: Callable[[list[str]], None] = lambda running: None,
             on_done: Callable[[RunJob, int, float], None] = lambda job, code, seconds: None,
             on_tick: Callable[[], None] = lambda: None, tick: float = 5.0) -> dict[str, int]:
    """Run every job, `jobs` at a time; `on_start(running keys)` whenever the running set changes,
    `on_done(job, exit code, seconds)` after each finishes and `on_tick()` every `tick` seconds while they
    run (all in the caller's thread: a progress bar that follows the runs' own files). Returns exit codes."""
    codes: dict[str, int] = {}
    running: list[str] = [j.key for j in todo[:jobs]]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_one, job, threads, resume(job)): job for job in todo}
        on_start(list(running))
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=tick, return_when=FIRST_COMPLETED)
            on_tick()
            for future in sorted(finished, key=lambda f: todo.index(futures[f])):
                job = futures[future]
                code, seconds = future.result()
                codes[job.key] = code
                running = [k for k in running if k != job.key]
                running += [j.key for j in todo if j.key not in codes and j.key not in running][: jobs - len(running)]
                on_done(job, code, seconds)
                on_start(list(running))
    return codes
