"""CodeAlpaca (sahil280114/codealpaca): one JSON list of {instruction, input, output}.

Only a train split. Default file code_alpaca_2k.json; kw file= picks another (e.g. new_codealpaca.json).
`question` is the instruction, plus a blank line and the input when there is one. Ids are
"codealpaca/<file stem>/<index>" so items of different files never collide.
Rows whose `output` is blank are left out (nothing to train on: code_alpaca_2k.json has two, at indices 237
and 1859); the others keep their upstream index, so ids do not shift.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError
from . import hub, io
from .records import Record

NAME = "codealpaca"
SPLITS = ("train",)
KWARGS = frozenset({"file"})
DEFAULT_FILE = "code_alpaca_2k.json"
HUB_REPO, HUB_CONFIG = "sahil280114/codealpaca", None


def _check_file(file: str) -> str:
    if not isinstance(file, str) or not file or Path(file).name != file:
        raise ConfigError(f"codealpaca: file= must be a file name inside <data root>/codealpaca/, got {file!r}")
    return file


def build_record(row: Mapping[str, Any], *, split: str, index: int, loc: str, file: str = DEFAULT_FILE) -> Record:
    """One Record from an upstream row (file or hub)."""
    instruction = io.field(row, "instruction", loc)
    inp = io.field(row, "input", loc) if row.get("input") is not None else ""
    return Record(
        id=f"{NAME}/{Path(file).stem}/{index}",
        benchmark=NAME,
        split=split,
        question=f"{instruction}\n\n{inp}" if inp.strip() else instruction,
        target=io.field(row, "output", loc),
        answer="",
        meta={"instruction": instruction, "input": inp},
    )


def file_source(root: Path | None, split: str, *, file: str = DEFAULT_FILE) -> Path | None:
    return None if root is None else root / NAME / _check_file(file)


def _has_output(row: Mapping[str, Any]) -> bool:
    """False for an upstream row with a blank `output` (a training target of nothing)."""
    return not (isinstance(row, Mapping) and isinstance(row.get("output"), str) and not row["output"].strip())


def load_files(path: Path, split: str, *, file: str = DEFAULT_FILE) -> list[Record]:
    return [
        build_record(row, split=split, index=i, loc=io.where(path, line), file=file)
        for i, (line, row) in enumerate(io.read_json_list(path)) if _has_output(row)
    ]


def load_hub(split: str, *, file: str = DEFAULT_FILE) -> list[Record]:
    """The same file from the hub repo's data/ folder, so ids and items match the local copy."""
    rows = hub.fetch(NAME, HUB_REPO, HUB_CONFIG, split, data_files={split: f"data/{_check_file(file)}"})
    return [
        build_record(row, split=split, index=i, loc=hub.hub_where(HUB_REPO, split, i), file=file)
        for i, row in enumerate(rows) if _has_output(row)
    ]
