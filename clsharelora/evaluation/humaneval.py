"""HumanEval evaluator: zero-shot completion of the function prompt, scored by running the problem's tests.

Follows openai/human-eval and the Codex paper: the model continues the prompt (signature + docstring);
the completion is cut at the first top-level `\\ndef`, `\\nclass`, `\\nif`, `\\nprint` or `\\n#`; the
program `prompt + completion + "\\n" + test + "\\n" + "check(entry_point)"` runs in the sandbox
(clsharelora.evaluation.sandbox) and passes when it ends without error. With `samples` > 1 sampled
completions per problem the unbiased pass@k estimator is reported for k in (1, 10, 100), k <= samples.
"""

from __future__ import annotations

import inspect
import math
from typing import Sequence

from ..data.records import Record
from ..errors import ConfigError, DataError
from . import generation
from .base import Evaluator, TaskScore
from .nll import answer_nll
from .passk import pass_at_k
from .sandbox import run_many

STOP = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
KS = (1, 10, 100)


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
        max_new_tokens: int = 384, samples: int = 1, temperature: float = 0.0, timeout: float = 10.0,
        workers: int | None = None, autocast: bool = generation.AUTOCAST_DEFAULT,
        records: Sequence[Record] | None = None,
    ):
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

    def _completions(self, model, tokenizer, label) -> list[list[str]]:
        """`samples` completions per problem (greedy, or seeded sampling at `temperature`)."""
        prompts = [prompt for prompt, _, _ in self.problems for _ in range(self.samples)]
        kw = {"temperature": self.temperature, "seed": self.seed} if self.temperature > 0 else {}
        flat = generation.generate(model, tokenizer, prompts, max_new_tokens=self.max_new_tokens, stop=STOP,
                                   batch_size=self.batch_size, progress=label("generate"), **kw)
        s = self.samples
        return [flat[i * s : (i + 1) * s] for i in range(len(self.problems))]

    def score_completions(self, completions: Sequence[Sequence[str]], *, progress=None) -> tuple[dict, list[dict]]:
        """Run every completion against its problem's tests: ({"pass@k": ..., ...}, per-problem details).
        Split from `evaluate` so the scoring can be checked without a model."""
        if len(completions) != len(self.problems) or any(len(c) != self.samples for c in completions):
            raise ConfigError(f"humaneval: need {self.samples} completion(s) for each of {len(self.problems)} problems")
        programs = [check_program(prompt, c, test, entry) for (prompt, test, entry), cs in zip(self.problems, completions)
                    for c in cs]
        results = run_many(programs, workers=self.workers, timeout=self.timeout, progress=progress)
        broken = [r for r in results if r.status == "error"]
        if broken:  # the harness failed, not the model: a score would be wrong, so stop here
            raise RuntimeError(f"humaneval: the sandbox could not run {len(broken)} program(s): {broken[0].reason}")
        s = self.samples
        details, correct = [], []
        for i, (record, cs) in enumerate(zip(self.records, completions)):
            res = results[i * s : (i + 1) * s]
            correct.append(sum(r.passed for r in res))
            details.append({"id": record.id, "completions": list(cs), "status": [r.status for r in res],
                            "reason": [r.reason for r in res], "passed": correct[-1]})
        scores = {f"pass@{k}": sum(pass_at_k(s, c, k) for c in correct) / len(correct) for k in self.ks}
        scores["timeout_rate"] = sum(r.status == "timeout" for r in results) / len(results)
        self.last_isolation = results[0].isolation if results else ""
        return scores, details

    def evaluate(self, model, tokenizer, *, progress: bool = True) -> TaskScore:
        label = (lambda what: f"{self.task} {what}") if progress else (lambda what: None)
        with generation.eval_context(model, autocast=self.autocast):
            completions = self._completions(model, tokenizer, label)
            nll = answer_nll(model, tokenizer, self.nll_pairs, batch_size=self.batch_size, progress=label("nll"))
        scores, self.last_outputs = self.score_completions(completions)
        return TaskScore(task=self.task, accuracy=scores["pass@1"], nll=nll, n=len(self.records), extra=scores)
