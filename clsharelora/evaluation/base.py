"""The evaluator contract: one object per task that scores a model item by item and summarises the items
into accuracy and NLL with their standard errors."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from .items import Items, check_items, standard_errors, token_weighted_nll


@dataclass
class TaskScore:
    """Scores of one task at one point of the stream. `accuracy` is the task's primary score in [0, 1]
    (GSM8K strict exact match, HumanEval pass@1, MMLU/MMLU-Pro letter accuracy), None when the task was
    scored without generation; `nll` is the mean per-token NLL of the reference answers under teacher
    forcing (nats/token). `extra` holds `nll_se` / `accuracy_se` (standard errors over items) and
    task-specific scores. `protocol` names what the numbers are comparable with: "lm-eval:<task>" where
    prompts, stop strings and generation settings are string-identical to that lm-eval 0.4.13 task,
    "clsharelora:<name>" for the project's own protocols. `items` (not part of `as_dict`) are the per-item
    results the scores were computed from (clsharelora.evaluation.items)."""

    task: str
    accuracy: float | None
    nll: float
    n: int
    extra: dict[str, float] = field(default_factory=dict)
    protocol: str = ""
    items: Items | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        out = {"task": self.task, "accuracy": self.accuracy, "nll": self.nll, "n": self.n, **self.extra}
        if self.protocol:
            out["protocol"] = self.protocol
        return out


class Evaluator(ABC):
    """Scores one task; built once per run (data loaded and prompts rendered up front), called after
    every experience. `score_items` scores any subset of the items (so that ranks can share a task's
    items); `summarize` turns all items' results into the TaskScore."""

    task: ClassVar[str] = ""
    records: list

    @abstractmethod
    def score_items(self, model, tokenizer, indices: Sequence[int], *, progress: bool = True) -> Items:
        """Per-item results (clsharelora.evaluation.items) of items `indices`, in that order."""

    @abstractmethod
    def summarize(self, items: Items) -> TaskScore:
        """The TaskScore of all items' results (in item order)."""

    @classmethod
    def new_tokens(cls, options: dict[str, Any]) -> int | None:
        """Tokens generated per item under `options` (a stream's eval block; the constructor's defaults
        for what it leaves out), or None when scoring generates nothing: for checks before any weights load
        (a prompt must fit beside them, `generation.prompt_token_limit`)."""
        import inspect

        params = inspect.signature(cls.__init__).parameters
        if "max_new_tokens" not in params:
            return None
        settings = {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}
        settings.update(options)
        if settings.get("generate") is False:
            return None
        return settings["max_new_tokens"]

    def item_costs(self) -> list[float]:
        """Relative cost of scoring each item (for splitting items over ranks): its prompt length."""
        return [float(len(p)) for p in getattr(self, "prompts", None) or [r.question for r in self.records]]

    def evaluate(self, model, tokenizer, *, progress: bool = True) -> TaskScore:
        """Score `model` (eval mode is the caller's job to restore) on all of this task's items."""
        return self.summarize(self.score_items(model, tokenizer, range(len(self.records)), progress=progress))

    def _score(self, items: Items, accuracy: float | None, extra: dict[str, float]) -> TaskScore:
        """The TaskScore of checked items: token-weighted NLL and the standard errors added to `extra`."""
        items = check_items(items, len(self.records), self.task)
        return TaskScore(task=self.task, accuracy=accuracy, nll=token_weighted_nll(items), n=len(self.records),
                         extra={**extra, **standard_errors(items)}, protocol=getattr(self, "label", ""),
                         items=items)


def make_evaluator(task: str, **options: Any) -> Evaluator:
    """Build the evaluator of `task`; the task table lives in `evaluation.tasks`."""
    from .tasks import make_evaluator as make

    return make(task, **options)
