"""`clsharelora study` end to end on tiny-llama: the grid on disk, --jobs 2 equal to --jobs 1, a killed
study resumed equal to an uninterrupted one, bad study files rejected before anything is written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clsharelora.cli import main
from clsharelora.paths import PROJECT_ROOT
from clsharelora.study.grid import load_study

STREAM = """name: tiny
experiences:
  - name: gsm8k
    train: {benchmark: gsm8k, split: train, n: 4, max_steps: 2, max_length: 256}
    eval: {task: gsm8k, n: 2, shots: 0, max_new_tokens: 4}
  - name: mmlu
    train: {benchmark: mmlu, split: dev, n: 4, max_steps: 2, max_length: 256}
    eval: {task: mmlu, n: 3, shots: 0}
"""
BASE = """model: tiny-llama
stream: {stream}
adapter: {{name: sharelora, variant: share_a, r: 2}}
train: {{batch_size: 2, max_length: 256, checkpoint_every: 1}}
eval: {{batch_size: 2}}
loggers: ""
"""


def write_study(tmp_path: Path, body: str) -> Path:
    (tmp_path / "stream.yaml").write_text(STREAM)
    (tmp_path / "base.yaml").write_text(BASE.format(stream=tmp_path / "stream.yaml"))
    (tmp_path / "study.yaml").write_text(f"name: tiny\nbase: {tmp_path / 'base.yaml'}\n" + body)
    return tmp_path / "study.yaml"


def matrices(root: Path) -> dict:
    grid = json.loads((root / "grid.json").read_text())
    return {c["key"]: json.loads((root / c["run"] / "results.json").read_text())["matrices"] for c in grid["cells"]}


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}


def test_orders_are_seeded_permutations_starting_with_the_stream_order(tmp_path):
    path = write_study(tmp_path, "strategies: [lora, 'sharelora:share_ab', {label: lora-r4, adapter: {name: lora, r: 4}}]\n"
                                 "seeds: [0, 1]\norders: {permutations: 2, seed: 3}\n")
    study = load_study(path)
    assert study.orders == (("gsm8k", "mmlu"), ("mmlu", "gsm8k"))
    assert len(study.cells) == 3 * 2 * 2
    assert [s.adapter for s in study.strategies] == [
        {"name": "lora", "r": 2}, {"name": "sharelora", "variant": "share_ab", "r": 2}, {"name": "lora", "r": 4}]
    assert [e["name"] for e in study.stream_for(1)["experiences"]] == ["mmlu", "gsm8k"]


def test_orders_can_be_every_cyclic_rotation(tmp_path):
    """Three or more orders, each task once in each position (before: rotations was an unknown spec)."""
    (tmp_path / "stream3.yaml").write_text(STREAM + """  - name: code
    train: {benchmark: codealpaca, split: train, n: 4, max_steps: 2, max_length: 256}
    eval: {task: humaneval, n: 2, generate: false}
""")
    (tmp_path / "base.yaml").write_text(BASE.format(stream=tmp_path / "stream3.yaml"))
    (tmp_path / "study.yaml").write_text(f"name: tiny\nbase: {tmp_path / 'base.yaml'}\nstrategies: [lora]\n"
                                         "seeds: [0]\norders: {rotations: all}\n")
    study = load_study(tmp_path / "study.yaml")
    assert study.orders == (("gsm8k", "mmlu", "code"), ("mmlu", "code", "gsm8k"), ("code", "gsm8k", "mmlu"))
    assert len(study.cells) == 3


def test_a_strategy_mapping_keeps_the_base_options_its_adapter_knows(tmp_path):
    """A matched-LoRA control must match at the base's rank: {name: lora, match: share_a} keeps r."""
    path = write_study(tmp_path, "strategies: [{label: matched, adapter: {name: lora, match: share_a}}]\nseeds: [0]\n")
    assert load_study(path).strategies[0].adapter == {"name": "lora", "r": 2, "match": "share_a"}


