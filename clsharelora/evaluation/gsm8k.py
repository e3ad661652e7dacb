"""GSM8K evaluator: few-shot chain of thought, greedy generation, exact match on the final number.

Two named protocols (option `protocol`); each result carries its label (`TaskScore.protocol`):
- "gsm8k_cot" (default, label "lm-eval:gsm8k_cot"): string-identical to lm-eval 0.4.13's `gsm8k_cot` -- the
  first `shots` (8) of the fixed chain-of-thought exemplars of Wei et al. (2022), "Q: ..\\nA:" prompts,
  greedy decoding until "Q:" / "</s>" / "<|im_end|>" (256 new tokens: lm-eval's HF default), special tokens
  skipped when decoding; strict-match = the first "The answer is N." Chosen over lm-eval's `gsm8k` (5-shot)
  because its exemplars are fixed: the prompt of an item does not depend on which other items are
  evaluated or in what order (lm-eval's `gsm8k` draws shots per question from one running RNG, so no
  subset can reproduce it), every question shares one context (KV cache), and it is the widely reported
  8-shot chain-of-thought setting.
- "seeded" (label "clsharelora:gsm8k_seeded", the project's earlier default): `shots` train exemplars drawn
  once with `seed` in the training format "Question: ..\\nAnswer: .. #### N" (<<calc>> notes stripped unless
  `keep_calc`), stop strings "Question:", "</s>", "<|im_end|>" and "\\n\\n\\n"; strict-match = the first
  "#### N".
Both report flexible-extract (the last number-like span) in `extra` and compare after lm-eval's
normalisation (commas, "$", a trailing "." removed). The NLL is the reference answer in the protocol's own
shape given its zero-shot prompt: "Q: ..\\nA:" + " .. The answer is N." for gsm8k_cot (the gsm8k loader's
train_prompt="gsm8k_cot", what the streams train on), "Question: ..\\nAnswer:" + " .. #### N" for seeded.
With `generate: false` only that NLL is scored (no generation; accuracy is None): for machines where
generation is too slow to score enough items (the CPU study, docs/results/cpu-study.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from ..data.records import Record
from ..errors import ConfigError
from ..prompts import context_for, gsm8k_cot_exemplars, prompt_for, random_shots, target_for
from .base import Evaluator, TaskScore
from .generation import AUTOCAST_DEFAULT, eval_context, generate
from .items import Items
from .nll import nll_items


@dataclass(frozen=True)
class Protocol:
    """One named evaluation protocol: how prompts are built, where generation stops, what strict-match reads."""

    label: str
    cot: bool                 # prompts_for(..., cot=True): lm-eval's gsm8k_cot format
    stop: tuple[str, ...]
    strict: re.Pattern
    skip_special_tokens: bool
    train_prompt: str          # the gsm8k loader's train_prompt whose target is this protocol's answer shape


PROTOCOLS = {
    "gsm8k_cot": Protocol("lm-eval:gsm8k_cot", True, ("Q:", "</s>", "<|im_end|>"),
                          re.compile(r"The answer is (\-?[0-9\.\,]+)."), True, "gsm8k_cot"),
    "seeded": Protocol("clsharelora:gsm8k_seeded", False, ("Question:", "</s>", "<|im_end|>", "\n\n\n"),
                       re.compile(r"#### (\-?[0-9\.\,]+)"), False, "plain"),
}
DEFAULT_PROTOCOL = "gsm8k_cot"
MAX_NEW_TOKENS = 256    # lm-eval's HF backend default (gsm8k_cot sets no max_gen_toks)
STOP = PROTOCOLS["seeded"].stop
STRICT = PROTOCOLS["seeded"].strict
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


def extract_strict(completion: str, pattern: re.Pattern = STRICT) -> str | None:
    """The first match of the protocol's strict pattern (default "#### N"; lm-eval strict-match), or None."""
    return _pick(pattern.findall(completion), 0)


def extract_flexible(completion: str) -> str | None:
    """The last number-like span of the completion (lm-eval flexible-extract), or None."""
    return _pick(FLEXIBLE.findall(completion), -1)


def is_correct(extracted: str | None, gold: str) -> bool:
    return extracted is not None and normalize_number(extracted) == normalize_number(gold)


