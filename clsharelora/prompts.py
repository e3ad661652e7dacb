"""Every prompt format in one place, so training (`prompt_for` + `target_for`) and evaluation see the same text.

Formats follow lm-evaluation-harness so scores are comparable with published numbers:

- gsm8k:    training / NLL / the seeded protocol: "Question: {q}\\nAnswer:" + " {chain of thought ... #### N}"
            (lm-eval `gsm8k` item format); CoT style (`cot=True`) = lm-eval `gsm8k_cot`: "Q: {q}\\nA:" after the
            8 fixed chain-of-thought exemplars of Wei et al. (2022) (`gsm8k_cot_exemplars`); shots joined by
            "\\n\\n" and followed by "\\n\\n" before the query. Training records loaded with
            train_prompt="sharelora_cot8" use the ShareLoRA authors' training prompt instead: their 8 CoT
            exemplars, "\\n\\nQuestion: {q}\\n\\nAnswer: " + the raw answer with "\\n####" -> " The final
            answer is" (Rain9876/ShareLoRA sharelora/lora_llama3_share.py lines 1136-1145). Records loaded
            with train_prompt="gsm8k_cot" train in the `gsm8k_cot` shape itself: "Q: {q}\\nA:" + " {reasoning as
            one paragraph} The answer is N." (the streams' default: trained on the text that is scored).
- mmlu:     "The following are multiple choice questions (with answers) about {subject}.\\n\\n" + shots +
            "{q}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:" + " X" (lm-eval `mmlu`, default template).
- mmlu_pro: letter style = the MMLU format with 3-10 options A-J (lm-eval `leaderboard_mmlu_pro` item format
            under MMLU's description: the project's own protocol); CoT style = lm-eval 0.4.13 `mmlu_pro`
            (description ending in one "\\n", "Question:\\n..\\nOptions:\\nA. {option.strip()}\\n..
            Answer: Let's think step by step." and shots ending in "The answer is (X).").
- humaneval: the raw code prompt; target = canonical solution.
- mbpp:     lm-eval's MBPP prompt; target = the reference code. With the loader's shape=humaneval
            (meta["shape"]), HumanEval's shape instead: the record's signature + docstring prompt; target =
            the body (data/humaneval_shape.py).
- codealpaca: the Alpaca instruction/input/response format; target = the output.
"""

from __future__ import annotations

import random
import re
import string
from typing import Iterable, Sequence

from .data.records import Record
from .errors import ConfigError, DataError

LETTERS = string.ascii_uppercase[:10]  # A..J: MMLU-Pro's widest option set
FEWSHOT_DELIMITER = "\n\n"

MC_DESCRIPTION = "The following are multiple choice questions (with answers) about {subject}.\n\n"
MMLU_PRO_COT_DESCRIPTION = (
    "The following are multiple choice questions (with answers) about {subject}. Think step by step and then "
    'finish your answer with "the answer is (X)" where X is the correct letter choice.\n'
)  # one "\n": lm-eval puts the first shot right after the description
MMLU_PRO_COT_CUE = "Answer: Let's think step by step."
MMLU_PRO_COT_UPSTREAM_CUE = "A: Let's think step by step. "

# The 8 chain-of-thought exemplars of Wei et al. (2022, chain-of-thought prompting) as lm-eval's `gsm8k_cot`
# task ships them (question, worked answer); the parity test checks them against lm-eval's YAML.
GSM8K_COT_EXEMPLARS: tuple[tuple[str, str], ...] = (
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
     "there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
     "been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
     "they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
     "Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. "
     "The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have "
     "now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. "
     "The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to "
     "thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers "
     "were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
     "balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he "
     "had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
     "left. 23 - 15 is 8. The answer is 8."),
)
MBPP_TEMPLATE = (
    "You are an expert Python programmer, and here is your task: {text} "
    "Your code should pass these tests:\n\n{tests}\n"
)
ALPACA_HEADER = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)

