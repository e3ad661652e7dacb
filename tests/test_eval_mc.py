"""MMLU / MMLU-Pro evaluators: scoring logic with mock models whose letter preferences are known."""

from __future__ import annotations

import json
import math
import time
from types import SimpleNamespace

import pytest
import torch

from clsharelora.data.records import Record
from clsharelora.errors import ConfigError
from clsharelora.evaluation import multiple_choice as mc
from clsharelora.evaluation.base import TaskScore, make_evaluator
from clsharelora.evaluation.multiple_choice import (
    MMLUEvaluator, MMLUProEvaluator, extract_cot_letter, micro_macro, predict_letters,
)
from clsharelora.models import load_model, load_tokenizer
from clsharelora.prompts import LETTERS


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-llama")


def letter_id(tok, letter: str) -> int:
    return tok(" " + letter, add_special_tokens=False)["input_ids"][0]


class LetterModel(torch.nn.Module):
    """Mock causal LM: at every position, a large logit on the token `choose(real ids of the row)` and a
    smaller one on " J" (a decoy beyond the options of short items); everything else uniform."""

    def __init__(self, vocab: int, choose, decoy: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.vocab, self.choose, self.decoy = vocab, choose, decoy

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0, cache=None, **kw):
        rows = []
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        for r in range(input_ids.shape[0]):
            real = input_ids[r][attention_mask[r, -input_ids.shape[1]:].bool()].tolist()
            logits = torch.zeros(input_ids.shape[1], self.vocab)
            logits[:, self.decoy] = 20.0
            logits[:, self.choose(real)] = 10.0
            rows.append(logits)
        logits = torch.stack(rows)
        keep = logits_to_keep or input_ids.shape[1]
        return SimpleNamespace(logits=logits[:, -keep:], cache=cache)


def mmlu_item(i: int, subject: str, answer: str) -> Record:
    return Record(id=f"mmlu/test/{subject}/{i}", benchmark="mmlu", split="test", question=f"Question {i}?",
                  target=answer, answer=answer, choices=("p", "q", "r", "s"), subject=subject)


def pro_item(i: int, category: str, answer: str, k: int) -> Record:
    return Record(id=f"mmlu_pro/test/{i}", benchmark="mmlu_pro", split="test", question=f"Pro {i}?",
                  target=answer, answer=answer, choices=tuple(f"opt{j}" for j in range(k)), subject=category,
                  meta={"cot_content": f"A: Let's think step by step. The answer is ({answer})."})


def oracle(tok, evaluator, shift: int):
    """choose(): the letter `shift` places after the gold letter of the item whose prompt ends with the row's
    real tokens (with a cached context the model sees only the query part)."""
    table = []
    for record, prompt in zip(evaluator.records, evaluator.prompts):
        k = len(record.choices)
        table.append((tok(prompt)["input_ids"], letter_id(tok, LETTERS[(LETTERS.index(record.answer) + shift) % k])))

    def choose(real: list[int]) -> int:
        hits = [letter for ids, letter in table if ids[-len(real):] == real]
        return hits[0] if len(hits) == 1 else 0

    return choose


ITEMS = [mmlu_item(i, s, "ABCD"[i % 4]) for i, s in enumerate(["anatomy"] * 5 + ["virology"] * 3)]
DEV = [mmlu_item(100 + i, s, "B") for i, s in enumerate(["anatomy"] * 6 + ["virology"] * 6)]


@pytest.mark.parametrize("shift, expected", [(0, 1.0), (1, 0.0), (3, 0.0)])
def test_mmlu_accuracy_follows_the_mass_on_the_gold_letter(tok, shift, expected):
    ev = MMLUEvaluator(records=ITEMS, shot_pool=DEV, shots=2, batch_size=3)
    model = LetterModel(len(tok), None, decoy=letter_id(tok, "J"))
    model.choose = oracle(tok, ev, shift)
    model.train()
    score = ev.evaluate(model, tok, progress=False)
    assert isinstance(score, TaskScore) and score.task == "mmlu" and score.n == len(ITEMS)
    assert score.accuracy == expected and score.extra["macro_accuracy"] == expected
    assert math.isfinite(score.nll) and score.nll > 0
    assert model.training  # the previous mode is restored


def test_mmlu_pro_three_options_never_predict_beyond_c(tok):
    items = [pro_item(i, "law", "ABC"[i % 3], 3) for i in range(6)] + [pro_item(9, "law", "H", 10)]
    ev = MMLUProEvaluator(records=items, shots=0)
    model = LetterModel(len(tok), oracle(tok, ev, 0), decoy=letter_id(tok, "J"))  # " J" dominates everywhere
    score = ev.evaluate(model, tok, progress=False)
    preds = [o["pred"] for o in ev.last_outputs]
    assert all(p in "ABC" for p in preds[:6])
    assert preds[:6] == [r.answer for r in items[:6]]  # the best letter among the present options
    assert preds[6] == "J"  # a 10-option item may take J
    assert score.accuracy == pytest.approx(6 / 7)


