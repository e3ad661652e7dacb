"""Reliability: same seed => identical results; SIGKILL in the middle of experience 2, then --resume,
gives bit-identical R matrices and adapter weights to an uninterrupted run; completed rows are kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

STREAM = """\
name: resume
experiences:
  - name: gsm8k
    train: {benchmark: gsm8k, split: train, n: 8, max_steps: 2, max_length: 256}
    eval: {task: gsm8k, n: 2, shots: 1, max_new_tokens: 4}
  - name: mmlu
    train: {benchmark: mmlu, split: dev, n: 24, max_steps: 12, max_length: 256}
    eval: {task: mmlu, n: 4, shots: 1}
"""


def _cmd(stream: Path, out: Path, *extra: str) -> list[str]:
    # dropout > 0 makes the run consume the torch RNG, so a wrong RNG restore would show.
    return [sys.executable, "-m", "clsharelora.cli", "run", "--stream", str(stream), "--model", "tiny-llama",
            "--strategy", "sharelora", "--out", str(out), "--no-progress", "--set", "train.batch_size=2",
            "--set", "train.checkpoint_every=1", "--set", "adapter.dropout=0.1", *extra]


def _final(run: Path):
    results = json.loads((run / "results.json").read_text())
    adapter = load_file(str(run / "adapters" / "exp_2" / "adapter_model.safetensors"))
    return results["matrices"], results["scores"], adapter


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    stream = root / "stream.yaml"
    stream.write_text(STREAM)
    subprocess.run(_cmd(stream, root / "ref"), check=True, capture_output=True, timeout=600)
    return stream, root


def test_same_seed_same_results(reference):
    stream, root = reference
    subprocess.run(_cmd(stream, root / "again"), check=True, capture_output=True, timeout=600)
    m1, s1, a1 = _final(root / "ref")
    m2, s2, a2 = _final(root / "again")
    assert m1 == m2 and s1 == s2
    assert a1.keys() == a2.keys() and all((a1[k] == a2[k]).all() for k in a1)


def test_sigkill_mid_experience_then_resume_is_bit_identical(reference):
    stream, root = reference
    out = root / "killed"
    latest = out / "checkpoints" / "LATEST"
    proc = subprocess.Popen(_cmd(stream, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        tag = latest.read_text().strip() if latest.is_file() else ""
        # step-00000005-exp-1: mid-experience checkpoint of experience 2 (index 1), 3 of its 12 steps done
        if tag.endswith("exp-1") and int(tag.split("-")[1]) >= 5:
            os.killpg(proc.pid, signal.SIGKILL)
            killed_at = tag
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed_at, "the run finished before it could be killed mid-experience"
    rows_before = json.loads((out / "results.json").read_text())["scores"]
    assert len(rows_before) == 2, "killed during experience 2: row 0 and row 1 are done"

    done = subprocess.run(_cmd(stream, out, "--resume"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout
    matrices, scores, adapter = _final(out)
    ref_m, ref_s, ref_a = _final(root / "ref")
    assert scores[:2] == rows_before, "completed rows must never be rewritten"
    assert matrices == ref_m and scores == ref_s
    assert adapter.keys() == ref_a.keys()
    for key in adapter:
        assert (adapter[key] == ref_a[key]).all(), key


def test_resume_refuses_a_different_config(reference):
    stream, root = reference
    done = subprocess.run(_cmd(stream, root / "ref", "--resume", "--set", "adapter.r=4"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "holds a different run" in done.stderr and "adapter" in done.stderr
    assert "Traceback" not in done.stderr
