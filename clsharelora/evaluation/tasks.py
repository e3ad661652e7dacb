"""Imports every built-in evaluator module so its @register_evaluator runs (make_evaluator imports this)."""

from __future__ import annotations

from . import gsm8k, humaneval, multiple_choice  # noqa: F401
