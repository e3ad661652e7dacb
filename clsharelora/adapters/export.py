"""`clsharelora export`: a run's adapter as files other tools load without clsharelora (docs/interop.md).

Plain export copies peft's own files (`adapter_config.json`, `adapter_model.safetensors`, per-layer copies
even for ShareLoRA) and leaves out clsharelora's sharing record. `--merge` loads the run's base model and
adapter the way the run built them (model, seed, dtype and adapter plug-in from the run's config.yaml),
folds the adapter into the weights with peft's `merge_and_unload` and saves a plain transformers checkpoint
with its tokenizer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .. import atomic
from ..errors import ConfigError

PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md")


def run_config(adapter_dir: Path) -> dict:
    """The config.yaml of the run that holds `adapter_dir` (RUN/adapters/exp_<i>)."""
    from ..config import load_yaml

    path = adapter_dir.resolve().parent.parent / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{adapter_dir}: no run config.yaml two levels up ({path}); give a run's "
                          "adapters/exp_<i> folder")
    return load_yaml(path)


def export(adapter_dir: str | Path, out: str | Path, *, merge: bool = False) -> Path:
    """Write the adapter of `adapter_dir` (plain peft files, or merged into the base with `merge`) to `out`."""
    adapter_dir, out = Path(adapter_dir), Path(out)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ConfigError(f"{adapter_dir}: no adapter_config.json; give a run's adapters/exp_<i> folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} already exists and is not an empty folder; choose another")
    if not merge:
        with atomic.directory(out) as tmp:
            for name in PEFT_FILES:
                if (adapter_dir / name).is_file():
                    shutil.copyfile(adapter_dir / name, tmp / name)
        return out
    import torch

    from .. import models, registry

    config = run_config(adapter_dir)
    adapter = dict(config.get("adapter") or {})
    strategy = registry.create(adapter.pop("name"), "adapter", **adapter)
    dtype = getattr(torch, str(config.get("dtype", "float32")))
    base = models.load_model(config["model"], dtype=dtype, seed=int(config.get("seed", 0)))
    model = strategy.load(base, adapter_dir, is_trainable=False)
    with atomic.directory(out) as tmp:
        model.merge_and_unload().save_pretrained(tmp)
        models.load_tokenizer(config["model"]).save_pretrained(tmp)
    return out
