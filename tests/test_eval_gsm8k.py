"""GSM8K: lm-eval's strict/flexible answer extraction, seeded shots, and the evaluator end to end."""

from __future__ import annotations

import math
import time

import pytest

from clsharelora.data.records import Record
from clsharelora.errors import ConfigError
from clsharelora.evaluation import gsm8k as g
from clsharelora.evaluation.base import make_evaluator
from clsharelora.evaluation.gsm8k import (
    GSM8KEvaluator, extract_flexible, extract_strict, is_correct, normalize_number,
)
from clsharelora.models import load_model, load_tokenizer
from clsharelora.prompts import gsm8k_cot_exemplars


def item(i: int, answer: str, split: str = "test") -> Record:
    return Record(id=f"gsm8k/{split}/{i}", benchmark="gsm8k", split=split, question=f"Q{i}: how many?",
                  target=f"Count them.\n#### {answer}", answer=answer)


POOL = [item(i, str(i), "train") for i in range(40)]


@pytest.mark.parametrize("text, strict, flexible", [
    ("She has 3 + 4 = 7 apples.\n#### 7", "7", "7"),
    ("So 1,000 in total.\n#### 1,000", "1,000", "1,000"),
    ("The answer is 42.", None, "42."),                       # no "####": only flexible finds it
    ("#### 5\nActually, 12 apples", "5", "12"),               # strict takes the first ####, flexible the last
    ("It costs $18.50 in total", None, "$18.50"),
    ("#### -3", "-3", "-3"),
    ("no digits at all", None, None),
    ("####7", None, "7"),                                     # strict needs "#### " with the space
])
def test_extraction_matches_lm_eval_filters(text, strict, flexible):
    assert extract_strict(text) == strict
    assert extract_flexible(text) == flexible


def test_normalisation_and_match():
    assert normalize_number("$1,234.") == "1234"
    assert normalize_number("blah #### 72") == "72"
    assert is_correct("1,000", "1000") and is_correct("42.", "42") and is_correct("$18", "18")
    assert not is_correct(None, "5") and not is_correct("5.0", "5") and not is_correct("15", "5")


@pytest.mark.parametrize("protocol, outputs, stop, question", [
    ("seeded", ["... #### 7", "so #### 1,000", "The answer is 42.", "#### 5 then 12"],
     ("Question:", "</s>", "<|im_end|>", "\n\n\n"), "Question:"),
    # lm-eval gsm8k_cot: strict-match is the first "The answer is N." ("#### 42" only flexible finds)
    ("gsm8k_cot", ["... The answer is 7.", "so The answer is 1,000.", "#### 42", "The answer is 5. then 12"],
     ("Q:", "</s>", "<|im_end|>"), "Q:"),
])
def test_strict_and_flexible_accuracies_differ_where_they_should(monkeypatch, protocol, outputs, stop, question):
    records = [item(0, "7"), item(1, "1000"), item(2, "42"), item(3, "12")]
    ev = GSM8KEvaluator(records=records, shot_pool=POOL, shots=3, protocol=protocol)
    seen = {}

    def fake_generate(model, tokenizer, prompts, **kw):
        seen.update(kw, prompts=prompts)
        return outputs

    monkeypatch.setattr(g, "generate", fake_generate)
    model, tok = load_model("tiny-llama"), load_tokenizer("tiny-llama")
    score = ev.evaluate(model, tok, progress=False)
    assert score.task == "gsm8k" and score.n == 4
    assert score.accuracy == pytest.approx(2 / 4)  # "#### 7", "#### 1,000"
    assert score.extra["flexible_accuracy"] == 1.0  # also "42" and the last number 12 of "... 5 then 12"
    assert seen["stop"] == stop
    assert seen["skip_special_tokens"] == (protocol == "gsm8k_cot")  # lm-eval's HF backend skips them
    assert all(p.count(question) == 4 for p in seen["prompts"])  # 3 shots + the query
    assert score.protocol == {"seeded": "clsharelora:gsm8k_seeded", "gsm8k_cot": "lm-eval:gsm8k_cot"}[protocol]
    assert score.as_dict()["protocol"] == score.protocol
    assert math.isfinite(score.nll) and score.nll > 0


def test_default_protocol_uses_the_fixed_cot_exemplars_whatever_the_seed():
    records = [item(i, str(i)) for i in range(3)]
    a = GSM8KEvaluator(records=records, shots=8, seed=5)
    b = GSM8KEvaluator(records=records[1:], shots=8, seed=6)
    assert a.protocol.label == "lm-eval:gsm8k_cot" and a.shots == b.shots == gsm8k_cot_exemplars(8)
    assert a.prompts[1] == b.prompts[0] and len(set(a.contexts)) == 1
    assert a.prompts[0] == a.contexts[0] + "Q: Q0: how many?\nA:"
    # the NLL reference is in the protocol's own answer shape (what the streams train on)
    assert a.nll_pairs[0] == ("Q: Q0: how many?\nA:", " Count them. The answer is 0.")
    seeded = GSM8KEvaluator(records=records, shots=2, seed=5, protocol="seeded", shot_pool=POOL)
    assert seeded.nll_pairs[0] == ("Question: Q0: how many?\nAnswer:", " Count them.\n#### 0")
    assert GSM8KEvaluator(records=records, shots=8, max_new_tokens=64).label == "lm-eval:gsm8k_cot+max_new_tokens=64"
    assert GSM8KEvaluator(records=records, shots=8, stop=["\n"]).label == "lm-eval:gsm8k_cot+custom_stop"


