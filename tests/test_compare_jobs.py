"""`compare --jobs 2`: every strategy in its own process (the pool `study --jobs` uses), the same results as
one after the other in one process, logs kept out of the way of `report OUT/*`, a bad --jobs refused early."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from clsharelora.cli import main
from clsharelora.paths import PROJECT_ROOT
from test_study_runner import STREAM   # the same tiny two-task stream

CONFIG = """model: tiny-llama
stream: {stream}
adapter: {{name: sharelora, variant: share_a, r: 2}}
train: {{batch_size: 2, max_length: 256}}
eval: {{batch_size: 2}}
loggers: ""
"""


def matrices(out):
    return {d.name: json.loads((d / "results.json").read_text())["matrices"] for d in sorted(out.iterdir())
            if not d.name.startswith(".")}


def test_jobs_2_equals_jobs_1_and_keeps_its_logs_hidden(tmp_path):
    (tmp_path / "stream.yaml").write_text(STREAM)
    (tmp_path / "c.yaml").write_text(CONFIG.format(stream=tmp_path / "stream.yaml"))
    cli = [sys.executable, "-m", "clsharelora.cli", "compare", "--config", str(tmp_path / "c.yaml"),
           "--strategies", "lora,sharelora:share_ab+replay", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    two = subprocess.run(cli + ["--out", str(tmp_path / "j2"), "--jobs", "2"], env=env, capture_output=True,
                         text=True, timeout=900)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("results: ") == 2
    one = subprocess.run(cli + ["--out", str(tmp_path / "j1")], env=env, capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr
    a, b = matrices(tmp_path / "j2"), matrices(tmp_path / "j1")
    assert sorted(a) == ["lora", "sharelora-share_ab-replay"] and a.keys() == b.keys()
    for run in a:
        for score in a[run]:
            np.testing.assert_allclose(np.array(a[run][score]), np.array(b[run][score]), rtol=1e-4, atol=1e-6)
    side = tmp_path / "j2" / ".compare"
    assert {p.name for p in side.iterdir()} == {"lora.yaml", "lora.log", "sharelora-share_ab-replay.yaml",
                                                "sharelora-share_ab-replay.log", "row0"}
    # row 0 was scored once: each task by one of the two runs, the other run read it
    sources = [json.loads((tmp_path / "j2" / r / "results.json").read_text()).get("shared_row0", {})
               for r in ("lora", "sharelora-share_ab-replay")]
    assert sorted(t for s in sources for t in s) == ["gsm8k", "mmlu"]
    # run again with --resume: both runs are complete, so each child resumes and changes nothing
    again = subprocess.run(cli + ["--out", str(tmp_path / "j2"), "--jobs", "2", "--resume"], env=env,
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr
    assert matrices(tmp_path / "j2") == a
    runs = [str(p) for p in sorted((tmp_path / "j2").iterdir()) if not p.name.startswith(".")]  # the shell's OUT/*
    assert main(["report", *runs, "--out", str(tmp_path / "rep")]) == 0


def test_a_bad_jobs_value_is_one_error_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "stream.yaml").write_text(STREAM)
    (tmp_path / "c.yaml").write_text(CONFIG.format(stream=tmp_path / "stream.yaml"))
    code = main(["compare", "--config", str(tmp_path / "c.yaml"), "--strategies", "lora", "--jobs", "0",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --jobs must be a positive integer, got 0"), err
    assert not (tmp_path / "out").exists()


def test_the_pool_ticks_while_runs_go_and_the_bar_follows_their_score_rows(tmp_path, monkeypatch):
    """`compare --jobs`'s bar counts score rows read from each run's results.json while the children run; a
    bar over whole runs would sit at 0 until the first run ends. Fake children write rows over time."""
    import time

    from clsharelora.training import run_pool as pool
    from clsharelora.training.results import scored_rows

    def fake_run(job, threads, resume):
        for n in range(1, 4):
            time.sleep(0.15)
            (job.run_dir / "results.json").write_text(json.dumps({"scores": [[0.0]] * n}))
        return (0 if job.key != "b" else 3), 0.45

    monkeypatch.setattr(pool, "run_one", fake_run)
    jobs = []
    for key in "abc":
        (tmp_path / key).mkdir()
        jobs.append(pool.RunJob(key, tmp_path / f"{key}.yaml", tmp_path / key, tmp_path / f"{key}.log"))
    seen, done = [], []
    codes = pool.run_pool(jobs, jobs=2, threads=1, resume=lambda job: False, tick=0.05,
                          on_tick=lambda: seen.append(sum(scored_rows(j.run_dir) for j in jobs)),
                          on_done=lambda job, code, seconds: done.append(job.key))
    assert codes == {"a": 0, "b": 3, "c": 0}
    assert sorted(done) == ["a", "b", "c"]
    assert seen == sorted(seen) and seen[-1] == 9
    assert any(0 < s < 6 for s in seen)           # rows were seen while the first runs were still going
    assert scored_rows(tmp_path / "missing") == 0
    (tmp_path / "a" / "results.json").write_text("{not json")
    assert scored_rows(tmp_path / "a") == 0       # a file being replaced reads as no rows, not a crash
