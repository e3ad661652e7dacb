"""Data parallel through DDP (training/engine.py): the same config (global batch 4, micro-batch 2) on 2 CPU
processes (gloo, launched by accelerate) and on 1 process runs the same optimizer steps and reaches the same
adapter and R matrix, for LoRA and each ShareLoRA variant; only rank 0 writes. A 2-process run killed in
the middle of an experience resumes, on 2 processes, to the adapter and R of the uninterrupted run."""

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
from safetensors.torch import load_file

ARGS = ["run", "--model", "tiny-llama", "--device", "cpu", "--no-progress",
        "--set", "adapter.dropout=0.0", "--set", "train.global_batch=4", "--set", "train.batch_size=2"]
ACCELERATE = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "clsharelora.cli"]
STRATEGIES = {"lora": ["--strategy", "lora"],
              **{v: ["--strategy", "sharelora", "--set", f"adapter.variant={v}"]
                 for v in ("share_a", "share_b", "share_ab")}}

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


def _same_adapters(one: Path, two: Path, exps=("exp_1", "exp_2"), rtol=1e-4, atol=1e-6) -> None:
    for exp in exps:
        a1 = load_file(one / "adapters" / exp / "adapter_model.safetensors")
        a2 = load_file(two / "adapters" / exp / "adapter_model.safetensors")
        assert a1.keys() == a2.keys()
        for key in a1:
            np.testing.assert_allclose(a2[key].numpy(), a1[key].numpy(), rtol=rtol, atol=atol, err_msg=key)


def _same_results(one: Path, two: Path) -> tuple[dict, dict]:
    """results.json of the 1-process and the 2-process run: the same optimizer steps and the same R (within
    float tolerance); both returned for further checks."""
    r1 = json.loads((one / "results.json").read_text())
    r2 = json.loads((two / "results.json").read_text())
    assert r1["cost"]["optimizer_steps"] == r2["cost"]["optimizer_steps"]
    for score in ("accuracy", "nll"):
        np.testing.assert_allclose(np.array(r2["matrices"][score]), np.array(r1["matrices"][score]),
                                   rtol=1e-5, atol=1e-6)
    return r1, r2


def kill_at_checkpoint(proc, latest: Path, *, min_step: int, timeout: float) -> str | None:
    """SIGKILL the process group of `proc` (a launcher and its ranks, or one run) as soon as `latest` names a
    mid-experience checkpoint of experience 2 (`step-<n>-done-1`, n >= min_step); the tag, or None when the
    run ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        tag = latest.read_text().strip() if latest.is_file() else ""
        if tag.endswith("done-1") and int(tag.split("-")[1]) >= min_step:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            return tag
        time.sleep(0.02)
    proc.wait(timeout=60)
    return None


def killed_and_resumed_equals_uninterrupted(tmp_path, extra: list[str]) -> None:
    """A 2-process share_a run (`extra`: engine options) killed 2 steps into experience 2 resumes on 2
    processes to the adapter and R of the uninterrupted run."""
    stream = tmp_path / "epochs.yaml"
    stream.write_text(STREAM)
    args = [*ACCELERATE, *ARGS, *STRATEGIES["share_a"], *extra, "--stream", str(stream),
            "--set", "train.checkpoint_every=1"]
    ref = tmp_path / "ref"
    _run([*args, "--out", str(ref)], tmp_path)
    out = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--out", str(out)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    # step-00000004-done-1: experience 2 (1 done) has run 2 of its 6 steps
    assert kill_at_checkpoint(proc, out / "checkpoints" / "LATEST", min_step=4, timeout=600), \
        "the run finished before it could be killed mid-experience"
    done = _run([*args, "--out", str(out), "--resume"], tmp_path)
    assert "resuming" in done.stdout
    _same_adapters(ref, out, rtol=1e-5, atol=1e-7)
    r_ref = json.loads((ref / "results.json").read_text())
    r_out = json.loads((out / "results.json").read_text())
    for score in ("accuracy", "nll"):
        np.testing.assert_allclose(np.array(r_out["matrices"][score]), np.array(r_ref["matrices"][score]),
                                   rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("strategy", ["lora", "share_a", pytest.param("share_b", marks=pytest.mark.slow),
                                      pytest.param("share_ab", marks=pytest.mark.slow)])
def test_two_processes_run_the_steps_of_one_and_reach_its_adapter(tmp_path, strategy):
    stream = tmp_path / "epochs.yaml"
    stream.write_text(STREAM)
    args = [*ARGS, *STRATEGIES[strategy], "--stream", str(stream)]
    two = tmp_path / "two"
    done = _run([*ACCELERATE, *args, "--out", str(two)], tmp_path)
    assert done.stdout.count("results:") == 2  # both ranks finished
    one = tmp_path / "one"
    _run([sys.executable, "-m", "clsharelora.cli", *args, "--out", str(one)], tmp_path)
    r1, r2 = _same_results(one, two)
    # ceil(8 / 4) = 2 steps, then 2 epochs x ceil(12 / 4) = 6 steps, on 1 process (accumulation 2) and on 2 (1)
    assert r1["cost"]["optimizer_steps"] == [2, 6]
    assert (r1["run"]["batching"]["accumulation"], r2["run"]["batching"]["accumulation"]) == (2, 1)
    _same_adapters(one, two)
    if strategy != "lora":
        assert json.loads((two / "adapters" / "exp_2" / "sharelora.json").read_text())["variant"] == strategy
    assert r2["complete"] and len(list((two / "checkpoints").glob("step-*"))) >= 1


@pytest.mark.slow
@pytest.mark.parametrize("cl", ["ewc", "lwf", "olora", "replay"])
def test_cl_methods_on_two_processes_reach_the_adapter_and_r_of_one(tmp_path, cl):
    """The CL plug-ins under DDP: they read and write the unwrapped model (EWC's penalty gradient and
    Fisher, LwF's teacher forward, O-LoRA's penalty backward after DDP's reduction, replay's sampler)."""
    stream = tmp_path / "epochs.yaml"
    stream.write_text(STREAM)
    args = [*ARGS, *STRATEGIES["share_a"], "--cl", cl, "--stream", str(stream)]
    two, one = tmp_path / "two", tmp_path / "one"
    _run([*ACCELERATE, *args, "--out", str(two)], tmp_path)
    _run([sys.executable, "-m", "clsharelora.cli", *args, "--out", str(one)], tmp_path)
    _same_adapters(one, two)
    _same_results(one, two)


@pytest.mark.slow
def test_two_processes_killed_mid_experience_resume_to_the_uninterrupted_run(tmp_path):
    killed_and_resumed_equals_uninterrupted(tmp_path, [])
