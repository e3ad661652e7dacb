"""The built-in evaluation tasks: one explicit table from task name to its evaluator class.

The table names classes by import path and imports one only when it is asked for, so that validating a
stream or `clsharelora list` does not load torch. A task is added by adding a row here.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ConfigError, did_you_mean

TASKS: dict[str, str] = {
    "gsm8k": "clsharelora.evaluation.gsm8k:GSM8KEvaluator",
    "humaneval": "clsharelora.evaluation.humaneval:HumanEvalEvaluator",
    "mmlu": "clsharelora.evaluation.multiple_choice:MMLUEvaluator",
    "mmlu_pro": "clsharelora.evaluation.multiple_choice:MMLUProEvaluator",
}


def task_names() -> list[str]:
    return sorted(TASKS)


def evaluator_class(task: str) -> type:
    """The evaluator class of `task` (imported on first use), or a ConfigError listing the known tasks."""
    if task not in TASKS:
        raise ConfigError(f"no evaluator for task {task!r}{did_you_mean(task, TASKS)}; known: {', '.join(task_names())}")
    module, _, name = TASKS[task].partition(":")
    return getattr(importlib.import_module(module), name)


def make_evaluator(task: str, **options: Any):
    """Build the evaluator of `task` (gsm8k, humaneval, mmlu, mmlu_pro) with its options
    (data_root, n, seed, shots, batch_size, max_new_tokens, ...)."""
    return evaluator_class(task)(**options)
