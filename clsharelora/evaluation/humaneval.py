"""HumanEval evaluator: zero-shot completion of the function prompt, scored by running the problem's tests.

Follows openai/human-eval and the Codex paper: the model continues the prompt (signature + docstring);
the completion is cut at the first top-level `\\ndef`, `\\nclass`, `\\nif`, `\\nprint` or `\\n#`; the
program `prompt + completion + "\\n" + test + "\\n" + "check(entry_point)"` runs in the sandbox
(clsharelora.evaluation.sandbox) and passes when it ends without error. With `samples` > 1 sampled
completions per problem the unbiased pass@k estimator is reported for k in (1, 10, 100), k <= samples.
With `generate: false` only the NLL of the canonical solution is scored (accuracy None; see gsm8k.py).
"""

from __future__ import annotations

import inspect
import math
from typing import Sequence

import numpy as np

from ..data.records import Record
from ..errors import ConfigError, DataError
from . import generation
from .base import Evaluator, TaskScore
from .items import Items
from .nll import nll_items
from .passk import pass_at_k
from .sandbox import run_many

STOP = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
KS = (1, 10, 100)
MAX_NEW_TOKENS = 384
PROTOCOL = "clsharelora:humaneval"


def protocol_label(max_new_tokens: int, samples: int, temperature: float) -> str:
    """`TaskScore.protocol`: the project's own protocol (lm-eval's `humaneval` has the same prompts, stop
    strings and programs but 1024 new tokens and special tokens skipped when decoding), with every setting
    that changes the numbers away from its default appended."""
    label = PROTOCOL
    if max_new_tokens != MAX_NEW_TOKENS:
        label += f"+max_new_tokens={max_new_tokens}"
    if samples > 1:
        label += f"+samples={samples}+temperature={temperature:g}"
    return label


def check_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The program human-eval executes (execution.py's check_program layout)."""
    return prompt + completion + "\n" + test + "\n" + f"check({entry_point})"


def _problem_parts(record: Record) -> tuple[str, str, str]:
    """(prompt, test, entry_point) of a HumanEval record; DataError naming the record if a field is missing."""
    meta = record.meta or {}
    missing = [k for k in ("test", "entry_point") if not isinstance(meta.get(k), str) or not meta.get(k)]
    if missing:
        raise DataError(f"humaneval record {record.id!r}: meta is missing {', '.join(missing)}")
    prompt = meta.get("prompt") or record.question
    return prompt, meta["test"], meta["entry_point"]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"humaneval: {name} must be a positive integer, got {value!r}")
    return value


