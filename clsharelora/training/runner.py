"""One continual-learning run, end to end: validate -> data -> model + adapter -> Avalanche training over
the stream, scoring every task after every experience -> results, adapters and checkpoints on disk.

Everything a user can get wrong is checked in `prepare` before any model weight is loaded.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import platform
import random
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from avalanche.core import SupervisedPlugin
from avalanche.logging import TextLogger
from avalanche.training.plugins import EvaluationPlugin

from .. import atomic, hardware, models, registry
from ..benchmarks.scenario import make_benchmark
from ..benchmarks.stream import Stream, load_stream
from ..config import RunConfig, accumulation_steps
from ..errors import ConfigError, UserError
from ..evaluation.base import make_evaluator
from ..paths import PROJECT_ROOT, data_root
from .checkpoint import Checkpointer, CheckpointPlugin
from .cl_base import CLContext
from .distributed import Dist
from .metric_plugin import ContinualMetrics
from .results import ResultsStore
from .scoring import ScoringPlugin
from .template import CausalLMTemplate, trainable_parameters

PACKAGES = ("torch", "transformers", "peft", "avalanche-lib", "accelerate", "datasets", "numpy", "safetensors")


@dataclass
class Prepared:
    config: RunConfig
    stream: Stream
    adapter: registry.Strategy
    cl: registry.Strategy
    run_dir: Path
    data_root: Path
    resume_from: Path | None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolved_config_dict(config: RunConfig) -> dict:
    """What identifies a run: its config without the output location."""
    data = config.to_dict()
    data.pop("out", None)
    return data


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


def prepare(config: RunConfig, *, resume: bool = False) -> Prepared:
    """All validation: names, options, stream, data files, output dir. Loads no model."""
    stream = load_stream(config.stream)
    adapter_opts = {k: v for k, v in config.adapter.items() if k != "name"}
    cl_opts = {k: v for k, v in config.cl.items() if k != "name"}
    adapter = registry.create(config.adapter["name"], "adapter", **adapter_opts)
    cl = registry.create(config.cl["name"], "cl", **cl_opts)
    models.resolve(config.model)
    root = data_root(config.data_root)
    name = config.name or f"{stream.name}-{adapter.name}"
    run_dir = Path(config.out or Path("runs") / name)
    resume_from = _check_run_dir(run_dir, config, resume)
    return Prepared(config=dataclasses.replace(config, name=name, out=str(run_dir)), stream=stream,
                    adapter=adapter, cl=cl, run_dir=run_dir, data_root=root, resume_from=resume_from)


def _check_run_dir(run_dir: Path, config: RunConfig, resume: bool) -> Path | None:
    saved = run_dir / "config.yaml"
    if not run_dir.exists() or not any(run_dir.iterdir()):
        if resume:
            raise UserError(f"--resume: {run_dir} holds no run to resume")
        return None
    if not saved.is_file():
        raise UserError(f"output dir {run_dir} is not empty and holds no clsharelora run; choose another --out")
    old = yaml.safe_load(saved.read_text()) or {}
    old.pop("out", None)
    new = resolved_config_dict(config)
    new["name"] = old.get("name") if config.name is None else new["name"]
    if not resume:
        raise UserError(f"output dir {run_dir} already holds a run: add --resume to continue it, "
                        f"or choose another --out")
    differing = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if differing:
        raise UserError(f"output dir {run_dir} holds a different run (config differs in: {', '.join(differing)}); "
                        f"choose another --out")
    latest = Checkpointer(run_dir).latest()
    return latest


def _load_model(prep: Prepared, device: torch.device):
    cfg = prep.config
    dtype = getattr(torch, cfg.dtype)
    kwargs = {}
    if cfg.load_in_4bit:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError("load_in_4bit needs the bitsandbytes package and a CUDA GPU") from None
        from transformers import BitsAndBytesConfig

        if device.type != "cuda":
            raise ConfigError("load_in_4bit needs a CUDA GPU")
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.bfloat16,
                                                           bnb_4bit_use_double_quant=True)
        kwargs["device_map"] = {"": device}
    seed_everything(cfg.seed)
    model = models.load_model(cfg.model, dtype=dtype, device=device, seed=cfg.seed, **kwargs)
    if cfg.load_in_4bit:  # QLoRA recipe: fp32 norms, input grads for checkpointing
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    seed_everything(cfg.seed)  # the adapter's init draws from a known RNG state
    model = prep.adapter.apply(model)
    return model if cfg.load_in_4bit else model.to(device)


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


class ExperienceDone(SupervisedPlugin, supports_distributed=True):
    """Persists after each experience, in crash-safe order: checkpoint (with the new row) then results.json."""

    def __init__(self, checkpoint: CheckpointPlugin, store: ResultsStore, run_dir: Path, dist: Dist):
        super().__init__()
        self.checkpoint, self.store, self.run_dir, self.dist = checkpoint, store, run_dir, dist

    def after_training_exp(self, strategy, **kwargs):
        self.checkpoint.save(strategy, completed=True)
        if self.dist.is_main:
            self.store.write(self.run_dir)


def make_loggers(cfg: RunConfig, run_dir: Path) -> list:
    """Avalanche loggers named in `loggers`; they receive ContinualMetrics' values after every experience."""
    out = []
    for name in filter(None, cfg.loggers.split(",")):
        if name == "text":
            out.append(TextLogger(open(run_dir / "log.txt", "a")))
        elif name == "tensorboard":
            from avalanche.logging import TensorboardLogger

            out.append(TensorboardLogger(tb_log_dir=run_dir / "tensorboard"))
        elif name == "wandb":
            from avalanche.logging import WandBLogger

            out.append(WandBLogger(project_name="clsharelora", run_name=cfg.name, path=run_dir / "wandb"))
    return out


