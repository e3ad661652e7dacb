"""MMLU (hendrycks/test, data.tar layout): <split>/<subject>_<split>.csv, headerless
`question,A,B,C,D,answer_letter`, quoted fields may span lines (read with the csv module).

Splits dev (5 per subject, the few-shot pool), val, test. Records come subject by subject in
alphabetical order, each file in its own order; kw subjects= restricts to a list of subjects.
Hub fallback: cais/mmlu config "all" (split "val" is its "validation"; answers are 0..3 there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import ConfigError, DataError
from . import hub, io
from .records import Record

NAME = "mmlu"
SPLITS = ("dev", "val", "test")
KWARGS = frozenset({"subjects"})
HUB_REPO, HUB_CONFIG = "cais/mmlu", "all"
HUB_SPLIT = {"dev": "dev", "val": "validation", "test": "test"}
LETTERS = ("A", "B", "C", "D")
SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology college_chemistry "
    "college_computer_science college_mathematics college_medicine college_physics computer_security "
    "conceptual_physics econometrics electrical_engineering elementary_mathematics formal_logic global_facts "
    "high_school_biology high_school_chemistry high_school_computer_science high_school_european_history "
    "high_school_geography high_school_government_and_politics high_school_macroeconomics "
    "high_school_mathematics high_school_microeconomics high_school_physics high_school_psychology "
    "high_school_statistics high_school_us_history high_school_world_history human_aging human_sexuality "
    "international_law jurisprudence logical_fallacies machine_learning management marketing medical_genetics "
    "miscellaneous moral_disputes moral_scenarios nutrition philosophy prehistory professional_accounting "
    "professional_law professional_medicine professional_psychology public_relations security_studies sociology "
    "us_foreign_policy virology world_religions"
).split()


def select_subjects(subjects: Iterable[str] | None) -> list[str]:
    """The requested subjects in canonical (alphabetical) order; ConfigError on unknown names."""
    if subjects is None:
        return list(SUBJECTS)
    if isinstance(subjects, str) or not all(isinstance(s, str) for s in subjects):
        raise ConfigError(f"mmlu: subjects= must be a list of subject names, got {subjects!r}")
    wanted = set(subjects)
    unknown = sorted(wanted - set(SUBJECTS))
    if unknown:
        raise ConfigError(f"mmlu: unknown subjects {unknown}; known: {', '.join(SUBJECTS)}")
    if not wanted:
        raise ConfigError("mmlu: subjects= is empty")
    return [s for s in SUBJECTS if s in wanted]


def build_record(fields: Sequence[str], *, split: str, subject: str, index: int, loc: str) -> Record:
    """One Record from (question, A, B, C, D, letter); index = 0-based row within the subject's file."""
    if len(fields) != 6:
        raise DataError(f"{loc}: expected 6 columns (question,A,B,C,D,answer), got {len(fields)}")
    question, *choices, letter = fields
    letter = letter.strip()
    if letter not in LETTERS:
        raise DataError(f"{loc}: unknown answer letter {letter!r} (expected one of A, B, C, D)")
    return Record(
        id=f"{NAME}/{split}/{subject}/{index}",
        benchmark=NAME,
        split=split,
        question=question,
        target=letter,
        answer=letter,
        choices=tuple(choices),
        subject=subject,
    )


def file_source(root: Path | None, split: str, **kw: Any) -> Path | None:
    """The split's folder under the data root."""
    return None if root is None else root / NAME / split


def load_files(path: Path, split: str, *, subjects: Iterable[str] | None = None) -> list[Record]:
    chosen = select_subjects(subjects)
    files = [path / f"{s}_{split}.csv" for s in chosen]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(f"mmlu: {len(missing)} subject file(s) missing in {path}: {', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''} (expected <subject>_{split}.csv; see docs/data.md)")
    out = []
    for subject, f in zip(chosen, files):
        for i, (line, row) in enumerate(io.read_csv(f, 6)):
            out.append(build_record(row, split=split, subject=subject, index=i, loc=io.where(f, line)))
    return out


def hub_fields(row: dict, loc: str) -> tuple[str, ...]:
    """A cais/mmlu row {question, subject, choices[4], answer 0..3} as the CSV's 6 fields."""
    choices = io.str_list(row, "choices", loc)
    answer = io.field(row, "answer", loc, int)
    if len(choices) != 4:
        raise DataError(f"{loc}: field 'choices' should hold 4 options, got {len(choices)}")
    if not 0 <= answer < 4:
        raise DataError(f"{loc}: unknown answer index {answer} (expected 0..3)")
    return (io.field(row, "question", loc), *choices, LETTERS[answer])


def load_hub(split: str, *, subjects: Iterable[str] | None = None) -> list[Record]:
    """Hub rows grouped by subject; per-subject indices follow the hub order (= the CSV order)."""
    chosen = select_subjects(subjects)
    rows = hub.fetch(NAME, HUB_REPO, HUB_CONFIG, HUB_SPLIT[split])
    by_subject: dict[str, list[Record]] = {s: [] for s in chosen}
    for i, row in enumerate(rows):
        loc = hub.hub_where(HUB_REPO, HUB_SPLIT[split], i)
        subject = io.field(row, "subject", loc)
        if subject not in SUBJECTS:
            raise DataError(f"{loc}: unknown subject {subject!r}")
        if subject in by_subject:
            recs = by_subject[subject]
            recs.append(build_record(hub_fields(row, loc), split=split, subject=subject, index=len(recs), loc=loc))
    return [r for s in chosen for r in by_subject[s]]
