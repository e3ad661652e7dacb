"""Prompt formats: exact lm-eval text for known items, train/eval agreement, seeded shot selection."""

from __future__ import annotations

import pytest

from clsharelora.data.records import Record
from clsharelora.errors import ConfigError, DataError
from clsharelora.prompts import first_shots, gsm8k_cot_exemplars, prompt_for, random_shots, target_for


def mmlu(i: int, subject: str = "abstract_algebra", answer: str = "B") -> Record:
    return Record(id=f"mmlu/dev/{subject}/{i}", benchmark="mmlu", split="dev", question=f" Q{i}? ",
                  target=answer, answer=answer, choices=("w", "x", "y", "z"), subject=subject)


def gsm(i: int) -> Record:
    return Record(id=f"gsm8k/train/{i}", benchmark="gsm8k", split="train", question=f"What is {i}+1?",
                  target=f"{i}+1={i + 1}\n#### {i + 1}", answer=str(i + 1))


def pro(i: int, category: str, k: int = 4, answer: str = "C") -> Record:
    return Record(id=f"mmlu_pro/validation/{i}", benchmark="mmlu_pro", split="validation", question=f"P{i}?",
                  target=answer, answer=answer, choices=tuple(f"o{j}" for j in range(k)), subject=category,
                  meta={"cot_content": f"A: Let's think step by step. Reason {i}. The answer is ({answer})."})


# The first test item of MMLU abstract_algebra, rendered by lm-evaluation-harness `mmlu_abstract_algebra`
# (default template, 0-shot): description + "{question.strip()}\nA. ..\nB. ..\nC. ..\nD. ..\nAnswer:".
KNOWN = Record(
    id="mmlu/test/abstract_algebra/0", benchmark="mmlu", split="test",
    question="Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.",
    target="B", answer="B", choices=("0", "4", "2", "6"), subject="abstract_algebra",
)
KNOWN_LM_EVAL = (
    "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
    "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
    "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:"
)


def test_mmlu_known_item_matches_lm_eval_exactly():
    assert prompt_for(KNOWN) == KNOWN_LM_EVAL
    assert target_for(KNOWN) == " B"


def test_mmlu_shots_are_joined_like_lm_eval():
    shots = (mmlu(0, answer="A"), mmlu(1, answer="D"))
    text = prompt_for(KNOWN, shots)
    expected = (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        "Q0?\nA. w\nB. x\nC. y\nD. z\nAnswer: A\n\n"
        "Q1?\nA. w\nB. x\nC. y\nD. z\nAnswer: D\n\n"
        + KNOWN_LM_EVAL.split("\n\n", 1)[1]
    )
    assert text == expected


def test_mmlu_real_file_item(tmp_path):
    from clsharelora.data import load_benchmark

    try:
        records = load_benchmark("mmlu", "test", subjects=["abstract_algebra"], source="files")
    except DataError:
        pytest.skip("MMLU files not present under the data root")
    assert prompt_for(records[0]) == KNOWN_LM_EVAL
    assert target_for(records[0]) == " B"


def test_gsm8k_format_and_train_eval_agreement():
    shots = (gsm(1), gsm(2))
    query = gsm(7)
    assert prompt_for(query) == "Question: What is 7+1?\nAnswer:"
    assert target_for(query) == " 7+1=8\n#### 8"
    assert prompt_for(query, shots) == (
        "Question: What is 1+1?\nAnswer: 1+1=2\n#### 2\n\n"
        "Question: What is 2+1?\nAnswer: 2+1=3\n#### 3\n\n"
        "Question: What is 7+1?\nAnswer:"
    )
    # a shot is exactly what training sees for that record: prompt_for + target_for
    assert prompt_for(query, shots).startswith(prompt_for(shots[0]) + target_for(shots[0]) + "\n\n")


def test_mmlu_pro_letter_format_goes_up_to_j():
    rec = pro(5, "law", k=10, answer="J")
    assert prompt_for(rec) == (
        "The following are multiple choice questions (with answers) about law.\n\n"
        "P5?\nA. o0\nB. o1\nC. o2\nD. o3\nE. o4\nF. o5\nG. o6\nH. o7\nI. o8\nJ. o9\nAnswer:"
    )
    assert target_for(rec) == " J"


def test_mmlu_pro_cot_format_matches_lm_eval():
    # lm-eval 0.4.13 mmlu_pro: description ends in ONE "\n", option text stripped, shot = item + cue + " " +
    # cot_content without its "A: Let's think step by step. " (tests/test_lm_eval_parity.py renders real items)
    shot = Record(**{**pro(1, "math", k=3, answer="B").__dict__, "choices": (" o0 ", "o1\n", "o2")})
    query = pro(2, "math", k=3)
    assert prompt_for(query, (shot,), cot=True) == (
        "The following are multiple choice questions (with answers) about math. Think step by step and then "
        'finish your answer with "the answer is (X)" where X is the correct letter choice.\n'
        "Question:\nP1?\nOptions:\nA. o0\nB. o1\nC. o2\n"
        "Answer: Let's think step by step. Reason 1. The answer is (B).\n\n"
        "Question:\nP2?\nOptions:\nA. o0\nB. o1\nC. o2\nAnswer: Let's think step by step."
    )
    # letter mode (the project's own protocol) keeps MMLU's description and the option text as is
    assert prompt_for(shot).startswith("The following are multiple choice questions (with answers) about math.\n\n")
    assert "\nA.  o0 \nB. o1\n\nC. o2\nAnswer:" in prompt_for(shot)