def run(config: RunConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Run (or resume) the stream; returns the run directory."""
    prep = prepare(config, resume=resume)
    cfg = prep.config
    dist = Dist.from_environment(cfg.device) if cfg.device in ("auto", "cpu") else Dist.single(cfg.device)
    device = dist.device
    run_dir = prep.run_dir
    # bf16 asked for on a CPU without native bf16 runs in fp32: warned here, recorded in results.json
    precision = hardware.precision_record(device, {"train.bf16": cfg.train.bf16, "eval.autocast": cfg.eval.autocast})
    accumulation = accumulation_steps(cfg.train, dist.world_size)  # before anything is written

    # Data next (missing/corrupt files fail here), still before anything is written or any weight is loaded.
    tokenizer = models.load_tokenizer(cfg.model)
    seed_everything(cfg.seed)
    benchmark, training_data = make_benchmark(prep.stream, tokenizer, max_length=cfg.train.max_length,
                                              seed=cfg.seed, data_root=prep.data_root)
    evaluators = []
    for exp in prep.stream.experiences:
        options = {"batch_size": cfg.eval.batch_size, "autocast": cfg.eval.autocast, **exp.eval_options}
        if cfg.eval.n is not None:  # a run-level cap on top of the stream's subset sizes
            options["n"] = min(options.get("n") or cfg.eval.n, cfg.eval.n)
        evaluators.append(make_evaluator(exp.task, data_root=prep.data_root, seed=cfg.seed, **options))

    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        atomic.write_json(run_dir / "environment.json", environment())
    dist.barrier()
    model = _load_model(prep, device)
    store = ResultsStore(
        run={"name": cfg.name, "stream": prep.stream.name, "adapter": prep.adapter.name,
             "variant": getattr(prep.adapter, "variant_label", None)  # lora's matched control: match_share_a
             or prep.adapter.options.get("variant", prep.adapter.name),
             "cl": prep.cl.name,
             "model": cfg.model, "seed": cfg.seed, "adapter_options": prep.adapter.options,
             "cl_options": prep.cl.options,
             "batching": {"global_batch": cfg.train.global_batch, "batch_size": cfg.train.batch_size,
                          "processes": dist.world_size, "accumulation": accumulation}},
        tasks=prep.stream.tasks, experiences=[e.name for e in prep.stream.experiences])
    store.cost.update(_param_costs(prep, model))
    store.precision = precision
    store.training_data = {d.experience: d.to_dict() for d in training_data}
    if dist.is_main:  # the length policy's drops, once per run (also in results.json `training_data`)
        print("training data: " + "; ".join(d.summary() for d in training_data), file=sys.stderr, flush=True)

    cl_plugins = prep.cl.plugins(CLContext(seed=cfg.seed, datasets=[e.dataset for e in benchmark.train_stream],
                                           dist=dist, model=model, store=store))
    checkpointer = Checkpointer(run_dir)
    checkpoint = CheckpointPlugin(checkpointer, store, every=cfg.train.checkpoint_every, plugins=cl_plugins, dist=dist)
    scoring = ScoringPlugin(evaluators, tokenizer, store, run_dir, adapter=prep.adapter, dist=dist, progress=progress)
    loggers = make_loggers(cfg, run_dir) if dist.is_main else []
    evaluator = EvaluationPlugin(ContinualMetrics(store), loggers=loggers)
    budgets = {i: {"epochs": e.train.epochs, "max_steps": e.train.max_steps}
               for i, e in enumerate(prep.stream.experiences)}
    strategy = CausalLMTemplate(
        model=model, train_config=cfg.train, seed=cfg.seed, device=device, dist=dist, progress=progress, budgets=budgets,
        plugins=[*cl_plugins, scoring, CostPlugin(store, device), ExperienceDone(checkpoint, store, run_dir, dist),
                 checkpoint],
        evaluator=evaluator)

    start = 0
    if prep.resume_from is not None:
        state = Checkpointer.read(prep.resume_from)
        _check_rows_unchanged(run_dir, state["results"])
        restored = ResultsStore.from_json(state["results"])
        store.rows, store.cost = restored.rows, {**store.cost, **restored.cost}
        checkpoint.restore_weights(strategy, state)
        start = state["position"]["exp_index"]
        if dist.is_main:
            print(f"resuming {run_dir} from {prep.resume_from.name}: {store.done} experience(s) done", flush=True)
    for experience in prep.cl.schedule(list(benchmark.train_stream))[start:]:  # joint training: one
        strategy.train(experience)
    if dist.is_main:
        store.write(run_dir)
    dist.barrier()
    return run_dir


def _check_rows_unchanged(run_dir: Path, checkpoint_results: dict) -> None:
    """results.json may never hold rows that the checkpoint contradicts (completed results are final)."""
    path = run_dir / "results.json"
    if not path.is_file():
        return
    import json

    on_disk = json.loads(path.read_text()).get("scores", [])
    saved = checkpoint_results.get("scores", [])
    for i, row in enumerate(on_disk[:len(saved)]):
        if row != saved[i]:
            raise UserError(f"{path}: row {i} differs from the checkpoint; refusing to overwrite finished results")


def _param_costs(prep: Prepared, model) -> dict:
    cost = {"trainable_params": sum(p.numel() for p in trainable_parameters(model))}
    opts = prep.adapter.options
    if "r" in opts and "targets" in opts:
        try:
            lora = registry.create("lora", "adapter", r=opts["r"], targets=opts["targets"])
            base_config = getattr(model, "base_model", model).config if hasattr(model, "base_model") else model.config
            cost["lora_trainable_params"] = int(lora.expected_params(base_config))
            matched = getattr(prep.adapter, "matched", lambda _: None)(base_config)  # LoRA at a matched count
            if matched:
                cost["matched"] = matched
        except (UserError, AttributeError, TypeError, KeyError):
            pass
    return cost
