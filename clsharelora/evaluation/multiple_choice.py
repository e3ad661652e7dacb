"""MMLU and MMLU-Pro evaluators: few-shot letter scoring from one forward per question (and MMLU-Pro CoT).

Letter mode (lm-eval's loglikelihood scoring): the prediction is the argmax, over the options the item
actually has, of the log-probabilities of " A", " B", ... at the position after "Answer:". MMLU-Pro's CoT mode
generates a chain of thought and reads the first "answer is (X)"; no match is wrong.
Accuracy is micro (over items); `macro_accuracy` averages per-subject (MMLU) / per-category (MMLU-Pro) means.

Protocols (`TaskScore.protocol`): MMLU "lm-eval:mmlu" (string-identical to lm-eval 0.4.13's `mmlu`);
MMLU-Pro CoT "lm-eval:mmlu_pro" (string-identical to its `mmlu_pro`: stop "Question:", 2048 new tokens,
special tokens skipped when decoding); MMLU-Pro letters "clsharelora:mmlu_pro_letters" (no lm-eval task
scores MMLU-Pro letters under MMLU's description: the project's own protocol). A `max_new_tokens` other than
lm-eval's is appended to the label ("+max_new_tokens=512").

Besides the raw NLL (`nll`: -log p(gold letter) under the full-vocabulary softmax), `extra["nll_norm"]` is
the option-normalised NLL: -log of the gold letter's probability renormalised over the item's option letters
only, on the same zero-shot prompt. Raw NLL = nll_norm + (-log of the mass the option letters get at all),
so the raw NLL mixes format learning (any letter) with knowledge (which letter); nll_norm keeps the latter.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import ClassVar, Sequence

import numpy as np
import torch

from ..data.records import Record
from ..errors import ConfigError
from ..prompts import LETTERS, context_for, first_shots, prompt_for, target_for
from .base import Evaluator, TaskScore
from .generation import AUTOCAST_DEFAULT, cut_prompts, eval_context, generate
from .items import Items
from .nll import encode_pair, letter_logprobs, letter_token_ids, nll_items

COT_STOP = ("Question:",)       # lm-eval mmlu_pro's `until` (its HF backend adds EOS; generate() stops there)
COT_MAX_NEW_TOKENS = 2048       # lm-eval mmlu_pro's max_gen_toks
COT_ANSWER = re.compile(r"answer is \(?([ABCDEFGHIJ])\)?")
MODES = ("letter", "cot")


def extract_cot_letter(completion: str) -> str | None:
    """The letter of the first "answer is (X)" / "answer is X" in a CoT completion, or None."""
    match = COT_ANSWER.search(completion)
    return match.group(1) if match else None


def predict_letters(logprobs: torch.Tensor, n_options: Sequence[int]) -> list[str]:
    """Argmax letter per row, over that row's first n_options[i] letters only (ties: the earlier letter)."""
    preds = []
    for row, k in zip(logprobs, n_options):
        if not 1 <= k <= row.shape[0]:
            raise ConfigError(f"an item has {k} options but only {row.shape[0]} letters were scored")
        preds.append(LETTERS[int(torch.argmax(row[:k]))])
    return preds


def option_normalised_nll(logprobs: torch.Tensor, n_options: Sequence[int], gold: Sequence[str]) -> list[float]:
    """Per item: -log softmax over its first n_options[i] letter log-probs, at the gold letter (nats)."""
    out = []
    for row, k, letter in zip(logprobs.double(), n_options, gold):
        g = LETTERS.index(letter)
        if not g < k <= row.shape[0]:
            raise ConfigError(f"gold letter {letter!r} is not among the {k} scored options")
        out.append(float(torch.logsumexp(row[:k], 0) - row[g]))
    return out


def micro_macro(correct: Sequence[bool], groups: Sequence[str]) -> tuple[float, float]:
    """(mean over items, mean over groups of the per-group mean)."""
    by_group: dict[str, list[bool]] = defaultdict(list)
    for ok, g in zip(correct, groups):
        by_group[g].append(ok)
    micro = sum(correct) / len(correct)
    macro = sum(sum(v) / len(v) for v in by_group.values()) / len(by_group)
    return micro, macro