# The ShareLoRA authors' GSM8K training exemplars, verbatim from Rain9876/ShareLoRA sharelora/few_shot.py
# (GSM8K_8cot_json, lines 27-60): Wei et al.'s 8 chain-of-thought exemplars ending in "The final answer is N".
SHARELORA_GSM8K_COT8: tuple[tuple[str, str], ...] = (
    (
        'There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they '
        'are done, there will be 21 trees. How many trees did the grove workers plant today?',
        'There are 15 trees originally. Then there were 21 trees after some more were planted. So there '
        'must have been 21 - 15 = 6. The final answer is 6',
    ),
    (
        'If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking '
        'lot?',
        'There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The final answer is 5',
    ),
    (
        'Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left '
        'in total?',
        'Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After '
        'eating 35, they had 74 - 35 = 39. The final answer is 39',
    ),
    (
        'Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many '
        'lollipops did Jason give to Denny?',
        'Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 '
        '- 12 = 8. The final answer is 8',
    ),
    (
        'Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys '
        'does he have now?',
        'Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys.'
        ' 5 + 4 = 9. The final answer is 9',
    ),
    (
        'There were nine computers in the server room. Five more computers were installed each day, from '
        'monday to thursday. How many computers are now in the server room?',
        'There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = '
        '20 computers were added. 9 + 20 is 29. The final answer is 29',
    ),
    (
        'Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How '
        'many golf balls did he have at the end of wednesday?',
        'Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After '
        'losing 2 more, he had 35 - 2 = 33 golf balls. The final answer is 33',
    ),
    (
        'Olivia has $23. She bought five bagels for $3 each. How much money does she have left?',
        'Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - '
        '15 dollars left. 23 - 15 is 8. The final answer is 8',
    ),
)
SHARELORA_GSM8K_CONTEXT = "\n\n".join(f"Question: {q}\n\nAnswer: {a}" for q, a in SHARELORA_GSM8K_COT8)

BENCHMARKS = ("gsm8k", "mmlu", "mmlu_pro", "humaneval", "mbpp", "codealpaca")


def _subject_text(record: Record) -> str:
    return record.subject.replace("_", " ").strip()


def _options(record: Record, max_options: int, *, strip: bool = False) -> str:
    """"\nA. ..\nB. .." lines; `strip` as lm-eval's `mmlu_pro` does (`opt.strip()`), MMLU keeps the text."""
    if not 2 <= len(record.choices) <= max_options:
        raise DataError(
            f"{record.id}: field 'choices' holds {len(record.choices)} options; "
            f"{record.benchmark} needs 2..{max_options}"
        )
    return "".join(f"\n{LETTERS[i]}. {choice.strip() if strip else choice}"
                   for i, choice in enumerate(record.choices))


def _letter_target(record: Record) -> str:
    letter = record.answer.strip()
    if len(letter) != 1 or letter not in LETTERS[: len(record.choices)]:
        raise DataError(
            f"{record.id}: field 'answer' is {record.answer!r}, not a letter among the "
            f"{len(record.choices)} options {LETTERS[:len(record.choices)]}"
        )
    return " " + letter


def _mc_query(record: Record) -> str:
    """MMLU item text: question stripped (as lm-eval's `question.strip()`), options, "Answer:"."""
    max_options = 4 if record.benchmark == "mmlu" else len(LETTERS)
    return f"{record.question.strip()}{_options(record, max_options)}\nAnswer:"


def _mmlu_pro_cot_query(record: Record) -> str:
    """lm-eval `mmlu_pro` item: "Question:\n{q}\nOptions:\nA. {opt.strip()}\n..\n" + the CoT cue."""
    return f"Question:\n{record.question}\nOptions:{_options(record, len(LETTERS), strip=True)}\n{MMLU_PRO_COT_CUE}"


def _mmlu_pro_cot_shot(record: Record) -> str:
    """A CoT exemplar as lm-eval builds it: the item with its cue, " ", then the upstream `cot_content` without
    its leading "A: Let's think step by step. " (lm-eval's `fewshot_to_target`)."""
    cot = str(record.meta.get("cot_content") or "")
    if not cot.strip():
        raise DataError(f"{record.id}: field 'cot_content' is empty; MMLU-Pro CoT shots need a worked answer")
    return _mmlu_pro_cot_query(record) + " " + cot.replace(MMLU_PRO_COT_UPSTREAM_CUE, "")


