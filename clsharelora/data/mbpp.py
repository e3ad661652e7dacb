"""MBPP (google-research): mbpp.jsonl {text, code, task_id, test_setup_code, test_list, challenge_test_list}.

Splits by task_id as in the MBPP paper: prompt 1-10, test 11-510, validation 511-600, train 601-974.
`target` is the code with CRLF/CR line endings turned into LF (upstream code uses "\\r\\n"; same program,
and the model should not learn to emit "\\r"); tests in meta are unchanged.

Option shape= picks the prompt shape: "mbpp" (default; task sentence + asserts -> whole program, lm-eval's
MBPP prompt) or "humaneval" (signature + docstring -> body, HumanEval's shape; see humaneval_shape.py).
Items with no faithful HumanEval shape are left out and counted on the "clsharelora.data" logger.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError
from . import hub, io
from .humaneval_shape import convert_all
from .records import Record

NAME = "mbpp"
SPLITS = ("train", "validation", "test", "prompt")
KWARGS: frozenset[str] = frozenset({"shape"})
SHAPES = ("mbpp", "humaneval")
HUB_REPO, HUB_CONFIG = "google-research-datasets/mbpp", "full"
TASK_IDS = {"prompt": range(1, 11), "test": range(11, 511), "validation": range(511, 601), "train": range(601, 975)}


def build_record(row: Mapping[str, Any], *, split: str, index: int, loc: str) -> Record:
    """One Record from an upstream row (file or hub); id "mbpp/<task_id>"."""
    task_id = io.field(row, "task_id", loc, int)
    return Record(
        id=f"{NAME}/{task_id}",
        benchmark=NAME,
        split=split,
        question=io.field(row, "text", loc),
        target=io.field(row, "code", loc).replace("\r\n", "\n").replace("\r", "\n"),
        answer="",
        meta={
            "task_id": task_id,
            "test_list": io.str_list(row, "test_list", loc),
            "test_setup_code": io.field(row, "test_setup_code", loc),
            "challenge_test_list": io.str_list(row, "challenge_test_list", loc),
        },
    )


def _in_split(row: Mapping[str, Any], split: str, loc: str) -> bool:
    return io.field(row, "task_id", loc, int) in TASK_IDS[split]


def _check_shape(shape: Any) -> str:
    if shape not in SHAPES:
        raise ConfigError(f"mbpp: shape= must be one of {', '.join(SHAPES)}, got {shape!r}")
    return shape


def _shaped(records: list[Record], split: str, shape: str) -> list[Record]:
    if shape == "mbpp":
        return records
    converted, skipped = convert_all(records)
    if skipped:
        reasons = "; ".join(f"{n}x {why}" for why, n in Counter(why for _, why in skipped).most_common())
        logging.getLogger("clsharelora.data").warning(
            "mbpp %s (shape=humaneval): %d of %d items left out: %s", split, len(skipped), len(records), reasons)
    return converted


def file_source(root: Path | None, split: str, **kw: Any) -> Path | None:
    """mbpp.jsonl under the data root (one file holds every split)."""
    _check_shape(kw.get("shape", "mbpp"))
    return None if root is None else root / NAME / "mbpp.jsonl"


def load_files(path: Path, split: str, *, shape: str = "mbpp") -> list[Record]:
    out = []
    for line, row in io.read_jsonl(path):
        loc = io.where(path, line)
        if _in_split(row, split, loc):
            out.append(build_record(row, split=split, index=len(out), loc=loc))
    return _shaped(out, split, _check_shape(shape))


def load_hub(split: str, *, shape: str = "mbpp") -> list[Record]:
    _check_shape(shape)
    rows = hub.fetch(NAME, HUB_REPO, HUB_CONFIG, split)
    records = [build_record(row, split=split, index=i, loc=hub.hub_where(HUB_REPO, split, i)) for i, row in enumerate(rows)]
    return _shaped(records, split, shape)
