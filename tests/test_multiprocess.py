"""Data parallel: 2 CPU processes (gloo, launched by accelerate) with micro-batch B give the same R matrix
as one process with batch 2B; only rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ARGS = ["run", "--model", "tiny-llama", "--strategy", "lora", "--device", "cpu", "--no-progress",
        "--set", "adapter.dropout=0.0"]


def _run(cmd, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, tiny_stream_file):
    accelerate = Path(sys.executable).with_name("accelerate")
    two = tmp_path / "two"
    done = _run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                 "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "clsharelora.cli", *ARGS,
                 "--stream", str(tiny_stream_file), "--out", str(two), "--set", "train.batch_size=2"], tmp_path)
    assert done.stdout.count("results:") == 2  # both ranks finished
    one = tmp_path / "one"
    _run([sys.executable, "-m", "clsharelora.cli", *ARGS, "--stream", str(tiny_stream_file), "--out", str(one),
          "--set", "train.batch_size=4"], tmp_path)
    r2 = json.loads((two / "results.json").read_text())
    r1 = json.loads((one / "results.json").read_text())
    for score in ("accuracy", "nll"):
        np.testing.assert_allclose(np.array(r2["matrices"][score]), np.array(r1["matrices"][score]),
                                   rtol=1e-5, atol=1e-6)
    assert r2["complete"] and len(list((two / "checkpoints").glob("step-*"))) >= 1
