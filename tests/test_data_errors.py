"""Broken inputs in tmp_path: every one is a DataError/ConfigError naming the file and line (or field)."""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path

import pytest

from clsharelora.data import known_benchmarks, load_benchmark
from clsharelora.data.io import read_json_list
from clsharelora.errors import ConfigError, DataError

GOOD_GSM = {"question": "q?", "answer": "2+2 = <<2+2=4>>4\n#### 4"}
GOOD_PRO = {"question_id": 1, "question": "q", "options": ["a", "b", "c", "d"], "answer": "B", "answer_index": 1,
            "cot_content": "", "category": "math", "src": "s"}


def write(root: Path, rel: str, text: str) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


def jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def raises_at(match_file: str, line: int | None, fn, *extra: str):
    with pytest.raises(DataError) as ei:
        fn()
    msg = str(ei.value)
    assert match_file in msg, msg
    if line is not None:
        assert re.search(rf"{re.escape(match_file)}:{line}\b", msg), msg
    for e in extra:
        assert e in msg, msg
    return msg


def test_missing_file_says_which_and_how(tmp_path):
    for name, rel in [("gsm8k", "gsm8k/train.jsonl"), ("mbpp", "mbpp/mbpp.jsonl"), ("mmlu_pro", "mmlu_pro/test.jsonl")]:
        split = "test" if name == "mmlu_pro" else "train"
        raises_at(rel, None, lambda: load_benchmark(name, split, root=tmp_path, source="files"),
                  "--data-root", "CLSHARELORA_DATA", "hub")
    raises_at("mmlu/test", None, lambda: load_benchmark("mmlu", "test", root=tmp_path, source="files"))
    write(tmp_path, "mmlu/test/anatomy_test.csv", "q,a,b,c,d,A\n")
    raises_at("mmlu/test", None, lambda: load_benchmark("mmlu", "test", root=tmp_path, source="files"), "astronomy_test.csv")
    with pytest.raises(DataError, match="not a directory"):
        load_benchmark("gsm8k", "test", root=tmp_path / "nope")


def test_corrupt_json_line(tmp_path):
    write(tmp_path, "gsm8k/train.jsonl", jsonl(GOOD_GSM, GOOD_GSM, '{"question": "q", "answer": ', GOOD_GSM))
    raises_at("train.jsonl", 3, lambda: load_benchmark("gsm8k", "train", root=tmp_path), "corrupt JSON")
    write(tmp_path, "gsm8k/test.jsonl", jsonl(GOOD_GSM, "[1, 2]"))
    raises_at("test.jsonl", 2, lambda: load_benchmark("gsm8k", "test", root=tmp_path), "JSON object")


def test_corrupt_gzip_jsonl(tmp_path):
    p = tmp_path / "humaneval" / "HumanEval.jsonl.gz"
    p.parent.mkdir()
    row = {"task_id": "HumanEval/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n", "test": "", "entry_point": "f"}
    p.write_bytes(gzip.compress(jsonl(row, "{oops").encode()))
    raises_at("HumanEval.jsonl.gz", 2, lambda: load_benchmark("humaneval", "test", root=tmp_path))
    p.write_bytes(gzip.compress(jsonl(row, {k: v for k, v in row.items() if k != "test"} | {"task_id": "HumanEval/1"}).encode()))
    raises_at("HumanEval.jsonl.gz", 2, lambda: load_benchmark("humaneval", "test", root=tmp_path), "'test'")


def test_missing_fields_name_line_and_field(tmp_path):
    write(tmp_path, "gsm8k/train.jsonl", jsonl(GOOD_GSM, GOOD_GSM, {"question": "q"}))
    raises_at("train.jsonl", 3, lambda: load_benchmark("gsm8k", "train", root=tmp_path), "'answer'")
    mb = {"text": "t", "code": "c", "task_id": 601, "test_setup_code": "", "test_list": ["assert 1"], "challenge_test_list": []}
    write(tmp_path, "mbpp/mbpp.jsonl", jsonl(mb, {k: v for k, v in mb.items() if k != "test_list"} | {"task_id": 602}))
    raises_at("mbpp.jsonl", 2, lambda: load_benchmark("mbpp", "train", root=tmp_path), "'test_list'")
    write(tmp_path, "mmlu_pro/test.jsonl", jsonl(GOOD_PRO, {k: v for k, v in GOOD_PRO.items() if k != "options"}))
    raises_at("test.jsonl", 2, lambda: load_benchmark("mmlu_pro", "test", root=tmp_path), "'options'")
    write(tmp_path, "mmlu_pro/validation.jsonl", jsonl(GOOD_PRO | {"question_id": "x"}))
    raises_at("validation.jsonl", 1, lambda: load_benchmark("mmlu_pro", "validation", root=tmp_path), "'question_id'", "int")


def test_json_list_item_lines(tmp_path):
    items = [{"instruction": "i0", "input": "", "output": "o0"}, {"instruction": "i1", "input": "x", "output": "o1"},
             {"instruction": "i2", "input": ""}]
    text = json.dumps(items, indent=4)  # the third item starts on line 12 (1 + 5 + 5 + 1)
    write(tmp_path, "codealpaca/code_alpaca_2k.json", text)
    want_line = text.splitlines().index("    {", 1 + 5 + 5 - 1) + 1
    raises_at("code_alpaca_2k.json", want_line, lambda: load_benchmark("codealpaca", "train", root=tmp_path), "'output'")
    write(tmp_path, "codealpaca/broken.json", '[\n  {"instruction": "i", "input": "", "output": "o"},\n  {"instruction": \n')
    raises_at("broken.json", 4, lambda: load_benchmark("codealpaca", "train", root=tmp_path, file="broken.json"))
    good = write(tmp_path, "codealpaca/ok.json", json.dumps(items[:2], indent=2))
    assert [line for line, _ in read_json_list(good)] == [2, 7]


