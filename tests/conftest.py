"""Shared fixtures: a tiny stream on the real data files, and the tiny random Llama for fast tests."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

warnings.filterwarnings("ignore", message="no QP solver found")
torch.set_num_threads(min(2, os.cpu_count() or 1))
# the suite's thread count is an explicit setting, so the CLI's own choice (clsharelora.hardware) keeps it
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))

TINY_STREAM = """\
name: tiny
experiences:
  - name: gsm8k
    train: {benchmark: gsm8k, split: train, n: 8, max_steps: 2, max_length: 96}
    eval: {task: gsm8k, n: 2, shots: 1, max_new_tokens: 6}
  - name: mmlu
    train: {benchmark: mmlu, split: dev, n: 8, max_steps: 2, max_length: 96}
    eval: {task: mmlu, n: 4, shots: 1}
"""


@pytest.fixture
def tiny_stream(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_STREAM)
    return path


@pytest.fixture(scope="session")
def tiny_stream_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("streams") / "tiny.yaml"
    path.write_text(TINY_STREAM)
    return path
