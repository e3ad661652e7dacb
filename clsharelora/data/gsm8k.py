"""GSM8K (openai/grade-school-math): JSON lines {question, answer}; answer = reasoning + "#### N".

`target` drops the `<<48/2=24>>` calculator notes (the model has no calculator, and the notes are not
text it should learn to emit; the GSM8K paper used them only for its calculator-augmented sampler).
lm-eval keeps the raw answer: pass keep_calc=True for that; the raw answer is also in meta["raw_answer"].
`answer` is the number after "####" with thousands commas removed ("1,080" -> "1080").
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from ..errors import DataError
from . import hub, io
from .records import Record

NAME = "gsm8k"
SPLITS = ("train", "test")
KWARGS = frozenset({"keep_calc"})
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


def file_source(root: Path | None, split: str, **kw: Any) -> Path | None:
    """The upstream file for `split` under the data root."""
    return None if root is None else root / NAME / f"{split}.jsonl"


def load_files(path: Path, split: str, *, keep_calc: bool = False) -> list[Record]:
    return [
        build_record(row, split=split, index=i, loc=io.where(path, line), keep_calc=keep_calc)
        for i, (line, row) in enumerate(io.read_jsonl(path))
    ]


def load_hub(split: str, *, keep_calc: bool = False) -> list[Record]:
    rows = hub.fetch(NAME, HUB_REPO, HUB_CONFIG, split)
    return [
        build_record(row, split=split, index=i, loc=hub.hub_where(HUB_REPO, split, i), keep_calc=keep_calc)
        for i, row in enumerate(rows)
    ]