def test_gsm8k_bad_final_answer(tmp_path):
    write(tmp_path, "gsm8k/train.jsonl", jsonl(GOOD_GSM, {"question": "q", "answer": "no final"}))
    raises_at("train.jsonl", 2, lambda: load_benchmark("gsm8k", "train", root=tmp_path), "####")
    write(tmp_path, "gsm8k/test.jsonl", jsonl({"question": "q", "answer": "x\n#### four"}))
    raises_at("test.jsonl", 1, lambda: load_benchmark("gsm8k", "test", root=tmp_path), "not a number")


def _mmlu(root: Path, body: str, split: str = "test") -> Path:
    return write(root, f"mmlu/{split}/anatomy_{split}.csv", body)


def test_mmlu_csv_columns_and_letters_with_multiline_fields(tmp_path):
    ok = '"line one\nline two",a,b,"c\nstill c",d,B\n'  # a record spanning lines 1-3
    _mmlu(tmp_path, ok + "q2,a,b,c,d,A\nq3,a,b,c,A\n")
    raises_at("anatomy_test.csv", 5, lambda: load_benchmark("mmlu", "test", root=tmp_path, subjects=["anatomy"]),
              "6 CSV columns", "got 5")
    _mmlu(tmp_path, ok + "q2,a,b,c,d,E\n", split="dev")
    raises_at("anatomy_dev.csv", 4, lambda: load_benchmark("mmlu", "dev", root=tmp_path, subjects=["anatomy"]),
              "answer letter 'E'")
    _mmlu(tmp_path, ok + '"q2,a,b,c,d,A\n', split="val")
    with pytest.raises(DataError, match=r"anatomy_val\.csv:\d+"):
        load_benchmark("mmlu", "val", root=tmp_path, subjects=["anatomy"])
    _mmlu(tmp_path, ok + "q2,a,b,c,d,A\n", split="val")  # fixed in place: the cache must notice
    os.utime(tmp_path / "mmlu/val/anatomy_val.csv", ns=(1, 10**18))
    recs = load_benchmark("mmlu", "val", root=tmp_path, subjects=["anatomy"])
    assert [r.question for r in recs] == ["line one\nline two", "q2"] and recs[0].choices[2] == "c\nstill c"
    assert [r.id for r in recs] == ["mmlu/val/anatomy/0", "mmlu/val/anatomy/1"]


def test_mmlu_pro_letters(tmp_path):
    write(tmp_path, "mmlu_pro/test.jsonl", jsonl(GOOD_PRO, GOOD_PRO | {"question_id": 2, "answer": "K"}))
    raises_at("test.jsonl", 2, lambda: load_benchmark("mmlu_pro", "test", root=tmp_path), "answer letter 'K'")
    write(tmp_path, "mmlu_pro/validation.jsonl", jsonl(GOOD_PRO | {"answer": "E"}))
    raises_at("validation.jsonl", 1, lambda: load_benchmark("mmlu_pro", "validation", root=tmp_path), "beyond the 4 options")
    # the upstream 3983 quirk (letter and index disagree) loads; the letter is gold
    write(tmp_path, "mmlu_pro/validation.jsonl", jsonl(GOOD_PRO | {"answer": "C", "answer_index": 1}))
    (rec,) = load_benchmark("mmlu_pro", "validation", root=tmp_path)
    assert rec.answer == "C" and rec.meta["answer_index"] == 1


def test_duplicate_ids(tmp_path):
    write(tmp_path, "mmlu_pro/test.jsonl", jsonl(GOOD_PRO, GOOD_PRO))
    with pytest.raises(DataError, match=r"test\.jsonl.*duplicate item id 'mmlu_pro/test/1'"):
        load_benchmark("mmlu_pro", "test", root=tmp_path)


def test_config_errors_list_the_known(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown benchmark 'gsm9k'.*gsm8k \(train/test\).*mmlu_pro"):
        load_benchmark("gsm9k", "test", root=tmp_path)
    with pytest.raises(ConfigError, match=r"unknown split 'val'.*validation"):
        load_benchmark("mmlu_pro", "val", root=tmp_path)
    with pytest.raises(ConfigError, match="subjects"):
        load_benchmark("gsm8k", "test", root=tmp_path, subjects=["x"])
    with pytest.raises(ConfigError, match=r"unknown subjects \['anatomyy'\]"):
        load_benchmark("mmlu", "test", root=tmp_path, subjects=["anatomyy"])
    with pytest.raises(ConfigError, match="source"):
        load_benchmark("gsm8k", "test", root=tmp_path, source="web")
    with pytest.raises(ConfigError, match="file="):
        load_benchmark("codealpaca", "train", root=tmp_path, file="../x.json")
    for bad_n in (0, -3):
        with pytest.raises(ConfigError, match="n"):
            load_benchmark("gsm8k", "test", root=tmp_path, n=bad_n)
    assert list(known_benchmarks()) == ["gsm8k", "humaneval", "mbpp", "codealpaca", "mmlu", "mmlu_pro"]