def test_predict_letters_restricts_to_present_options():
    logprobs = torch.tensor([[-3.0, -2.0, -5.0, -0.1], [-1.0, -2.0, -0.5, -9.0]])
    assert predict_letters(logprobs, [3, 4]) == ["B", "C"]
    with pytest.raises(ConfigError):
        predict_letters(logprobs, [5, 4])


def test_micro_and_macro_differ_on_unbalanced_subjects():
    micro, macro = micro_macro([True, True, False, False, False, False], ["a", "a", "b", "b", "b", "b"])
    assert micro == pytest.approx(1 / 3) and macro == pytest.approx(0.5)


def test_cot_letter_extraction():
    assert extract_cot_letter("... so the answer is (C). Then the answer is (D).") == "C"
    assert extract_cot_letter("Hence the answer is D") == "D"
    assert extract_cot_letter("I think it is (B)") is None
    assert extract_cot_letter("the answer is (K)") is None


def test_mmlu_pro_cot_mode_scores_generated_letters(tok, monkeypatch):
    items = [pro_item(i, "math", "ABCD"[i], 4) for i in range(4)]
    pool = [pro_item(50 + i, "physics", "A", 4) for i in range(5)]
    ev = MMLUProEvaluator(records=items, shot_pool=pool, shots=2, mode="cot", max_new_tokens=5)
    assert ev.prompts[0].count("Let's think step by step.") == 3  # 2 shots (fallback category) + query
    outputs = ["so the answer is (A).", "the answer is (C)", "no idea", "The answer is (D)"]
    monkeypatch.setattr(mc, "generate", lambda *a, **k: outputs)
    score = ev.evaluate(load_model("tiny-llama"), tok, progress=False)
    assert score.accuracy == pytest.approx(2 / 4)
    assert score.extra["no_answer_rate"] == pytest.approx(1 / 4)


def test_mmlu_pro_cot_counts_the_prompts_cut_to_fit_the_model(tok, monkeypatch):
    """Prompts longer than the model's positions less max_new_tokens are cut from the left (lm-eval's rule,
    in generation.generate); how many were cut is in the score (`prompts_cut`) and per item (`prompt_cut`)."""
    items = [pro_item(i, "math", "A", 4 + 3 * (i % 2)) for i in range(4)]  # 4 or 7 options: two lengths
    items[3] = pro_item(3, "math", "A", 10)
    pool = [pro_item(50 + i, "math", "A", 4) for i in range(2)]
    ev = MMLUProEvaluator(records=items, shot_pool=pool, shots=2, mode="cot", max_new_tokens=5)
    lengths = [len(tok(p)["input_ids"]) for p in ev.prompts]
    assert len(set(lengths)) >= 2
    model = load_model("tiny-llama")
    model.config.max_position_embeddings = min(lengths) + 5  # the shortest prompt fits exactly
    monkeypatch.setattr(mc, "generate", lambda *a, **k: ["the answer is (A)"] * 4)
    score = ev.evaluate(model, tok, progress=False)
    cut = [n > min(lengths) for n in lengths]
    assert score.extra["prompts_cut"] == sum(cut) >= 1
    assert score.items["prompt_cut"].tolist() == [float(c) for c in cut]
    assert score.as_dict()["prompts_cut"] == sum(cut)


