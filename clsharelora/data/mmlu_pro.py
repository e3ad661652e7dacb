"""MMLU-Pro (TIGER-Lab): JSON lines {question_id, question, options[3..10], answer "A".."J", answer_index,
cot_content, category, src}; splits validation (70, with chain of thought: the few-shot pool) and test.

Gold is the `answer` letter. answer_index is kept in meta as is: upstream question 3983 has answer "C"
but answer_index 1, so the two are not required to agree. A letter outside A..J or past the last
option is a DataError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..errors import DataError
from . import hub, io
from .records import Record

NAME = "mmlu_pro"
SPLITS = ("validation", "test")
KWARGS: frozenset[str] = frozenset()
HUB_REPO, HUB_CONFIG = "TIGER-Lab/MMLU-Pro", None
LETTERS = "ABCDEFGHIJ"


def build_record(row: Mapping[str, Any], *, split: str, index: int, loc: str) -> Record:
    """One Record from an upstream row (file or hub); id "mmlu_pro/<split>/<question_id>"."""
    qid = io.field(row, "question_id", loc, int)
    options = io.str_list(row, "options", loc)
    if not 1 <= len(options) <= len(LETTERS):
        raise DataError(f"{loc}: field 'options' holds {len(options)} options (expected 1..{len(LETTERS)})")
    letter = io.field(row, "answer", loc).strip()
    if len(letter) != 1 or letter not in LETTERS:
        raise DataError(f"{loc}: unknown answer letter {letter!r} (expected one of A..J)")
    if LETTERS.index(letter) >= len(options):
        raise DataError(f"{loc}: answer letter {letter!r} is beyond the {len(options)} options")
    return Record(
        id=f"{NAME}/{split}/{qid}",
        benchmark=NAME,
        split=split,
        question=io.field(row, "question", loc),
        target=letter,
        answer=letter,
        choices=tuple(options),
        subject=io.field(row, "category", loc),
        meta={
            "question_id": qid,
            "cot_content": io.field(row, "cot_content", loc),
            "src": io.field(row, "src", loc),
            "answer_index": io.field(row, "answer_index", loc, int),
        },
    )


def file_source(root: Path | None, split: str, **kw: Any) -> Path | None:
    return None if root is None else root / NAME / f"{split}.jsonl"


def load_files(path: Path, split: str) -> list[Record]:
    return [build_record(row, split=split, index=i, loc=io.where(path, line)) for i, (line, row) in enumerate(io.read_jsonl(path))]


def load_hub(split: str) -> list[Record]:
    rows = hub.fetch(NAME, HUB_REPO, HUB_CONFIG, split)
    return [build_record(row, split=split, index=i, loc=hub.hub_where(HUB_REPO, split, i)) for i, row in enumerate(rows)]
