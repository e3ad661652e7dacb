"""The HF-hub path: rows from an in-memory datasets.Dataset map to the same Records as the files."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")

from clsharelora.data import load_benchmark  # noqa: E402
from clsharelora.errors import DataError  # noqa: E402
from clsharelora.paths import data_root  # noqa: E402


@pytest.fixture(scope="module")
def root() -> Path:
    try:
        return data_root()
    except DataError as exc:
        pytest.skip(str(exc))


def fake_hub(monkeypatch, expect: tuple, rows: list[dict], calls: list | None = None):
    """Replace datasets.load_dataset with one serving `rows` for exactly (repo, config, split[, kwargs])."""

    def load_dataset(repo, config=None, *, split=None, **kwargs):
        got = (repo, config, split, kwargs) if len(expect) == 4 else (repo, config, split)
        assert got == expect, got
        if calls is not None:
            calls.append(got)
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)


def _jsonl(path: Path, k: int) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(next(f)) for _ in range(k)]


def test_gsm8k_hub_equals_files(root, monkeypatch):
    fake_hub(monkeypatch, ("openai/gsm8k", "main", "test"), _jsonl(root / "gsm8k/test.jsonl", 4))
    assert load_benchmark("gsm8k", "test", source="hub") == load_benchmark("gsm8k", "test", root=root)[:4]


def test_humaneval_hub_equals_files(root, monkeypatch):
    fake_hub(monkeypatch, ("openai/openai_humaneval", None, "test"), _jsonl(root / "humaneval/HumanEval.jsonl.gz", 3))
    assert load_benchmark("humaneval", "test", source="hub") == load_benchmark("humaneval", "test", root=root)[:3]


def test_mbpp_hub_equals_files(root, monkeypatch):
    rows = [json.loads(line) for line in open(root / "mbpp/mbpp.jsonl", encoding="utf-8")]
    train = [r for r in rows if 601 <= r["task_id"] <= 974][:3]
    fake_hub(monkeypatch, ("google-research-datasets/mbpp", "full", "train"), train)
    assert load_benchmark("mbpp", "train", source="hub") == load_benchmark("mbpp", "train", root=root)[:3]


def test_codealpaca_hub_reads_the_same_file(root, monkeypatch):
    rows = json.loads((root / "codealpaca/code_alpaca_2k.json").read_text())[:3]
    fake_hub(monkeypatch, ("sahil280114/codealpaca", None, "train", {"data_files": {"train": "data/code_alpaca_2k.json"}}), rows)
    assert load_benchmark("codealpaca", "train", source="hub") == load_benchmark("codealpaca", "train", root=root)[:3]


def test_mmlu_hub_equals_files(root, monkeypatch):
    rows = []
    for subject in ("astronomy", "anatomy", "virology"):  # hub order need not be alphabetical
        with open(root / f"mmlu/val/{subject}_val.csv", newline="", encoding="utf-8") as f:
            for q, a, b, c, d, letter in list(csv.reader(f))[:3]:
                rows.append({"question": q, "subject": subject, "choices": [a, b, c, d], "answer": "ABCD".index(letter)})
    fake_hub(monkeypatch, ("cais/mmlu", "all", "validation"), rows)
    got = load_benchmark("mmlu", "val", source="hub", subjects=["anatomy", "astronomy"])
    files = load_benchmark("mmlu", "val", root=root, subjects=["anatomy", "astronomy"])
    want = [r for r in files if int(r.id.rsplit("/", 1)[1]) < 3]
    assert got == want and len(got) == 6


def test_mmlu_pro_hub_equals_files(root, monkeypatch):
    fake_hub(monkeypatch, ("TIGER-Lab/MMLU-Pro", None, "validation"), _jsonl(root / "mmlu_pro/validation.jsonl", 5))
    assert load_benchmark("mmlu_pro", "validation", source="hub") == load_benchmark("mmlu_pro", "validation", root=root)[:5]


def test_auto_uses_files_when_present_and_hub_when_absent(root, monkeypatch, tmp_path):
    calls: list = []
    fake_hub(monkeypatch, ("openai/gsm8k", "main", "train"), _jsonl(root / "gsm8k/train.jsonl", 2), calls)
    assert len(load_benchmark("gsm8k", "train", root=root)) == 7473 and calls == []
    got = load_benchmark("gsm8k", "train", root=tmp_path)  # an empty data root: falls back to the hub
    assert calls and got == load_benchmark("gsm8k", "train", root=root)[:2]


def test_hub_failure_names_the_missing_file(monkeypatch, tmp_path):
    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"(?s)gsm8k/test\.jsonl.*--data-root.*openai/gsm8k.*no network"):
        load_benchmark("gsm8k", "test", root=tmp_path)
    with pytest.raises(DataError, match="mmlu_pro/test.jsonl"):
        load_benchmark("mmlu_pro", "test", root=tmp_path, source="files")


def test_bad_hub_row_is_a_data_error(monkeypatch):
    fake_hub(monkeypatch, ("cais/mmlu", "all", "test"), [{"question": "q", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 4}])
    with pytest.raises(DataError, match=r"cais/mmlu\[test\]:row 0.*answer index 4"):
        load_benchmark("mmlu", "test", source="hub")