def test_a_run_whose_generation_budget_leaves_no_room_for_a_prompt_is_refused_before_loading(tmp_path, capsys):
    """MMLU-Pro CoT's 2,048 new tokens on tiny-llama's 2,048 positions: one error line naming the experience,
    exit 2, nothing written (before, it failed only when the untrained model was first scored)."""
    from clsharelora.cli import main

    stream = tmp_path / "s.yaml"
    stream.write_text("name: s\nexperiences:\n  - name: pro\n"
                      "    train: {benchmark: mmlu_pro, split: validation, n: 4, max_steps: 1}\n"
                      "    eval: {task: mmlu_pro, n: 2, mode: cot}\n")
    code = main(["run", "--stream", str(stream), "--model", "tiny-llama", "--strategy", "lora", "--no-progress",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0] == ("error: experience 'pro', eval task mmlu_pro: max_new_tokens=2048 leaves no room for a "
                      "prompt: the model has 2048 positions (give max_new_tokens < 2048)")
    assert not (tmp_path / "run").exists()


def test_shots_come_from_the_same_subject_and_never_the_item_itself():
    pool = [mmlu_item(i, "anatomy", "A") for i in range(3)] + [mmlu_item(10, "virology", "C")]
    ev = MMLUEvaluator(records=[pool[0]], shot_pool=pool, shots=2)
    assert [s.id for s in ev.shots[0]] == [pool[1].id, pool[2].id]
    with pytest.raises(ConfigError, match="anatomy"):
        MMLUEvaluator(records=[pool[0]], shot_pool=pool, shots=3)  # MMLU has no fallback


def test_options_are_validated():
    with pytest.raises(ConfigError, match="mode"):
        MMLUEvaluator(records=ITEMS, shots=0, mode="cot")
    with pytest.raises(ConfigError, match="batch_size"):
        make_evaluator("mmlu_pro", records=ITEMS[:1], shots=0, batch_size=0)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~10 min each on 2 busy shared cores
@pytest.mark.parametrize("task, n", [("mmlu", 100), ("mmlu_pro", 50)])
def test_smollm2_multiple_choice_scores_on_real_subsets(task, n):
    model, tok = load_model("smollm2-135m"), load_tokenizer("smollm2-135m")
    ev = make_evaluator(task, n=n, seed=0)
    start = time.time()
    score = ev.evaluate(model, tok, progress=True)
    print(f"\n{task} n={n}: {score.as_dict()} in {time.time() - start:.1f}s")
    assert score.n == n and 0.0 <= score.accuracy <= 1.0 and 0.0 <= score.extra["macro_accuracy"] <= 1.0
    assert math.isfinite(score.nll) and 0.0 < score.nll < math.log(len(tok))
    preds = [o["pred"] for o in ev.last_outputs]
    assert all(LETTERS.index(p) < len(r.choices) for p, r in zip(preds, ev.records))


@pytest.mark.parametrize("cls", [MMLUEvaluator, MMLUProEvaluator])
def test_nll_comes_from_the_zero_shot_letter_forward_and_equals_a_separate_pass(cls, tok, monkeypatch):
    from clsharelora.data import load_benchmark
    from clsharelora.evaluation.nll import answer_nll

    records = load_benchmark(cls.benchmark, "test", n=6, seed=int(torch.randint(0, 1000, (1,))))
    model = load_model("tiny-llama", seed=1)
    for shots in (0, 1):   # with shots the zero-shot NLL prompt is scored by its own letter forward
        ev = cls(records=records, shots=shots, batch_size=4)
        separate = answer_nll(model, tok, ev.nll_pairs, batch_size=4)
        calls = []
        monkeypatch.setattr(mc, "nll_items", lambda *a, **k: calls.append(1))
        score = ev.evaluate(model, tok, progress=False)
        monkeypatch.undo()
        assert not calls, "a one-token letter reference must not run a second NLL pass"
        assert score.nll == pytest.approx(separate, rel=1e-5)


def test_option_normalised_nll_matches_the_hand_computed_value():
    # two items, the second with 3 options: the " J" column (index 3 here) must not enter its normaliser
    logprobs = torch.tensor([[-1.0, -2.0, -3.0, -0.5], [-1.2, -0.7, -4.0, -0.01]], dtype=torch.float64)
    got = mc.option_normalised_nll(logprobs, [4, 3], ["B", "A"])
    first = -math.log(math.exp(-2.0) / (math.exp(-1.0) + math.exp(-2.0) + math.exp(-3.0) + math.exp(-0.5)))
    second = -math.log(math.exp(-1.2) / (math.exp(-1.2) + math.exp(-0.7) + math.exp(-4.0)))
    assert got == pytest.approx([first, second], rel=1e-12)
    rng = torch.Generator().manual_seed(int(torch.randint(0, 10**6, (1,))))
    lp = torch.randn(5, 10, generator=rng, dtype=torch.float64) * 3
    ks = [3, 10, 4, 7, 2]
    gold = [LETTERS[int(torch.randint(0, k, (1,), generator=rng))] for k in ks]
    expected = [-math.log(math.exp(row[LETTERS.index(g)]) / sum(math.exp(v) for v in row[:k]))
                for row, k, g in zip(lp.tolist(), ks, gold)]
    assert mc.option_normalised_nll(lp, ks, gold) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ConfigError, match="gold letter 'D'"):
        mc.option_normalised_nll(lp[:1], [3], ["D"])


def test_option_normalised_nll_separates_which_letter_from_letter_mass(tok):
    # the mock puts most mass on " J" (outside a 3-option item) and the rest on the gold letter: the raw NLL
    # is large (format), the normalised one near zero (the right option among those offered)
    items = [pro_item(i, "law", "ABC"[i % 3], 3) for i in range(6)]
    ev = MMLUProEvaluator(records=items, shots=0)
    model = LetterModel(len(tok), oracle(tok, ev, 0), decoy=letter_id(tok, "J"))
    score = ev.evaluate(model, tok, progress=False)
    assert score.nll > 9.0
    assert score.extra["nll_norm"] == pytest.approx(math.log(1 + 2 * math.exp(-10.0)), rel=1e-4)
    assert score.protocol == "clsharelora:mmlu_pro_letters"
    assert score.as_dict()["nll_norm"] == score.extra["nll_norm"]