def test_shot_selection_is_seeded_and_fixed_for_all_questions():
    records = [item(i, str(i)) for i in range(3)]
    a = GSM8KEvaluator(records=records, shot_pool=POOL, shots=8, seed=5, protocol="seeded")
    b = GSM8KEvaluator(records=records, shot_pool=POOL, shots=8, seed=5, protocol="seeded")
    c = GSM8KEvaluator(records=records, shot_pool=POOL, shots=8, seed=6, protocol="seeded")
    assert a.shots == b.shots and a.prompts == b.prompts
    assert a.shots != c.shots
    assert len(a.shots) == 8 and len({s.id for s in a.shots}) == 8
    assert all(p.startswith(a.contexts[0]) for p in a.prompts) and len(set(a.contexts)) == 1
    assert a.nll_pairs[0] == ("Question: Q0: how many?\nAnswer:", " Count them.\n#### 0")  # zero-shot reference


def test_shots_exclude_the_evaluated_items():
    records = POOL[:38]
    ev = GSM8KEvaluator(records=records, shot_pool=POOL, shots=2, seed=0, protocol="seeded")
    assert {s.id for s in ev.shots} == {POOL[38].id, POOL[39].id}
    with pytest.raises(ConfigError, match="shot pool"):
        GSM8KEvaluator(records=records, shot_pool=POOL, shots=3, protocol="seeded")


def test_bad_options():
    with pytest.raises(ConfigError, match="max_new_tokens"):
        GSM8KEvaluator(records=[item(0, "1")], shots=0, max_new_tokens=0)
    with pytest.raises(ConfigError, match="no items"):
        GSM8KEvaluator(records=[], shots=0)
    with pytest.raises(ConfigError, match="protocol must be one of gsm8k_cot, seeded, got 'gsm8k'"):
        GSM8KEvaluator(records=[item(0, "1")], shots=0, protocol="gsm8k")
    with pytest.raises(ConfigError, match="0..8"):
        GSM8KEvaluator(records=[item(0, "1")], shots=9)


def test_tiny_model_end_to_end_restores_mode():
    model, tok = load_model("tiny-llama", seed=3), load_tokenizer("tiny-llama")
    model.train()
    ev = make_evaluator("gsm8k", records=[item(i, str(i)) for i in range(3)], shots=2,
                        max_new_tokens=6, batch_size=2)
    score = ev.evaluate(model, tok, progress=False)
    assert model.training
    assert score.accuracy == 0.0  # a random 2-layer model cannot produce "#### i"
    assert math.log(len(tok)) * 0.5 < score.nll < math.log(len(tok)) * 2
    assert len(ev.last_outputs) == 3 and all(isinstance(o["completion"], str) for o in ev.last_outputs)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~8 min on 2 busy shared cores
def test_smollm2_gsm8k_scores_on_a_real_subset():
    model, tok = load_model("smollm2-135m"), load_tokenizer("smollm2-135m")
    ev = make_evaluator("gsm8k", n=20, seed=0)
    start = time.time()
    score = ev.evaluate(model, tok, progress=True)
    print(f"\ngsm8k n=20: {score.as_dict()} in {time.time() - start:.1f}s")
    print("first completion:", ev.last_outputs[0]["completion"][:300])
    assert score.n == 20 and 0.0 <= score.accuracy <= 1.0 and 0.0 <= score.extra["flexible_accuracy"] <= 1.0
    assert math.isfinite(score.nll) and 0.0 < score.nll < math.log(len(tok))


def test_streams_train_gsm8k_in_the_shape_the_default_protocol_scores():
    """A model that reproduces its training target exactly is correct under the default protocol's
    strict-match, on every real training item; and the NLL reference is that same target."""
    from clsharelora.benchmarks.stream import load_stream
    from clsharelora.data import load_benchmark
    from clsharelora.evaluation.gsm8k import DEFAULT_PROTOCOL, PROTOCOLS, extract_strict, is_correct
    from clsharelora.prompts import prompt_for, target_for

    for name in ("paper", "demo"):
        spec = load_stream(name).experiences[0].train
        assert spec.benchmark == "gsm8k" and spec.options.get("train_prompt") == "gsm8k_cot", name
    protocol = PROTOCOLS[DEFAULT_PROTOCOL]
    records = load_benchmark("gsm8k", "train", train_prompt="gsm8k_cot")
    for r in records:
        assert prompt_for(r) == f"Q: {r.question}\nA:"
        assert is_correct(extract_strict(target_for(r), protocol.strict), r.answer), r.id
    ev = make_evaluator("gsm8k", records=load_benchmark("gsm8k", "test")[:3], shots=8)
    assert all(p.startswith("Q: ") and p.endswith("\nA:") and t.endswith(".") and "The answer is" in t
               for p, t in ev.nll_pairs)
