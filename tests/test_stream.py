"""Stream YAML: the shipped streams load; every malformed stream is rejected with the field named."""

from __future__ import annotations

import pytest
import yaml

from clsharelora.benchmarks.stream import load_stream, parse_stream
from clsharelora.errors import ConfigError
from clsharelora.paths import PROJECT_ROOT


@pytest.mark.parametrize("name", ["paper", "demo", "paper-authors"])
def test_shipped_streams(name):
    stream = load_stream(name)
    assert stream.tasks == ["gsm8k", "humaneval", "mmlu", "mmlu_pro"]
    assert [e.train.benchmark for e in stream.experiences] == ["gsm8k", "codealpaca", "mmlu", "mmlu_pro"]
    assert load_stream(PROJECT_ROOT / "streams" / f"{name}.yaml") == stream


def _exp(**over):
    exp = {"name": "a", "train": {"benchmark": "gsm8k"}, "eval": {"task": "gsm8k"}}
    exp.update(over)
    return exp


@pytest.mark.parametrize("data, fragment", [
    ({"experiences": []}, "non-empty list"),
    ({"name": "x"}, "non-empty list"),
    ({"experiences": [_exp()], "extra": 1}, "unknown key 'extra'"),
    ({"experiences": [_exp(train={"benchmark": "gsm9k"})]}, "gsm9k"),
    ({"experiences": [_exp(eval={"task": "squad"})]}, "has no evaluator"),
    ({"experiences": [_exp(eval={"n": 3})]}, "a task without an evaluator"),
    ({"experiences": [_exp(eval={"task": "gsm8k", "shot": 2})]}, "did you mean 'shots'"),
    ({"experiences": [_exp(train={"benchmark": "gsm8k", "n": 0})]}, "train.n must be a positive integer"),
    ({"experiences": [_exp(train={"benchmark": "gsm8k", "epoch": 1})]}, "did you mean 'epochs'"),
    ({"experiences": [_exp(), _exp(name="b")]}, "different task"),
    ({"experiences": [_exp(), _exp()]}, "used twice"),
])
def test_bad_streams(data, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_stream(data, "s.yaml")


def test_unknown_stream_lists_known():
    with pytest.raises(ConfigError, match="demo.*paper|paper.*demo"):
        load_stream("no-such-stream")


def test_yaml_roundtrip(tmp_path, tiny_stream):
    stream = load_stream(tiny_stream)
    assert stream.name == "tiny" and stream.tasks == ["gsm8k", "mmlu"]
    assert yaml.safe_load(tiny_stream.read_text())["experiences"][0]["eval"]["shots"] == 1