def test_nll_norm_on_a_real_model_against_a_plain_forward(tok):
    """Independent reference: one unbatched, uncached forward per zero-shot prompt, log-softmax, the option
    letters' rows; raw NLL - nll_norm must be the mean -log of the option letters' total mass."""
    from clsharelora.data import load_benchmark

    records = load_benchmark("mmlu_pro", "test", n=4, seed=int(torch.randint(0, 1000, (1,))))
    model = load_model("tiny-llama", seed=2)
    ev = MMLUProEvaluator(records=records, shots=1, batch_size=3)
    score = ev.evaluate(model, tok, progress=False)
    norm, mass = [], []
    with torch.no_grad():
        for (prompt, _), r in zip(ev.nll_pairs, records):
            ids = tok(prompt, return_tensors="pt")["input_ids"]
            lp = model(input_ids=ids).logits[0, -1].double().log_softmax(-1)
            letters = lp[[letter_id(tok, L) for L in LETTERS[: len(r.choices)]]]
            norm.append(float(torch.logsumexp(letters, 0) - letters[LETTERS.index(r.answer)]))
            mass.append(float(-torch.logsumexp(letters, 0)))
    assert score.extra["nll_norm"] == pytest.approx(sum(norm) / len(norm), rel=1e-4)
    assert score.nll - score.extra["nll_norm"] == pytest.approx(sum(mass) / len(mass), rel=1e-4)


def test_protocol_labels_and_mmlu_pro_cot_generation_settings(tok, monkeypatch):
    items = [pro_item(i, "math", "ABCD"[i], 4) for i in range(2)]
    assert MMLUEvaluator(records=ITEMS, shots=0).label == "lm-eval:mmlu"
    cot = MMLUProEvaluator(records=items, shots=0, mode="cot")
    assert cot.label == "lm-eval:mmlu_pro" and cot.max_new_tokens == 2048 and cot.stop == ("Question:",)
    assert MMLUProEvaluator(records=items, shots=0, mode="cot", max_new_tokens=512).label == \
        "lm-eval:mmlu_pro+max_new_tokens=512"
    seen = {}
    monkeypatch.setattr(mc, "generate", lambda *a, **k: seen.update(k) or ["the answer is (A)"] * 2)
    model = load_model("tiny-llama")
    with pytest.raises(ConfigError, match="max_new_tokens=2048 leaves no room for a prompt: the model has 2048"):
        cot.evaluate(model, tok, progress=False)   # lm-eval asserts the same (max_length - max_gen_toks > 0)
    model.config.max_position_embeddings = 4096    # Llama-2's: 2048 prompt tokens left
    score = cot.evaluate(model, tok, progress=False)
    assert seen["stop"] == ("Question:",) and seen["max_new_tokens"] == 2048 and seen["skip_special_tokens"]
    assert score.as_dict()["protocol"] == "lm-eval:mmlu_pro" and math.isfinite(score.extra["nll_norm"])


def test_results_json_carries_protocol_and_nll_norm_and_old_readers_still_load_it(tmp_path):
    from clsharelora.analysis.runs import load_run
    from clsharelora.training.results import ResultsStore

    cells = [TaskScore("mmlu", 0.5, 1.2, 4, {"macro_accuracy": 0.5, "nll_norm": 0.9}, "lm-eval:mmlu").as_dict(),
             TaskScore("mmlu_pro", 0.1, 2.0, 4, {"nll_norm": 1.7}, "clsharelora:mmlu_pro_letters").as_dict()]
    store = ResultsStore({"stream": "s", "adapter": "lora", "model": "m", "seed": 0}, ["mmlu", "mmlu_pro"],
                         ["mmlu", "mmlu_pro"])
    store.add_row(cells)
    store.add_row(cells)
    store.write(tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["scores"][0][0]["protocol"] == "lm-eval:mmlu" and data["scores"][0][1]["nll_norm"] == 1.7
    assert data["matrices"]["nll"] == [[1.2, 2.0]] * 2
    run = load_run(tmp_path)
    assert run.matrices["accuracy"].tolist() == [[0.5, 0.1]] * 2
    assert run.protocols == {"mmlu": "lm-eval:mmlu", "mmlu_pro": "clsharelora:mmlu_pro_letters"}
    from clsharelora.analysis.report import build_report

    page = build_report([run], tmp_path / "report", "t").markdown()
    assert "**Evaluation protocols**: mmlu: lm-eval:mmlu; mmlu_pro: clsharelora:mmlu_pro_letters" in page