class GSM8KEvaluator(Evaluator):
    """Strict exact match is the accuracy; flexible-extract accuracy goes to `extra`.

    `protocol` "gsm8k_cot" (default) or "seeded" (see the module docstring); `shots` default 8 for both.
    `stop` overrides the protocol's stop strings (the result is then labelled "<label>+custom_stop"), a
    `max_new_tokens` other than lm-eval's 256 is appended to the label ("+max_new_tokens=96").
    """

    task = "gsm8k"

    def __init__(
        self, *, data_root=None, n: int | None = None, seed: int = 0, shots: int = 8, batch_size: int = 8,
        max_new_tokens: int = MAX_NEW_TOKENS, split: str = "test", autocast: bool = AUTOCAST_DEFAULT,
        keep_calc: bool = False, protocol: str = DEFAULT_PROTOCOL, stop: Sequence[str] | None = None,
        records: Sequence[Record] | None = None, shot_pool: Sequence[Record] | None = None,
        generate: bool = True,
    ):
        if not isinstance(generate, bool):
            raise ConfigError(f"gsm8k: generate must be true or false, got {generate!r}")
        if protocol not in PROTOCOLS:
            raise ConfigError(f"gsm8k: protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        if max_new_tokens < 1:
            raise ConfigError(f"gsm8k: max_new_tokens must be >= 1, got {max_new_tokens}")
        if batch_size < 1:
            raise ConfigError(f"gsm8k: batch_size must be >= 1, got {batch_size}")
        from ..data import load_benchmark, seeded_subset

        self.protocol = PROTOCOLS[protocol]
        kw = {"keep_calc": True} if keep_calc else {}
        if records is None:
            records = load_benchmark("gsm8k", split, root=data_root, n=n, seed=seed, **kw)
        else:
            records = seeded_subset(list(records), n, seed)
        if not records:
            raise ConfigError("gsm8k: no items to evaluate")
        self.records = list(records)
        if self.protocol.cot:
            self.shots = gsm8k_cot_exemplars(shots)
        else:
            if shots and shot_pool is None:
                shot_pool = load_benchmark("gsm8k", "train", root=data_root, **kw)
            self.shots = random_shots(shot_pool or (), shots, seed=seed, exclude=(r.id for r in self.records))
        self.batch_size, self.max_new_tokens, self.autocast = batch_size, max_new_tokens, autocast
        self.with_generation = generate
        self.stop = self.protocol.stop if stop is None else tuple(stop)
        self.label = self.protocol.label + ("" if self.stop == self.protocol.stop else "+custom_stop")
        if max_new_tokens != MAX_NEW_TOKENS:
            self.label += f"+max_new_tokens={max_new_tokens}"
        cot = self.protocol.cot
        self.prompts = [prompt_for(r, self.shots, cot=cot) for r in self.records]
        self.contexts = [context_for(r, self.shots, cot=cot) for r in self.records]
        # the NLL reference is the answer in this protocol's own shape (the one the streams train on)
        marked = [replace(r, meta={**r.meta, "train_prompt": self.protocol.train_prompt}) for r in self.records]
        self.nll_pairs = [(prompt_for(r), target_for(r)) for r in marked]
        self.last_outputs: list[dict] = []

    def score_items(self, model, tokenizer, indices: Sequence[int], *, progress: bool = True) -> Items:
        indices = list(indices)
        label = (lambda what: f"{self.task} {what}") if progress else (lambda what: None)
        records = [self.records[i] for i in indices]
        with eval_context(model, autocast=self.autocast):
            if self.with_generation and indices:
                completions = generate(model, tokenizer, [self.prompts[i] for i in indices],
                                       max_new_tokens=self.max_new_tokens, stop=self.stop,
                                       batch_size=self.batch_size, progress=label("generate"),
                                       contexts=[self.contexts[i] for i in indices],
                                       skip_special_tokens=self.protocol.skip_special_tokens)
            items = nll_items(model, tokenizer, [self.nll_pairs[i] for i in indices], batch_size=self.batch_size,
                              progress=label("nll"))
        if not self.with_generation or not indices:  # (an empty shard's fields are never merged)
            self.last_outputs = []
            return items
        strict = [extract_strict(c, self.protocol.strict) for c in completions]
        flexible = [extract_flexible(c) for c in completions]
        items["correct"] = np.array([is_correct(s, r.answer) for s, r in zip(strict, records)], dtype=float)
        items["flexible"] = np.array([is_correct(f, r.answer) for f, r in zip(flexible, records)], dtype=float)
        self.last_outputs = [
            {"id": r.id, "completion": c, "strict": s, "flexible": f, "gold": r.answer}
            for r, c, s, f in zip(records, completions, strict, flexible)
        ]
        return items

    def summarize(self, items: Items) -> TaskScore:
        if not self.with_generation:
            return self._score(items, None, {})
        return self._score(items, float(np.mean(items["correct"])),
                           {"flexible_accuracy": float(np.mean(items["flexible"]))})
