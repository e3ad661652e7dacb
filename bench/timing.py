"""Timing and memory measures shared by every benchmark: median/spread after warm-up, interleaved rounds,
peak memory, and a fresh-subprocess runner.

Why interleaved rounds: on a shared machine the available CPU drifts by tens of percent within a minute, so
timing configuration A for a minute and then B for a minute compares the machine, not A and B. Round-robin
(A B C, A B C, ...) exposes every configuration to the same drift, and per-round ratios A_i / B_i cancel it.

Peak memory: on CUDA `torch.cuda.max_memory_allocated` (exact, allocator-level); on CPU the growth of the
process' resident set (Linux VmHWM after resetting it through /proc/self/clear_refs, minus VmRSS at the
reset), measured in a fresh subprocess per configuration so allocations of earlier configurations cannot
hide or inflate it. tracemalloc does not see torch's allocations, so it is not used.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default 'linear' method) of already sorted values."""
    if not sorted_values:
        raise ValueError("quantile of no values")
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """median, IQR (q1, q3), min, max, n and the raw samples, for the JSON and the printed spread."""
    if not samples:
        raise ValueError("summarize needs at least one sample")
    s = sorted(float(x) for x in samples)
    return {"median": statistics.median(s), "q1": quantile(s, 0.25), "q3": quantile(s, 0.75),
            "min": s[0], "max": s[-1], "n": len(s), "samples": [float(x) for x in samples]}


def fmt_stats(st: Mapping[str, Any], unit: str = "s", digits: int = 3) -> str:
    """'1.234 s [1.200-1.260]' (median and IQR); the IQR collapses to min-max with fewer than 4 samples."""
    lo, hi = (st["q1"], st["q3"]) if st["n"] >= 4 else (st["min"], st["max"])
    return f"{st['median']:.{digits}f} {unit} [{lo:.{digits}f}-{hi:.{digits}f}]"


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels so a wall-clock reading covers the work (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device | str) -> tuple[float, Any]:
    """(seconds, result) of one call, synchronised on both ends."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def interleaved(fns: Mapping[str, Callable[[], Any]], *, warmup: int, reps: int,
                device: torch.device | str) -> dict[str, list[float]]:
    """Run every fn `warmup` times (discarded), then `reps` rounds of one call each, round-robin; round i
    starts at the i-th fn (rotated order), so no configuration always runs first after a slow neighbour.

    Returns name -> per-round seconds; index i of every list belongs to the same round, so paired ratios
    are meaningful.
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    for _ in range(warmup):
        for fn in fns.values():
            timed(fn, device)
    out: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for i in range(reps):
        for name in names[i % len(names):] + names[: i % len(names)]:
            out[name].append(timed(fns[name], device)[0])
    return out


def paired_ratio(samples: Sequence[float], reference: Sequence[float]) -> dict[str, Any]:
    """Summary of the per-round ratios samples[i] / reference[i] (drift common to a round cancels)."""
    if len(samples) != len(reference):
        raise ValueError("paired samples differ in length")
    return summarize([a / b for a, b in zip(samples, reference)])


# ----------------------------------------------------------------------------------------- memory
def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory of a block, above what was allocated when it started.

    CUDA: max_memory_allocated after reset_peak_memory_stats (kind "cuda_max_memory_allocated").
    CPU:  VmHWM - VmRSS after writing "5" to /proc/self/clear_refs, which resets VmHWM to the current RSS
          (kind "cpu_rss_growth"); where that reset is impossible, the lifetime ru_maxrss minus the RSS at
          the start (kind "cpu_rss_growth_lifetime", an upper bound).
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.kind = ""
        self.start_bytes = 0
        self.peak_bytes = 0

    def __enter__(self) -> "PeakMemory":
        import gc

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
            self.kind = "cuda_max_memory_allocated"
            return self
        rss = _proc_status_kib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.kind = "cpu_rss_growth"
        except OSError:
            self.kind = "cpu_rss_growth_lifetime"
        self.start_bytes = (rss or 0) * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.kind == "cpu_rss_growth":
            peak = (_proc_status_kib("VmHWM") or 0) * 1024
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak_bytes = max(0, peak - self.start_bytes)


# ------------------------------------------------------------------------------ fresh subprocesses
def run_isolated(target: str, kwargs: Mapping[str, Any], *, timeout: float = 1800) -> dict[str, Any]:
    """Call `module:function(**kwargs)` in a fresh Python process and return its JSON-able result.

    Used for every peak-memory figure, so each configuration starts from an empty process.
    """
    cmd = [sys.executable, "-m", "clsharelora.bench.timing", target, json.dumps(dict(kwargs))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT),
                                                                     os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT, env=env)
    marker = "BENCH_RESULT "
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(marker):
            return json.loads(line[len(marker):])
    tail = (proc.stderr or proc.stdout)[-2000:]
    raise RuntimeError(f"benchmark subprocess {target} failed (exit {proc.returncode}):\n{tail}")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence third-party warnings and progress chatter inside a measurement."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _child_main(argv: list[str]) -> int:
    target, raw = argv
    module, _, name = target.partition(":")
    fn = getattr(importlib.import_module(module), name)
    with quiet():
        result = fn(**json.loads(raw))
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))

