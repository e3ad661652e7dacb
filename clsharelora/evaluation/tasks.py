"""Imports every built-in evaluator module so its @register_evaluator runs (make_evaluator imports this)."""

from __future__ import annotations

import importlib

from . import gsm8k, multiple_choice  # noqa: F401

try:  # the HumanEval evaluator lands separately; only its absence is tolerated, not a broken module
    importlib.import_module(f"{__package__}.humaneval")
except ModuleNotFoundError as exc:
    if exc.name != f"{__package__}.humaneval":
        raise
