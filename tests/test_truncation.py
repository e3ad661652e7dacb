"""The length policy: over-long training examples are dropped whole and counted, never cut; an experience
left with nothing to train is one `error:` line, exit 2, nothing written."""

from __future__ import annotations

import json
import random

import pytest
import yaml

from clsharelora.benchmarks.scenario import experience_dataset, training_records
from clsharelora.benchmarks.stream import parse_stream
from clsharelora.cli import main
from clsharelora.paths import data_root
from clsharelora.prompts import prompt_for, target_for
from clsharelora.training.results import ResultsStore


def _spec(benchmark: str, split: str, n: int, max_length: int, task: str):
    return parse_stream({"name": "t", "experiences": [
        {"name": benchmark, "train": {"benchmark": benchmark, "split": split, "n": n, "max_length": max_length},
         "eval": {"task": task}}]}, "t").experiences[0]


@pytest.mark.parametrize("benchmark, split, task", [("gsm8k", "train", "gsm8k"), ("mbpp", "train", "humaneval"),
                                                    ("mmlu", "dev", "mmlu")])
def test_kept_examples_are_whole_and_counts_are_exact(smollm2_tokenizer, benchmark, split, task):
    tok = smollm2_tokenizer
    seed, max_length = random.randrange(1000), random.choice([128, 192, 256])
    spec = _spec(benchmark, split, 24, max_length, task)
    dataset, stats = experience_dataset(spec, tok, max_length=4096, seed=seed, data_root=data_root())
    # independent count: the joint text + EOS, from the tokenizer alone
    records = training_records(spec, seed=seed, data_root=data_root())
    whole = [tok(prompt_for(r) + target_for(r))["input_ids"] + [tok.eos_token_id] for r in records]
    fits = [ids for ids in whole if len(ids) <= max_length]
    assert stats.max_length == max_length  # the experience's own max_length wins over the run's
    assert (stats.examples, stats.kept, stats.dropped_too_long) == (24, len(fits), 24 - len(fits))
    assert stats.longest == max(len(ids) for ids in whole)
    kept = [dataset[i]["input_ids"] for i in range(len(dataset))]
    assert kept == fits, "a kept example was cut or reordered"
    assert stats.target_tokens == sum(sum(1 for t in dataset[i]["labels"] if t != -100) for i in range(len(dataset)))


def test_an_experience_with_nothing_left_is_a_config_error(tmp_path, capsys):
    stream = tmp_path / "s.yaml"
    stream.write_text(yaml.safe_dump({"name": "s", "experiences": [
        {"name": "arith", "train": {"benchmark": "gsm8k", "split": "train", "n": 4, "max_length": 20},
         "eval": {"task": "gsm8k", "n": 1}}]}))
    out = tmp_path / "run"
    code = main(["run", "--stream", str(stream), "--model", "tiny-llama", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert len([line for line in err if line.startswith("error:")]) == 1
    line = next(line for line in err if line.startswith("error:"))
    assert "'arith'" in line and "max_length=20" in line and "train.max_length of experience 'arith'" in line
    assert "the shortest needs" in line and "Traceback" not in "\n".join(err)


def test_results_json_keeps_training_data_and_reads_older_files():
    store = ResultsStore({"name": "x"}, ["a"], ["a"])
    store.training_data = {"a": {"experience": "a", "max_length": 8, "examples": 3, "kept": 2,
                                 "dropped_too_long": 1, "target_tokens": 5, "longest": 9}}
    data = json.loads(json.dumps(store.to_json()))
    assert ResultsStore.from_json(data).training_data == store.training_data
    del data["training_data"]  # results.json written before the field existed
    assert ResultsStore.from_json(data).training_data == {}