def gsm8k_cot_exemplars(k: int = len(GSM8K_COT_EXEMPLARS)) -> tuple[Record, ...]:
    """The first `k` of the 8 fixed chain-of-thought exemplars (lm-eval `gsm8k_cot`, sampler first_n)."""
    if not 0 <= k <= len(GSM8K_COT_EXEMPLARS):
        raise ConfigError(f"shots must be 0..{len(GSM8K_COT_EXEMPLARS)} for the gsm8k_cot exemplars, got {k}")
    return tuple(
        Record(id=f"gsm8k/cot_exemplars/{i}", benchmark="gsm8k", split="cot_exemplars", question=q, target=t,
               answer=t.rsplit("The answer is ", 1)[1].rstrip("."))
        for i, (q, t) in enumerate(GSM8K_COT_EXEMPLARS[:k])
    )


def _mbpp_prompt(record: Record) -> str:
    tests = record.meta.get("test_list")
    if not tests or isinstance(tests, str):
        raise DataError(f"{record.id}: field 'test_list' must be a non-empty list of assert lines")
    return MBPP_TEMPLATE.format(text=record.question.strip(), tests="\n".join(tests))


def _alpaca_prompt(record: Record) -> str:
    instruction = str(record.meta.get("instruction", record.question)).strip()
    extra = str(record.meta.get("input", "") or "").strip()
    if extra:
        return f"{ALPACA_HEADER}\n\n### Instruction:\n{instruction}\n\n### Input:\n{extra}\n\n### Response:\n"
    return f"{ALPACA_HEADER}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


def _check_benchmark(record: Record) -> None:
    if record.benchmark not in BENCHMARKS:
        raise DataError(f"{record.id}: field 'benchmark' is {record.benchmark!r}; known: {', '.join(BENCHMARKS)}")


def _query(record: Record, cot: bool) -> str:
    """The item alone (no description, no shots, no target)."""
    b = record.benchmark
    if b == "gsm8k" and record.meta.get("train_prompt") == "sharelora_cot8":
        return f"{SHARELORA_GSM8K_CONTEXT}\n\nQuestion: {record.question}\n\nAnswer: "
    if b == "gsm8k" and record.meta.get("train_prompt") == "gsm8k_cot":
        return f"Q: {record.question}\nA:"
    if b == "gsm8k":
        return f"Q: {record.question}\nA:" if cot else f"Question: {record.question}\nAnswer:"
    if b == "mmlu" or (b == "mmlu_pro" and not cot):
        return _mc_query(record)
    if b == "mmlu_pro":
        return _mmlu_pro_cot_query(record)
    if b == "humaneval":
        return record.question
    if b == "mbpp":
        return record.question if record.meta.get("shape") == "humaneval" else _mbpp_prompt(record)
    return _alpaca_prompt(record)


def gsm8k_cot_answer(record: Record) -> str:
    """A GSM8K solution in the shape of lm-eval `gsm8k_cot`'s exemplars: the reasoning lines joined into one
    paragraph, then "The answer is N." (N as after "####"), which is what that protocol's strict-match reads."""
    reasoning = record.target.rsplit("####", 1)[0]
    text = " ".join(line.strip() for line in reasoning.splitlines() if line.strip())
    return f"{text} The answer is {record.answer}."


def target_for(record: Record) -> str:
    """The reference continuation of `prompt_for(record)`: training target and teacher-forced NLL reference.

    gsm8k: " " + chain of thought ending in "#### N"; mmlu/mmlu_pro: " X" (the gold letter); code: the code.
    """
    _check_benchmark(record)
    if record.benchmark in ("mmlu", "mmlu_pro"):
        return _letter_target(record)
    if not record.target:
        raise DataError(f"{record.id}: field 'target' is empty")
    if record.benchmark == "gsm8k" and record.meta.get("train_prompt") == "sharelora_cot8":
        return re.sub(r"\n####", " The final answer is", str(record.meta["raw_answer"]))
    if record.benchmark == "gsm8k" and record.meta.get("train_prompt") == "gsm8k_cot":
        return " " + gsm8k_cot_answer(record)
    if record.benchmark == "gsm8k":
        return " " + record.target.strip()
    return record.target