@pytest.mark.parametrize("body, message", [
    ("strategies: [lora]\nseeds: []\n", "'seeds' must be a non-empty list"),
    ("strategies: [lora, lora]\nseeds: [0]\n", "strategy labels must differ"),
    ("strategies: [lora]\nseeds: [0]\norders: {permutations: 3}\n", "permutations must be an integer in 1..2"),
    ("strategies: [lora]\nseeds: [0]\norders: {explicit: [[gsm8k, code]]}\n", "is not a permutation"),
    ("strategies: [nosuch]\nseeds: [0]\n", "unknown adapter strategy 'nosuch'"),
    ("strategies: [lora]\nseeds: [0]\nsedes: [1]\n", "unknown key 'sedes'"),
    ("strategies: [lora]\nseeds: [0]\norders: {rotations: 2}\n", "rotations must be 'all'"),
])
def test_bad_study_files_are_one_error_and_write_nothing(tmp_path, capsys, body, message):
    path = write_study(tmp_path, body)
    assert main(["study", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err, err
    assert not (tmp_path / "out").exists()


def test_jobs_2_equals_jobs_1_and_a_killed_study_resumes_to_the_same_results(tmp_path):
    path = write_study(tmp_path, "strategies: [lora, 'sharelora:share_a']\nseeds: [0]\n")
    cli = [sys.executable, "-m", "clsharelora.cli", "study", "--config", str(path), "--no-progress"]
    done = subprocess.run(cli + ["--out", str(tmp_path / "j2"), "--jobs", "2"], env=env(), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    status = (tmp_path / "j2" / "status.tsv").read_text()
    assert status.count("\tdone\t") == 2, status

    # --jobs 1, killed (with its cell process) once the first cell is done and the second has a checkpoint
    proc = subprocess.Popen(cli + ["--out", str(tmp_path / "j1")], env=env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = tmp_path / "j1" / "runs" / "sharelora-share_a" / "seed0-order0" / "checkpoints"
    deadline = time.time() + 600
    while time.time() < deadline and not (second.is_dir() and any(second.iterdir())):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "j1" / "runs" / "lora" / "seed0-order0" / "results.json").is_file()
    refused = subprocess.run(cli + ["--out", str(tmp_path / "j1")], env=env(), capture_output=True, text=True)
    assert refused.returncode == 2 and "add --resume" in refused.stderr
    resumed = subprocess.run(cli + ["--out", str(tmp_path / "j1"), "--resume"], env=env(), capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    a, b = matrices(tmp_path / "j2"), matrices(tmp_path / "j1")
    assert a.keys() == b.keys()
    for key in a:  # 1 vs 2 threads per cell: float reductions may differ in the last bits only
        for score in a[key]:
            np.testing.assert_allclose(np.array(a[key][score]), np.array(b[key][score]), rtol=1e-4, atol=1e-6)
    assert main(["report", str(tmp_path / "j1"), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Answer" in md and "Evaluation noise against training noise" in md
    assert (tmp_path / "rep" / "item_level.csv").is_file()
    timing = json.loads((tmp_path / "j1" / "timing.json").read_text())
    # the killed session (kept up to its finished cell) and the resumed one; the refused call starts none
    assert len(timing["sessions"]) == 2 and timing["wall_s"] > 0
    assert timing["sessions"][0]["finished"] is None and timing["sessions"][1]["finished"]
    assert "Wall time:" in md and "session(s)" in md
    # --doc: one Markdown page elsewhere, figures linked relative to it, the command at its top
    doc = tmp_path / "docs" / "results" / "study.md"
    assert main(["report", str(tmp_path / "j1"), "--out", str(tmp_path / "docs" / "results" / "study"),
                 "--doc", str(doc), "--command", "make study"]) == 0
    text = doc.read_text()
    assert text.splitlines()[2].startswith("Generated by `make study`")
    assert "- gsm8k: trains on gsm8k train (n = 4, 2 steps); scored on gsm8k (n = 2) by greedy generation, up to 4" in text
    assert "- mmlu: trains on mmlu dev (n = 4, 2 steps); scored on mmlu (n = 3) by 0-shot letter log-likelihood" in text
    assert "](study/figures/task_curves_nll.png)" in text and (doc.parent / "study" / "figures" / "task_curves_nll.png").is_file()
    assert not (doc.parent / "study" / "report.html").exists()
    for name in ("grid.json", "status.tsv", "timing.json"):   # the study's record travels with its summary
        assert (doc.parent / "study" / name).read_bytes() == (tmp_path / "j1" / name).read_bytes()


def test_a_resume_with_nothing_to_run_keeps_each_cells_time(tmp_path):
    """status.tsv is rewritten whole each session: a later --resume that runs no cell used to blank every
    cell's seconds (the committed cpu-study status.tsv had an empty time for all 30 cells)."""
    from clsharelora.study.runner import _prepare_dir, cell_paths, recorded_seconds, run_study

    path = write_study(tmp_path, "strategies: [lora, 'sharelora:share_a']\nseeds: [0]\n")
    root = tmp_path / "out"
    study = load_study(path)
    _prepare_dir(study, root, resume=False)
    for cell in study.cells:   # the runner's bookkeeping only reads results.json's "complete"
        run = cell_paths(root, cell)["run"]
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({"complete": True}))
    earlier = {c.key: 10.5 + i for i, c in enumerate(study.cells)}
    (root / "status.tsv").write_text("cell\tstate\tseconds\n" + "".join(f"{k}\tdone\t{s}\n" for k, s in earlier.items()))
    assert run_study(path, root, resume=True, progress=False) == 0
    assert recorded_seconds(root) == earlier
