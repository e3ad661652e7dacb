"""The evaluator contract: one object per task that scores a model and returns accuracy and NLL."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import ConfigError


@dataclass
class TaskScore:
    """Scores of one task at one point of the stream. `accuracy` is the task's primary score in [0, 1]
    (GSM8K strict exact match, HumanEval pass@1, MMLU/MMLU-Pro letter accuracy); `nll` is the mean
    per-token NLL of the reference answers under teacher forcing (nats/token). `protocol` names what the
    numbers are comparable with: "lm-eval:<task>" where prompts, stop strings and generation settings are
    string-identical to that lm-eval 0.4.13 task, "clsharelora:<name>" for the project's own protocols."""

    task: str
    accuracy: float
    nll: float
    n: int
    extra: dict[str, float] = field(default_factory=dict)
    protocol: str = ""

    def as_dict(self) -> dict[str, Any]:
        out = {"task": self.task, "accuracy": self.accuracy, "nll": self.nll, "n": self.n, **self.extra}
        if self.protocol:
            out["protocol"] = self.protocol
        return out


class Evaluator(ABC):
    """Scores one task; built once per run (data loaded and prompts rendered up front), called after
    every experience."""

    task: ClassVar[str] = ""

    @abstractmethod
    def evaluate(self, model, tokenizer, *, progress: bool = True) -> TaskScore:
        """Score `model` (eval mode is the caller's job to restore) on this task's items."""


def make_evaluator(task: str, **options: Any) -> Evaluator:
    """Build the evaluator of `task`; the task table lives in `evaluation.tasks`."""
    from .tasks import make_evaluator as make

    return make(task, **options)