class HumanEvalEvaluator(Evaluator):
    """accuracy = pass@1 (greedy: the fraction of problems whose completion passes; sampled: the unbiased
    estimate); extra = {"pass@k": ...} for k in (1, 10, 100) with k <= samples, and the fraction of
    programs that hit the time limit; nll = per-token NLL of the canonical solution given the prompt."""

    task = "humaneval"

    def __init__(
        self, *, data_root=None, n: int | None = None, seed: int = 0, batch_size: int = 8,
        max_new_tokens: int = MAX_NEW_TOKENS, samples: int = 1, temperature: float = 0.0, timeout: float = 10.0,
        workers: int | None = None, autocast: bool = generation.AUTOCAST_DEFAULT,
        records: Sequence[Record] | None = None, generate: bool = True,
    ):
        if not isinstance(generate, bool):
            raise ConfigError(f"humaneval: generate must be true or false, got {generate!r}")
        self.with_generation = generate
        self.batch_size = _positive_int("batch_size", batch_size)
        self.max_new_tokens = _positive_int("max_new_tokens", max_new_tokens)
        self.samples = _positive_int("samples", samples)
        if workers is not None:
            _positive_int("workers", workers)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not math.isfinite(temperature) or temperature < 0:
            raise ConfigError(f"humaneval: temperature must be a finite number >= 0, got {temperature!r}")
        if samples > 1 and temperature == 0:
            raise ConfigError(f"humaneval: samples={samples} needs temperature > 0 (greedy decoding gives "
                              "identical samples, so pass@k would equal pass@1)")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ConfigError(f"humaneval: timeout must be a positive number of seconds, got {timeout!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"humaneval: seed must be an integer, got {seed!r}")
        self.temperature, self.timeout, self.workers, self.seed = float(temperature), float(timeout), workers, seed
        self.label = protocol_label(self.max_new_tokens, self.samples, self.temperature)
        self.autocast = autocast
        if self.temperature > 0:
            params = inspect.signature(generation.generate).parameters
            if not {"temperature", "seed"} <= set(params):
                raise ConfigError("humaneval: temperature > 0 needs sampling, but "
                                  "clsharelora.evaluation.generation.generate has no temperature/seed options")

        from ..data import load_benchmark, seeded_subset

        if records is None:
            records = load_benchmark("humaneval", "test", root=data_root, n=n, seed=seed)
        else:
            records = seeded_subset(list(records), n, seed)
        if not records:
            raise ConfigError("humaneval: no problems to evaluate")
        self.records = list(records)
        self.problems = [_problem_parts(r) for r in self.records]
        self.nll_pairs = [(prompt, r.target) for r, (prompt, _, _) in zip(self.records, self.problems)]
        self.ks = tuple(k for k in KS if k <= self.samples)
        self.last_outputs: list[dict] = []
        self.last_isolation = ""

    def item_costs(self) -> list[float]:
        return [float(len(prompt)) for prompt, _, _ in self.problems]

    def _completions(self, model, tokenizer, label, indices: Sequence[int]) -> list[list[str]]:
        """`samples` completions per problem of `indices` (greedy, or seeded sampling at `temperature`)."""
        prompts = [self.problems[i][0] for i in indices for _ in range(self.samples)]
        kw = {"temperature": self.temperature, "seed": self.seed} if self.temperature > 0 else {}
        flat = generation.generate(model, tokenizer, prompts, max_new_tokens=self.max_new_tokens, stop=STOP,
                                   batch_size=self.batch_size, progress=label("generate"), **kw)
        s = self.samples
        return [flat[i * s : (i + 1) * s] for i in range(len(indices))]

    def score_completions(self, completions: Sequence[Sequence[str]], *, progress=None,
                          indices: Sequence[int] | None = None) -> tuple[dict, list[dict]]:
        """Run every completion against its problem's tests (problems `indices`, default all):
        ({"pass@k": ..., ...}, per-problem details). Split from `evaluate` so the scoring can be checked
        without a model."""
        indices = range(len(self.problems)) if indices is None else list(indices)
        if len(completions) != len(indices) or any(len(c) != self.samples for c in completions):
            raise ConfigError(f"humaneval: need {self.samples} completion(s) for each of {len(indices)} problems")
        problems = [self.problems[i] for i in indices]
        programs = [check_program(prompt, c, test, entry) for (prompt, test, entry), cs in zip(problems, completions)
                    for c in cs]
        results = run_many(programs, workers=self.workers, timeout=self.timeout, progress=progress)
        broken = [r for r in results if r.status == "error"]
        if broken:  # the harness failed, not the model: a score would be wrong, so stop here
            raise RuntimeError(f"humaneval: the sandbox could not run {len(broken)} program(s): {broken[0].reason}")
        s = self.samples
        details, correct = [], []
        for i, (index, cs) in enumerate(zip(indices, completions)):
            res = results[i * s : (i + 1) * s]
            correct.append(sum(r.passed for r in res))
            details.append({"id": self.records[index].id, "completions": list(cs), "status": [r.status for r in res],
                            "reason": [r.reason for r in res], "passed": correct[-1],
                            "timeouts": sum(r.status == "timeout" for r in res)})
        scores = {f"pass@{k}": sum(pass_at_k(s, c, k) for c in correct) / len(correct) for k in self.ks} \
            if correct else {}
        scores["timeout_rate"] = sum(r.status == "timeout" for r in results) / len(results) if results else 0.0
        self.last_isolation = results[0].isolation if results else ""
        return scores, details

    def score_items(self, model, tokenizer, indices: Sequence[int], *, progress: bool = True) -> Items:
        indices = list(indices)
        label = (lambda what: f"{self.task} {what}") if progress else (lambda what: None)
        with generation.eval_context(model, autocast=self.autocast):
            if self.with_generation and indices:
                completions = self._completions(model, tokenizer, label, indices)
            items = nll_items(model, tokenizer, [self.nll_pairs[i] for i in indices], batch_size=self.batch_size,
                              progress=label("nll"))
        if not self.with_generation or not indices:  # (an empty shard's fields are never merged)
            self.last_outputs = []
            return items
        _, self.last_outputs = self.score_completions(completions, indices=indices)
        passed = np.array([d["passed"] for d in self.last_outputs], dtype=np.int64)
        items["correct"] = np.array([pass_at_k(self.samples, int(c), 1) for c in passed], dtype=float)
        items["passed"] = passed
        items["timeouts"] = np.array([d["timeouts"] for d in self.last_outputs], dtype=np.int64)
        return items

    def summarize(self, items: Items) -> TaskScore:
        if not self.with_generation:
            return self._score(items, None, {})
        passed = [int(c) for c in items["passed"]]
        scores = {f"pass@{k}": sum(pass_at_k(self.samples, c, k) for c in passed) / len(passed) for k in self.ks}
        scores["timeout_rate"] = float(items["timeouts"].sum()) / (len(passed) * self.samples)
        return self._score(items, scores["pass@1"], scores)
