"""What a run records about where and at what cost it ran: package versions, git commit and devices
(environment.json), and train time, optimizer-state bytes, peak memory and parameter counts (results.json
"cost")."""

from __future__ import annotations

import importlib.metadata as md
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from avalanche.core import SupervisedPlugin

from .. import hardware, registry
from ..errors import UserError
from ..paths import PROJECT_ROOT
from .results import ResultsStore
from .template import trainable_parameters

PACKAGES = ("torch", "transformers", "peft", "avalanche-lib", "accelerate", "datasets", "numpy", "safetensors")


def environment() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=PROJECT_ROOT, capture_output=True,
                                    text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions,
            "git_commit": commit, "git_dirty": dirty, "torch_threads": torch.get_num_threads(),
            "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "cpu": hardware.cpu_record()}


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM) to its current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss() -> int:
    """Peak resident set size since the last reset (VmHWM), else the process lifetime peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class CostPlugin(SupervisedPlugin, supports_distributed=True):
    """Train time (the epochs' wall time: scoring, saving and checkpointing excluded), optimizer-state bytes
    and peak memory, kept in the results."""

    def __init__(self, store: ResultsStore, device: torch.device):
        super().__init__()
        self.store, self.device = store, device
        self._start = None
        # Peaks are per run: `compare` runs several strategies in one process.
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        else:
            _reset_peak_rss()

    def before_training_epoch(self, strategy, **kwargs):
        self._start = time.perf_counter()

    def after_training_epoch(self, strategy, **kwargs):
        elapsed = time.perf_counter() - self._start
        self.store.cost["train_time_s"] = round(self.store.cost.get("train_time_s", 0.0) + elapsed, 3)

    def after_update(self, strategy, **kwargs):
        if "optimizer_state_bytes" not in self.store.cost:
            self.store.cost["optimizer_state_bytes"] = sum(
                t.numel() * t.element_size() for s in strategy.optimizer.state.values() for t in s.values()
                if torch.is_tensor(t) and t.dim() > 0)

    def after_training_exp(self, strategy, **kwargs):
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _peak_rss()
        self.store.cost["peak_memory_bytes"] = max(int(peak), int(self.store.cost.get("peak_memory_bytes", 0)))
        self.store.cost["peak_memory_kind"] = "cuda_allocated" if self.device.type == "cuda" else "process_rss"
        steps = self.store.cost.setdefault("optimizer_steps", [])  # per experience; resumed with the cost
        steps[strategy.exp_index:] = [strategy.exp_step]


def param_costs(adapter, model) -> dict:
    cost = {"trainable_params": sum(p.numel() for p in trainable_parameters(model))}
    opts = adapter.options
    if "r" in opts and "targets" in opts:
        try:
            lora = registry.create("lora", "adapter", r=opts["r"], targets=opts["targets"])
            base_config = getattr(model, "base_model", model).config if hasattr(model, "base_model") else model.config
            cost["lora_trainable_params"] = int(lora.expected_params(base_config))
            matched = getattr(adapter, "matched", lambda _: None)(base_config)  # LoRA at a matched count
            if matched:
                cost["matched"] = matched
        except (UserError, AttributeError, TypeError, KeyError):
            pass
    return cost
