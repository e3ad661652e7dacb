"""Data parallel: the same config (global batch 4, micro-batch 2) on 2 CPU processes (gloo, launched by
accelerate) and on 1 process runs the same optimizer steps and reaches the same adapter and R matrix; only
rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

ARGS = ["run", "--model", "tiny-llama", "--strategy", "lora", "--device", "cpu", "--no-progress",
        "--set", "adapter.dropout=0.0", "--set", "train.global_batch=4", "--set", "train.batch_size=2"]

# No max_steps: the number of optimizer steps comes from the data and the global batch alone.
STREAM = """\
name: epochs
experiences:
  - name: gsm8k
    train: {benchmark: gsm8k, split: train, n: 8, max_length: 256}
    eval: {task: gsm8k, n: 2, shots: 1, max_new_tokens: 6}
  - name: mmlu
    train: {benchmark: mmlu, split: dev, n: 12, epochs: 2, max_length: 256}
    eval: {task: mmlu, n: 4, shots: 1}
"""


def _run(cmd, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_processes_run_the_steps_of_one_and_reach_its_adapter(tmp_path):
    stream = tmp_path / "epochs.yaml"
    stream.write_text(STREAM)
    accelerate = Path(sys.executable).with_name("accelerate")
    two = tmp_path / "two"
    done = _run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                 "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "clsharelora.cli", *ARGS,
                 "--stream", str(stream), "--out", str(two)], tmp_path)
    assert done.stdout.count("results:") == 2  # both ranks finished
    one = tmp_path / "one"
    _run([sys.executable, "-m", "clsharelora.cli", *ARGS, "--stream", str(stream), "--out", str(one)], tmp_path)
    r2 = json.loads((two / "results.json").read_text())
    r1 = json.loads((one / "results.json").read_text())
    # ceil(8 / 4) = 2 steps, then 2 epochs x ceil(12 / 4) = 6 steps, on 1 process (accumulation 2) and on 2 (1)
    assert r1["cost"]["optimizer_steps"] == r2["cost"]["optimizer_steps"] == [2, 6]
    assert (r1["run"]["batching"]["accumulation"], r2["run"]["batching"]["accumulation"]) == (2, 1)
    for exp in ("exp_1", "exp_2"):
        a1 = load_file(one / "adapters" / exp / "adapter_model.safetensors")
        a2 = load_file(two / "adapters" / exp / "adapter_model.safetensors")
        assert a1.keys() == a2.keys()
        for key in a1:
            np.testing.assert_allclose(a2[key].numpy(), a1[key].numpy(), rtol=1e-4, atol=1e-6, err_msg=key)
    for score in ("accuracy", "nll"):
        np.testing.assert_allclose(np.array(r2["matrices"][score]), np.array(r1["matrices"][score]),
                                   rtol=1e-5, atol=1e-6)
    assert r2["complete"] and len(list((two / "checkpoints").glob("step-*"))) >= 1
