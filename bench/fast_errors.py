"""Part "errors": how long a user waits for a mistake to be reported (issue 25 item 3), and for `list -v`.

Each command runs in a fresh `python -m clsharelora.cli` process (imports included: that is the wait), timed
from start to exit; the median of `reps` runs is compared with the target (< 2 s on a 2-core machine).
A config, stream, strategy-name or strategy-option error is found before torch is imported; `list -v` still
imports the plug-ins (and torch with them) to show what each one declares and which fail to import.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .timing import PROJECT_ROOT

TARGET_S = 2.0


def commands(scratch: Path) -> dict[str, tuple[list[str], int]]:
    """name -> (CLI arguments, the exit code they must give)."""
    demo = ["--stream", str(PROJECT_ROOT / "streams" / "demo.yaml")]
    config = scratch / "bad-config.yaml"
    config.write_text("trian: {lr: 1.0e-4}\n")
    stream = scratch / "bad-stream.yaml"
    stream.write_text("name: s\nexperiences:\n  - train: {benchmark: gsm9k}\n    eval: {task: gsm8k}\n")
    return {"config error (unknown key)": (["run", *demo, "--config", str(config)], 2),
            "stream error (unknown benchmark)": (["run", "--stream", str(stream)], 2),
            "option error (unknown strategy)": (["run", *demo, "--strategy", "sharelor"], 2),
            "option error (unknown strategy option)": (["run", *demo, "--set", "adapter.rr=4"], 2),
            "list -v": (["list", "-v"], 0)}


#: the rows that import torch (tens of seconds on a loaded 2-core machine): left out of --quick, the CI smoke
IMPORTING = ("list -v",)


def run(*, reps: int, quick: bool, log) -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (args, expected) in commands(Path(tmp)).items():
            if quick and name in IMPORTING:
                continue
            seconds = []
            for _ in range(reps):
                t0 = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "clsharelora.cli", *args], capture_output=True,
                                      text=True, cwd=tmp, timeout=600)
                seconds.append(time.perf_counter() - t0)
                if done.returncode != expected:
                    raise RuntimeError(f"{name}: exit {done.returncode}, expected {expected}: {done.stderr[-500:]}")
            median = statistics.median(seconds)
            log(f"errors: {name}: {median:.2f} s")
            rows.append({"command": name, "args": args, "seconds": seconds, "median_s": median,
                         "target_s": TARGET_S, "target_met": median < TARGET_S})
    return {"reps": reps, "target_s": TARGET_S, "rows": rows}


def table(res: dict) -> list[str]:
    lines = [f"Time to an error (fresh `python -m clsharelora.cli` process, median of {res['reps']} runs)"]
    for r in res["rows"]:
        lines.append(f"  {r['command']:40s} {r['median_s']:6.2f} s  target < {r['target_s']:.0f} s: "
                     f"{'met' if r['target_met'] else 'MISSED'}")
    return lines
