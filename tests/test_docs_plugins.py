"""docs/plugins.md's CL-method example, run as a user would: dropped into a plug-in folder, listed, validated,
trained on tiny-llama, killed and resumed to the same result (its state_dict carries the anchor)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from clsharelora import registry
from clsharelora.cli import main
from clsharelora.paths import PROJECT_ROOT

STREAM = """name: tiny
experiences:
  - name: gsm8k
    train: {benchmark: gsm8k, split: train, n: 4, max_steps: 2, max_length: 256}
    eval: {task: gsm8k, n: 1, shots: 0, max_new_tokens: 2}
  - name: mmlu
    train: {benchmark: mmlu, split: dev, n: 4, max_steps: 2, max_length: 256}
    eval: {task: mmlu, n: 2, shots: 0}
"""


def _example() -> str:
    doc = (PROJECT_ROOT / "docs" / "plugins.md").read_text()
    block = re.search(r"<!-- cl-plugin-example:start -->\s*```python\n(.*?)```\s*<!-- cl-plugin-example:end -->",
                      doc, re.S)
    assert block, "docs/plugins.md lost its CL example"
    return block.group(1)


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "l2_anchor.py").write_text(_example())
    monkeypatch.setenv(registry.PATH_ENV, str(folder))
    monkeypatch.setattr(registry, "_discovered", False)
    yield folder
    monkeypatch.setattr(registry, "_discovered", False)


def test_the_documented_cl_method_is_listed_validated_and_resumes_exactly(plugin_dir, tmp_path, capsys):
    assert "l2-anchor" in registry.listed("cl")
    assert main(["run", "--cl", "l2-anchor", "--set", "cl.strength=-1", "--model", "tiny-llama", "--dry-run"]) == 2
    assert "option 'strength' must be a number >= 0" in capsys.readouterr().err
    (tmp_path / "s.yaml").write_text(STREAM)
    common = ["run", "--stream", str(tmp_path / "s.yaml"), "--model", "tiny-llama", "--strategy", "lora",
              "--cl", "l2-anchor", "--set", "cl.strength=5.0", "--set", "train.batch_size=2",
              "--set", "train.global_batch=2", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "whole")]) == 0
    # the same run killed after experience 1 (its checkpoint holds the anchor), then resumed
    from clsharelora.training import runner

    original = runner.CausalLMTemplate.train
    calls = {"n": 0}

    def train_once(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    runner.CausalLMTemplate.train = train_once
    try:
        assert main([*common, "--out", str(tmp_path / "killed")]) == 130
    finally:
        runner.CausalLMTemplate.train = original
    assert main([*common, "--out", str(tmp_path / "killed"), "--resume"]) == 0
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())["matrices"]
    resumed = json.loads((tmp_path / "killed" / "results.json").read_text())["matrices"]
    assert whole == resumed
    a = torch.load(next((tmp_path / "whole" / "checkpoints").glob("*/plugins.pt")), weights_only=False)
    assert "L2AnchorPlugin" in a and a["L2AnchorPlugin"]["anchor"]