def test_gsm8k_cot_format_is_lm_evals_gsm8k_cot():
    shots = gsm8k_cot_exemplars(2)
    assert [s.answer for s in gsm8k_cot_exemplars()] == ["6", "5", "39", "8", "9", "29", "33", "8"]
    assert prompt_for(gsm(7), shots, cot=True) == (
        "Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are "
        "done, there will be 21 trees. How many trees did the grove workers plant today?\nA: There are 15 trees "
        "originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. "
        "The answer is 6.\n\n"
        "Q: If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?"
        "\nA: There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.\n\n"
        "Q: What is 7+1?\nA:"
    )
    assert prompt_for(gsm(7), cot=True) == "Q: What is 7+1?\nA:"
    with pytest.raises(ConfigError, match="0..8"):
        gsm8k_cot_exemplars(9)
    with pytest.raises(ConfigError, match="cot"):
        prompt_for(mmlu(0), cot=True)


def test_code_formats():
    he = Record(id="HumanEval/0", benchmark="humaneval", split="test", question="def f(x):\n    \"\"\"doc\"\"\"\n",
                target="    return x\n", answer="")
    assert prompt_for(he) == he.question and target_for(he) == he.target
    mbpp = Record(id="mbpp/601", benchmark="mbpp", split="train", question="Write a function to add.",
                  target="def add(a, b):\n    return a + b", answer="",
                  meta={"test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]})
    assert prompt_for(mbpp) == (
        "You are an expert Python programmer, and here is your task: Write a function to add. "
        "Your code should pass these tests:\n\nassert add(1, 2) == 3\nassert add(0, 0) == 0\n"
    )
    assert target_for(mbpp) == mbpp.target
    alpaca = Record(id="codealpaca/x/0", benchmark="codealpaca", split="train", question="Sort it\n\n[3, 1]",
                    target="sorted([3, 1])", answer="", meta={"instruction": "Sort it", "input": "[3, 1]"})
    header = ("Below is an instruction that describes a task. Write a response that appropriately completes "
              "the request.\n\n")
    assert prompt_for(alpaca) == header + "### Instruction:\nSort it\n\n### Input:\n[3, 1]\n\n### Response:\n"
    no_input = Record(id="codealpaca/x/1", benchmark="codealpaca", split="train", question="Say hi",
                      target="print('hi')", answer="", meta={"instruction": "Say hi", "input": ""})
    assert prompt_for(no_input) == header + "### Instruction:\nSay hi\n\n### Response:\n"


def test_random_shots_are_seeded_and_exclude_the_query():
    pool = [gsm(i) for i in range(50)]
    a = random_shots(pool, 8, seed=3)
    assert a == random_shots(pool, 8, seed=3)
    assert a != random_shots(pool, 8, seed=4)
    assert len({r.id for r in a}) == 8
    excluded = {r.id for r in a}
    b = random_shots(pool, 8, seed=3, exclude=excluded)
    assert not excluded & {r.id for r in b}
    with pytest.raises(ConfigError, match="shot pool"):
        random_shots(pool[:3], 4, seed=0)


def test_first_shots_same_subject_in_order_with_fallback():
    pool = [pro(0, "law"), pro(1, "math"), pro(2, "law"), pro(3, "math"), pro(4, "bio")]
    assert [r.id for r in first_shots(pool, 2, subject="law")] == [pool[0].id, pool[2].id]
    filled = first_shots(pool, 4, subject="law", fallback=True)
    assert [r.id for r in filled] == [pool[0].id, pool[2].id, pool[1].id, pool[3].id]
    with pytest.raises(ConfigError, match="law"):
        first_shots(pool, 3, subject="law")


def test_bad_records_raise_user_errors_naming_the_field():
    with pytest.raises(DataError, match="answer"):
        target_for(Record(id="m/1", benchmark="mmlu", split="test", question="q", target="E", answer="E",
                          choices=("a", "b", "c", "d"), subject="s"))
    with pytest.raises(DataError, match="benchmark"):
        prompt_for(Record(id="x/1", benchmark="nope", split="test", question="q", target="t", answer=""))
    with pytest.raises(DataError, match="test_list"):
        prompt_for(Record(id="mbpp/1", benchmark="mbpp", split="test", question="q", target="t", answer=""))
    with pytest.raises(DataError, match="cot_content"):
        prompt_for(pro(1, "m"), (Record(**{**pro(2, "m").__dict__, "meta": {}}),), cot=True)
    with pytest.raises(ConfigError, match="shots"):
        prompt_for(Record(id="HumanEval/1", benchmark="humaneval", split="test", question="q", target="t",
                          answer=""), (gsm(1),))
    with pytest.raises(ConfigError, match="is 'gsm8k'"):
        prompt_for(mmlu(0), (gsm(1),))
