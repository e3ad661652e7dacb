"""GSM8K evaluator: few-shot chain of thought, greedy generation, exact match on the final number.

Follows lm-evaluation-harness `gsm8k`: "Question: ..\\nAnswer:" prompts with `shots` solved train exemplars,
greedy decoding until "Question:" / "</s>" / "<|im_end|>" (plus "\\n\\n\\n", which ends a rambling small model
early), and two extractions of the answer:
- strict-match: the first `#### N` in the completion (the format the exemplars teach);
- flexible-extract: the last number-like span anywhere (also catches "The answer is N").
Both are compared to the gold number after lm-eval's normalisation (commas, "$", a trailing "." removed).
"""

from __future__ import annotations

import re
from typing import Sequence

from ..data.records import Record
from ..errors import ConfigError
from ..prompts import context_for, prompt_for, random_shots, target_for
from .base import Evaluator, TaskScore
from .generation import AUTOCAST_DEFAULT, eval_context, generate
from .nll import answer_nll

STOP = ("Question:", "</s>", "<|im_end|>", "\n\n\n")
STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_IGNORE = (re.compile(","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$"))


def normalize_number(text: str) -> str:
    """lm-eval's exact-match normalisation: drop commas, "$", everything up to "#### ", one trailing "."."""
    text = text.strip()
    for pattern in _IGNORE:
        text = pattern.sub("", text)
    return text.strip().lower()


def _pick(matches: list, index: int) -> str | None:
    if not matches:
        return None
    match = matches[index]
    if isinstance(match, tuple):  # alternation: the group that matched
        match = next((m for m in match if m), "")
    return match.strip() or None


def extract_strict(completion: str) -> str | None:
    """The number after the first "#### " (lm-eval strict-match), or None."""
    return _pick(STRICT.findall(completion), 0)


def extract_flexible(completion: str) -> str | None:
    """The last number-like span of the completion (lm-eval flexible-extract), or None."""
    return _pick(FLEXIBLE.findall(completion), -1)


def is_correct(extracted: str | None, gold: str) -> bool:
    return extracted is not None and normalize_number(extracted) == normalize_number(gold)


class GSM8KEvaluator(Evaluator):
    """Strict exact match is the accuracy; flexible-extract accuracy goes to `extra`.

    Shots: `shots` exemplars drawn once from the train split with `seed`, the same for every question (the
    context is then constant over the stream, so score changes come from the model alone). `keep_calc`
    keeps GSM8K's <<calc>> notes in exemplars and references (lm-eval keeps them; the loaders drop them by
    default, which is what training sees).
    """

    task = "gsm8k"

    def __init__(
        self, *, data_root=None, n: int | None = None, seed: int = 0, shots: int = 8, batch_size: int = 8,
        max_new_tokens: int = 256, split: str = "test", autocast: bool = AUTOCAST_DEFAULT,
        keep_calc: bool = False, stop: Sequence[str] = STOP,
        records: Sequence[Record] | None = None, shot_pool: Sequence[Record] | None = None,
    ):
        if max_new_tokens < 1:
            raise ConfigError(f"gsm8k: max_new_tokens must be >= 1, got {max_new_tokens}")
        if batch_size < 1:
            raise ConfigError(f"gsm8k: batch_size must be >= 1, got {batch_size}")
        from ..data import load_benchmark, seeded_subset

        kw = {"keep_calc": True} if keep_calc else {}
        if records is None:
            records = load_benchmark("gsm8k", split, root=data_root, n=n, seed=seed, **kw)
        else:
            records = seeded_subset(list(records), n, seed)
        if not records:
            raise ConfigError("gsm8k: no items to evaluate")
        if shots and shot_pool is None:
            shot_pool = load_benchmark("gsm8k", "train", root=data_root, **kw)
        self.records = list(records)
        self.shots = random_shots(shot_pool or (), shots, seed=seed, exclude=(r.id for r in self.records))
        self.batch_size, self.max_new_tokens, self.autocast = batch_size, max_new_tokens, autocast
        self.stop = tuple(stop)
        self.prompts = [prompt_for(r, self.shots) for r in self.records]
        self.contexts = [context_for(r, self.shots) for r in self.records]
        self.nll_pairs = [(prompt_for(r), target_for(r)) for r in self.records]
        self.last_outputs: list[dict] = []

    def evaluate(self, model, tokenizer, *, progress: bool = True) -> TaskScore:
        label = (lambda what: f"{self.task} {what}") if progress else (lambda what: None)
        with eval_context(model, autocast=self.autocast):
            completions = generate(model, tokenizer, self.prompts, max_new_tokens=self.max_new_tokens,
                                   stop=self.stop, batch_size=self.batch_size, progress=label("generate"),
                                   contexts=self.contexts)
            nll = answer_nll(model, tokenizer, self.nll_pairs, batch_size=self.batch_size, progress=label("nll"))
        strict = [extract_strict(c) for c in completions]
        flexible = [extract_flexible(c) for c in completions]
        strict_ok = [is_correct(s, r.answer) for s, r in zip(strict, self.records)]
        flexible_ok = [is_correct(f, r.answer) for f, r in zip(flexible, self.records)]
        self.last_outputs = [
            {"id": r.id, "completion": c, "strict": s, "flexible": f, "gold": r.answer}
            for r, c, s, f in zip(self.records, completions, strict, flexible)
        ]
        n = len(self.records)
        return TaskScore(
            task=self.task, accuracy=sum(strict_ok) / n, nll=nll, n=n,
            extra={"flexible_accuracy": sum(flexible_ok) / n},
        )
