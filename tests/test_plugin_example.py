"""The README's plug-in example, as a user would add it: one file, no change to clsharelora/."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM

from clsharelora import registry
from clsharelora.models import configs
from clsharelora.paths import PROJECT_ROOT


def _example() -> str:
    readme = (PROJECT_ROOT / "README.md").read_text()
    block = re.search(r"<!-- plugin-example:start -->\s*```python\n(.*?)```\s*<!-- plugin-example:end -->",
                      readme, re.S)
    assert block, "README lost its plug-in example"
    return block.group(1)


def test_readme_example_is_a_working_strategy(tmp_path, monkeypatch):
    (tmp_path / "my_vera.py").write_text(_example())
    monkeypatch.setenv(registry.PATH_ENV, str(tmp_path))
    monkeypatch.setattr(registry, "_discovered", False)
    assert "my-vera" in registry.known("adapter")
    strategy = registry.create("my-vera", "adapter", r=16)
    config = configs.tiny_llama(vocab_size=101)
    model = strategy.apply(AutoModelForCausalLM.from_config(config))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # tiny-llama all-linear: 2 layers x [q,o: 64; k,v: 32; gate,up: 128; down: 64] outputs, r=16 each
    assert trainable == strategy.expected_params(config) == 2 * (7 * 16 + 64 + 32 + 32 + 64 + 128 + 128 + 64)
    out = model(input_ids=torch.randint(0, 101, (1, 5)), labels=torch.randint(0, 101, (1, 5)))
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_file_dropped_into_strategies_is_found(tmp_path):
    target = PROJECT_ROOT / "strategies" / "zz_test_dropped_example.py"
    target.write_text(_example().replace('"my-vera"', '"dropped-vera"'))
    try:
        done = subprocess.run([sys.executable, "-m", "clsharelora.cli", "list"], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        assert "dropped-vera" in done.stdout
    finally:
        target.unlink()
        importlib.invalidate_caches()