class MultipleChoiceEvaluator(Evaluator):
    """Shared machinery; subclasses fix the benchmark, splits, option count and shot fallback."""

    benchmark: ClassVar[str] = ""
    shot_split: ClassVar[str] = ""
    max_options: ClassVar[int] = 4
    shot_fallback: ClassVar[bool] = False
    modes: ClassVar[tuple[str, ...]] = ("letter",)
    protocols: ClassVar[dict[str, str]] = {}   # mode -> label

    def __init__(
        self, *, data_root=None, n: int | None = None, seed: int = 0, shots: int = 5, batch_size: int = 8,
        split: str = "test", mode: str = "letter", max_new_tokens: int = COT_MAX_NEW_TOKENS,
        autocast: bool = AUTOCAST_DEFAULT,
        records: Sequence[Record] | None = None, shot_pool: Sequence[Record] | None = None,
    ):
        if mode not in self.modes:
            raise ConfigError(f"{self.task}: mode must be one of {', '.join(self.modes)}, got {mode!r}")
        if batch_size < 1:
            raise ConfigError(f"{self.task}: batch_size must be >= 1, got {batch_size}")
        if max_new_tokens < 1:
            raise ConfigError(f"{self.task}: max_new_tokens must be >= 1, got {max_new_tokens}")
        from ..data import load_benchmark, seeded_subset

        if records is None:
            records = load_benchmark(self.benchmark, split, root=data_root, n=n, seed=seed)
        else:
            records = seeded_subset(list(records), n, seed)
        if not records:
            raise ConfigError(f"{self.task}: no items to evaluate")
        if shots and shot_pool is None:
            shot_pool = load_benchmark(self.benchmark, self.shot_split, root=data_root)
        self.records = list(records)
        self.mode, self.batch_size, self.max_new_tokens, self.autocast = mode, batch_size, max_new_tokens, autocast
        self.shots = [self._shots_for(r, list(shot_pool or ()), shots) for r in self.records]
        cot = mode == "cot"
        self.prompts = [prompt_for(r, s, cot=cot) for r, s in zip(self.records, self.shots)]
        self.contexts = [context_for(r, s, cot=cot) for r, s in zip(self.records, self.shots)]
        self.nll_pairs = [(prompt_for(r), target_for(r)) for r in self.records]
        self.letters = [" " + letter for letter in LETTERS[: self.max_options]]
        self.stop = COT_STOP if cot else ()
        self.label = self.protocols[mode]
        if cot and max_new_tokens != COT_MAX_NEW_TOKENS:
            self.label += f"+max_new_tokens={max_new_tokens}"
        self.last_outputs: list[dict] = []

    @classmethod
    def new_tokens(cls, options) -> int | None:
        """Only CoT mode generates; letter scoring is one forward per item."""
        return super().new_tokens(options) if options.get("mode", "letter") == "cot" else None

    def _shots_for(self, record: Record, pool: list[Record], k: int) -> tuple[Record, ...]:
        if not k:
            return ()
        pool = [s for s in pool if s.id != record.id]  # never show the item itself as its own exemplar
        return first_shots(pool, k, subject=record.subject, fallback=self.shot_fallback)

    def _nll_is_gold_letter_logprob(self, tokenizer, indices: Sequence[int]) -> bool:
        """The NLL reference of every item is its one gold-letter token right after the zero-shot prompt, so
        -log p(gold) from the letter forward on that prompt is the NLL and a separate pass is waste."""
        for i in indices:
            prompt, target = self.nll_pairs[i]
            ids, count = encode_pair(tokenizer, prompt, target)
            gold = letter_token_ids(tokenizer, prompt, [target])[0]
            if count != 1 or ids[-1] != gold:
                return False
        return True

    def _cot_predictions(self, model, tokenizer, label, indices: list[int]) -> list[str | None]:
        self.last_cut = cut_prompts(model, tokenizer, [self.prompts[i] for i in indices], self.max_new_tokens)
        completions = generate(model, tokenizer, [self.prompts[i] for i in indices], max_new_tokens=self.max_new_tokens,
                               stop=self.stop, batch_size=self.batch_size, progress=label("generate"),
                               contexts=[self.contexts[i] for i in indices], skip_special_tokens=True)
        self.last_outputs = [{"id": self.records[i].id, "completion": c} for i, c in zip(indices, completions)]
        return [extract_cot_letter(c) for c in completions]

    def score_items(self, model, tokenizer, indices: Sequence[int], *, progress: bool = True) -> Items:
        indices = list(indices)
        if not indices:
            return {"nll_sum": np.zeros(0), "nll_tokens": np.zeros(0, dtype=np.int64)}
        label = (lambda what: f"{self.task} {what}") if progress else (lambda what: None)
        records = [self.records[i] for i in indices]
        n_options = [len(r.choices) for r in records]
        zero_shot_prompts = [self.nll_pairs[i][0] for i in indices]
        with eval_context(model, autocast=self.autocast):
            logprobs = None
            if self.mode == "cot":
                preds = self._cot_predictions(model, tokenizer, label, indices)
            else:
                logprobs = letter_logprobs(model, tokenizer, [self.prompts[i] for i in indices], self.letters,
                                           batch_size=self.batch_size, progress=label("letters"),
                                           contexts=[self.contexts[i] for i in indices])
                preds = predict_letters(logprobs, n_options)
            # letter log-probs on the NLL's zero-shot prompts (reused when those are the scoring prompts)
            if logprobs is not None and zero_shot_prompts == [self.prompts[i] for i in indices]:
                zero_shot = logprobs
            else:
                zero_shot = letter_logprobs(model, tokenizer, zero_shot_prompts, self.letters,
                                            batch_size=self.batch_size, progress=label("nll letters"))
            if self._nll_is_gold_letter_logprob(tokenizer, indices):
                gold = torch.tensor([LETTERS.index(r.answer) for r in records])
                items: Items = {"nll_sum": (-zero_shot.double().gather(1, gold[:, None]))[:, 0].numpy(),
                                "nll_tokens": np.ones(len(indices), dtype=np.int64)}
            else:
                items = nll_items(model, tokenizer, [self.nll_pairs[i] for i in indices],
                                  batch_size=self.batch_size, progress=label("nll"))
        if self.mode == "letter":
            self.last_outputs = [{"id": r.id} for r in records]
        for out, p, r in zip(self.last_outputs, preds, records):
            out.update(pred=p, gold=r.answer)
        items["correct"] = np.array([p == r.answer for p, r in zip(preds, records)], dtype=float)
        items["nll_norm"] = np.array(option_normalised_nll(zero_shot, n_options, [r.answer for r in records]))
        if self.mode == "cot":
            items["no_answer"] = np.array([p is None for p in preds], dtype=float)
            items["prompt_cut"] = np.array(self.last_cut, dtype=float)
        return items

    def summarize(self, items: Items) -> TaskScore:
        micro, macro = micro_macro(list(items["correct"] == 1.0), [r.subject for r in self.records])
        extra = {"macro_accuracy": macro, "nll_norm": float(np.mean(items["nll_norm"]))}
        if self.mode == "cot":
            extra["no_answer_rate"] = float(np.mean(items["no_answer"]))
            if "prompt_cut" in items:  # (items saved before prompts were cut have no such field)
                extra["prompts_cut"] = int(np.sum(items["prompt_cut"]))
        return self._score(items, micro, extra)


class MMLUEvaluator(MultipleChoiceEvaluator):
    """MMLU: 5-shot from the subject's dev split (its first 5 rows, as lm-eval), 4 options A-D."""

    task = "mmlu"
    benchmark = "mmlu"
    shot_split = "dev"
    max_options = 4
    protocols = {"letter": "lm-eval:mmlu"}


class MMLUProEvaluator(MultipleChoiceEvaluator):
    """MMLU-Pro: 5-shot from validation of the same category (filled up from other categories when short),
    3-10 options A-J; mode "letter" (default; the project's protocol) or "cot" (lm-eval `mmlu_pro`)."""

    task = "mmlu_pro"
    benchmark = "mmlu_pro"
    shot_split = "validation"
    max_options = 10
    shot_fallback = True
    modes = MODES
    protocols = {"letter": "clsharelora:mmlu_pro_letters", "cot": "lm-eval:mmlu_pro"}