def _shot_text(shot: Record, cot: bool) -> str:
    if shot.benchmark == "mmlu_pro" and cot:
        return _mmlu_pro_cot_shot(shot)
    if shot.benchmark == "gsm8k" and cot:
        return _query(shot, cot) + " " + shot.target
    return _query(shot, cot) + target_for(shot)


def context_for(record: Record, shots: Sequence[Record] = (), *, cot: bool = False) -> str:
    """The part of `prompt_for(record, shots)` before the item itself: task description (MMLU/MMLU-Pro) and
    the solved shots. Items with equal contexts can share its KV cache during evaluation."""
    _check_benchmark(record)
    if cot and record.benchmark not in ("gsm8k", "mmlu_pro"):
        raise ConfigError(f"cot prompts exist only for gsm8k and mmlu_pro, not {record.benchmark!r}")
    if record.benchmark == "humaneval" and shots:
        raise ConfigError("humaneval prompts take no shots (the raw code prompt is the whole context)")
    for shot in shots:
        if shot.benchmark != record.benchmark:
            raise ConfigError(f"shot {shot.id} is {shot.benchmark!r}, the query {record.id} is {record.benchmark!r}")
    description = ""
    if record.benchmark in ("mmlu", "mmlu_pro"):
        template = MMLU_PRO_COT_DESCRIPTION if cot else MC_DESCRIPTION
        description = template.format(subject=_subject_text(record))
    return description + "".join(_shot_text(s, cot) + FEWSHOT_DELIMITER for s in shots)


def prompt_for(record: Record, shots: Sequence[Record] = (), *, cot: bool = False) -> str:
    """The full prompt of `record`: task description (MMLU/MMLU-Pro), `shots` solved exemplars, then the query.

    `cot` selects lm-eval's chain-of-thought formats: `gsm8k_cot` ("Q: ..\\nA:") for gsm8k, `mmlu_pro` for
    mmlu_pro; training and the NLL reference use the plain format (`cot=False`). HumanEval takes no shots
    (the raw prompt is the whole context, as in the original benchmark).
    """
    return context_for(record, shots, cot=cot) + _query(record, cot)


def random_shots(pool: Sequence[Record], k: int, *, seed: int, exclude: Iterable[str] = ()) -> tuple[Record, ...]:
    """`k` exemplars drawn without replacement from `pool`, fixed by `seed` (GSM8K: from the train split)."""
    if k < 0:
        raise ConfigError(f"shots must be >= 0, got {k}")
    excluded = set(exclude)
    candidates = [r for r in pool if r.id not in excluded]
    if k > len(candidates):
        raise ConfigError(f"shots={k} but the shot pool holds only {len(candidates)} items")
    return tuple(random.Random(seed).sample(candidates, k))


def first_shots(pool: Sequence[Record], k: int, *, subject: str, fallback: bool = False) -> tuple[Record, ...]:
    """The first `k` exemplars of `subject` in file order (lm-eval's `first_n` sampler); with `fallback`, fill
    up from other subjects in file order when the subject has fewer (MMLU-Pro's 70-item validation pool)."""
    if k < 0:
        raise ConfigError(f"shots must be >= 0, got {k}")
    same = [r for r in pool if r.subject == subject][:k]
    if len(same) < k and fallback:
        same += [r for r in pool if r.subject != subject][: k - len(same)]
    if len(same) < k:
        raise ConfigError(
            f"shots={k} but the shot pool holds only {len(same)} items for subject {subject!r}"
            + ("" if fallback else " (no fallback to other subjects for this task)")
        )
    return tuple(same)
