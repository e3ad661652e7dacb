"""The one typed record every benchmark loader returns, so prompts, training and evaluation share a shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Record:
    """One benchmark item.

    id:       stable id from the upstream file (e.g. "gsm8k/train/17", "HumanEval/0", "mmlu/test/anatomy/3").
    benchmark: "gsm8k" | "humaneval" | "mbpp" | "codealpaca" | "mmlu" | "mmlu_pro".
    split:    upstream split name ("train", "test", "dev", "val", "validation", ...).
    question: the prompt body without any few-shot context (question text, code prompt, instruction+input).
    target:   the reference continuation (training target; teacher-forced NLL reference): GSM8K's chain of
              thought ending in "#### N", the code solution, or the answer letter for multiple choice.
    answer:   the gold answer used for scoring: GSM8K's final number, the letter A-J, "" for code (tests judge).
    choices:  option texts for multiple choice, in letter order; () otherwise.
    subject:  MMLU subject / MMLU-Pro category; "" otherwise.
    meta:     benchmark specifics (entry_point, test, test_list, cot_content, ...).
    """

    id: str
    benchmark: str
    split: str
    question: str
    target: str
    answer: str
    choices: tuple[str, ...] = ()
    subject: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)
