"""GSM8K (openai/grade-school-math): JSON lines {question, answer}; answer = reasoning + "#### N".

`target` drops the `<<48/2=24>>` calculator notes (the model has no calculator, and the notes are not
text it should learn to emit; the GSM8K paper used them only for its calculator-augmented sampler).
lm-eval keeps the raw answer: pass keep_calc=True for that; the raw answer is also in meta["raw_answer"].
`answer` is the number after "####" with thousands commas removed ("1,080" -> "1080").
train_prompt="gsm8k_cot" marks records for the format the default evaluation protocol (lm-eval `gsm8k_cot`)
scores: "Q: {q}\nA:" + " {reasoning as one paragraph} The answer is N." -- so a model is trained on exactly
the text its strict-match reads. train_prompt="sharelora_cot8" marks records for the ShareLoRA authors'
training prompt (8 CoT exemplars in the input, raw answer with "#### N" as "The final answer is N"; rendered
by prompts.py, see docs/sharelora.md).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from dataclasses import replace

from ..errors import ConfigError, DataError
from . import hub, io
from .records import Record

NAME = "gsm8k"
SPLITS = ("train", "test")
KWARGS = frozenset({"keep_calc", "train_prompt"})
TRAIN_PROMPTS = ("plain", "gsm8k_cot", "sharelora_cot8")
HUB_REPO, HUB_CONFIG = "openai/gsm8k", "main"

_CALC = re.compile(r"<<[^<>]*>>")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def final_answer(solution: str, loc: str = "") -> str:
    """The normalised number after the last "####" ("1,080" -> "1080"); DataError if absent/not a number."""
    if "####" not in solution:
        raise DataError(f"{loc}: field 'answer' has no '#### <number>' final answer")
    raw = solution.rsplit("####", 1)[1].strip()
    num = raw.replace(",", "").replace("$", "").strip()
    if not _NUMBER.fullmatch(num):
        raise DataError(f"{loc}: final answer after '####' is not a number: {raw!r}")
    return num


def strip_calc(solution: str) -> str:
    """The solution without its <<expr=value>> calculator notes."""
    return _CALC.sub("", solution)


def build_record(row: Mapping[str, Any], *, split: str, index: int, loc: str, keep_calc: bool = False) -> Record:
    """One Record from an upstream row (file or hub); index = 0-based position in the split."""
    question = io.field(row, "question", loc)
    solution = io.field(row, "answer", loc)
    return Record(
        id=f"{NAME}/{split}/{index}",
        benchmark=NAME,
        split=split,
        question=question,
        target=solution if keep_calc else strip_calc(solution),
        answer=final_answer(solution, loc),
        meta={"raw_answer": solution},
    )


def _marked(records: list[Record], train_prompt: str) -> list[Record]:
    if train_prompt not in TRAIN_PROMPTS:
        raise ConfigError(f"gsm8k: train_prompt= must be one of {', '.join(TRAIN_PROMPTS)}, got {train_prompt!r}")
    if train_prompt == "plain":
        return records
    return [replace(r, meta=dict(r.meta, train_prompt=train_prompt)) for r in records]


def file_source(root: Path | None, split: str, **kw: Any) -> Path | None:
    """The upstream file for `split` under the data root."""
    return None if root is None else root / NAME / f"{split}.jsonl"


def load_files(path: Path, split: str, *, keep_calc: bool = False, train_prompt: str = "plain") -> list[Record]:
    return _marked([
        build_record(row, split=split, index=i, loc=io.where(path, line), keep_calc=keep_calc)
        for i, (line, row) in enumerate(io.read_jsonl(path))
    ], train_prompt)


def load_hub(split: str, *, keep_calc: bool = False, train_prompt: str = "plain") -> list[Record]:
    rows = hub.fetch(NAME, HUB_REPO, HUB_CONFIG, split)
    return _marked([
        build_record(row, split=split, index=i, loc=hub.hub_where(HUB_REPO, split, i), keep_calc=keep_calc)
        for i, row in enumerate(rows)
    ], train_prompt)
