"""One continual-learning run, end to end: validate -> data -> model + adapter -> Avalanche training over
the stream, scoring every task after every experience -> results, adapters and checkpoints on disk.

Everything a user can get wrong is checked before the run directory is created: `prepare` (names, options,
stream, seed, device, model path, adapter on the meta device, output location; training/preflight.py and
training/rundir.py), then the data, then the weights with the adapter. The run directory's lock, identity
and resume checks live in training/rundir.py, environment and cost probing in training/environment.py.
"""

from __future__ import annotations

import dataclasses
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from avalanche.core import SupervisedPlugin
from avalanche.logging import TextLogger
from avalanche.training.plugins import EvaluationPlugin

from .. import atomic, hardware, models, pathsafe, registry
from ..benchmarks.scenario import make_benchmark, training_records
from ..benchmarks.stream import Stream, load_stream
from ..config import RunConfig, accumulation_steps, validate
from ..errors import ConfigError, UserError
from ..evaluation.base import make_evaluator
from ..paths import data_root
from . import engine, preflight, rundir
from .checkpoint import Checkpointer, CheckpointPlugin
from .cl_base import CLContext
from .distributed import Dist
from .environment import CostPlugin, param_costs
from .metric_plugin import ContinualMetrics
from .results import ResultsStore
from .scoring import ScoringPlugin
from .shared_row0 import SharedRow0
from .template import CausalLMTemplate


@dataclass
class Prepared:
    config: RunConfig
    stream: Stream
    adapter: registry.Strategy
    cl: registry.Strategy
    run_dir: Path
    data_root: Path
    identity: dict          # config, stream content and data hashes: what --resume must find unchanged
    continuing: bool        # the run directory holds this run already (--resume)
    name_given: bool        # --name was given (else the saved run's name is kept on resume)


@dataclass
class Inputs:
    """What a run reads, loaded and checked (stream options such as MMLU subjects or a gsm8k protocol fail
    here): each experience's training records (before tokenisation) and evaluator (its items loaded)."""

    records: list[list]
    evaluators: list
    eval_options: list[dict]   # what row 0 depends on (training/shared_row0.py)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare(config: RunConfig, *, resume: bool = False) -> Prepared:
    """Validation that needs no data and no weights: names, options, stream, seed, device, model path, the
    adapter against the model (on the meta device: it fits, and its trainable count is its expected_params),
    the output location and what it already holds. The dry run validates with this and `load_inputs` too.
    A plug-in raising here is one error line naming its file and line (registry.blame_plugins)."""
    with registry.blame_plugins():
        return _prepare(config, resume=resume)


def _prepare(config: RunConfig, *, resume: bool) -> Prepared:
    stream = load_stream(config.stream)
    validate(config)   # seed range, 4-bit/dtype and every value from_dict checks, for configs built in code too
    preflight.check_device(config.device)
    adapter, cl = preflight.check_strategies(config, stream)
    root = data_root(config.data_root)
    name = config.name or rundir.default_name(stream, adapter, cl)
    pathsafe.check_name(name, "run name",
                        "from --name" if config.name else f"from the stream name in {stream.path}")
    run_dir = Path(config.out or Path("runs") / name)
    rundir.check_location(run_dir)
    if config.train.engine == "fsdp":
        engine.check_fsdp_combination(adapter.name, cl.name, config.load_in_4bit)
    resolved = dataclasses.replace(config, name=name, out=str(run_dir))
    ident = rundir.identity(resolved, stream, root)
    rundir.check_not_locked(run_dir)
    continuing = rundir.check_existing(run_dir, resolved, ident, resume=resume, name_given=config.name is not None)
    if continuing:
        rundir.check_results_rows(run_dir, stream)
    return Prepared(config=resolved, stream=stream, adapter=adapter, cl=cl, run_dir=run_dir, data_root=root,
                    identity=ident, continuing=continuing, name_given=config.name is not None)


def load_inputs(prep: Prepared) -> Inputs:
    """The data next, still before anything is written or any weight is loaded: every experience's training
    records and its evaluator with the stream's options. Missing or corrupt files, unknown MMLU subjects or
    an unknown gsm8k protocol are a UserError here, for the run and its dry run alike."""
    cfg = prep.config
    records = [training_records(e, seed=cfg.seed, data_root=prep.data_root) for e in prep.stream.experiences]
    evaluators, eval_options = [], []
    for exp in prep.stream.experiences:
        options = {"batch_size": cfg.eval.batch_size, "autocast": cfg.eval.autocast, **exp.eval_options}
        if cfg.eval.n is not None:  # a run-level cap on top of the stream's subset sizes
            options["n"] = min(options.get("n") or cfg.eval.n, cfg.eval.n)
        evaluators.append(make_evaluator(exp.task, data_root=prep.data_root, seed=cfg.seed, **options))
        eval_options.append({**options, "seed": cfg.seed})
    return Inputs(records, evaluators, eval_options)


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
    model = _loading("weights", cfg.model,
                     lambda: models.load_model(cfg.model, dtype=dtype, device=device, seed=cfg.seed, **kwargs))
    if cfg.load_in_4bit:  # QLoRA recipe: fp32 norms, input grads for checkpointing
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    seed_everything(cfg.seed)  # the adapter's init draws from a known RNG state
    model = prep.adapter.apply(model)
    preflight.check_adapter_fits(prep.adapter, model)  # hub models, whose architecture prepare could not see
    preflight.check_expected_params(prep.adapter, model)   # the count on the real weights, as on the meta device
    preflight.check_generation_fits(prep.stream, model)
    prep.cl.check_model(model)
    return model if cfg.load_in_4bit else model.to(device)


class ExperienceDone(SupervisedPlugin, supports_distributed=True):
    """Publishes every new row of R, in crash-safe order: its items and adapter (ScoringPlugin), then a
    checkpoint holding the row, then results.json. So a row a reader (or a resumed run) sees is in the
    checkpoint that `--resume` continues from and is never scored again. Row 0 (the untrained model, scored in
    ScoringPlugin.before_training_exp) gets its own checkpoint at step 0; the others the end-of-experience one."""

    def __init__(self, checkpoint: CheckpointPlugin, store: ResultsStore, run_dir: Path, dist: Dist):
        super().__init__()
        self.checkpoint, self.store, self.run_dir, self.dist = checkpoint, store, run_dir, dist
        self.published = 0

    def before_training(self, strategy, **kwargs):
        self.published = len(self.store.rows)   # rows restored from a checkpoint, or published before

    def before_training_exp(self, strategy, **kwargs):
        if len(self.store.rows) > self.published:   # row 0 was just scored
            self._publish(strategy, completed=False)

    def after_training_exp(self, strategy, **kwargs):
        self._publish(strategy, completed=True)

    def _publish(self, strategy, *, completed: bool) -> None:
        self.checkpoint.save(strategy, completed=completed)
        if self.dist.is_main:
            self.store.write(self.run_dir)
        self.published = len(self.store.rows)


class RowTextLogger(TextLogger):
    """Avalanche's TextLogger prints metric values only when an epoch or an evaluation ends, so the row scored
    after the last experience never reached log.txt (and every other row came one experience late, under
    "Epoch N ended."): print each row of R when ContinualMetrics emits it."""

    def before_training_exp(self, strategy, metric_values, **kwargs):
        super().before_training_exp(strategy, metric_values, **kwargs)
        self._print_row("before training")

    def after_training_exp(self, strategy, metric_values, **kwargs):
        super().after_training_exp(strategy, metric_values, **kwargs)
        self._print_row(f"after experience {strategy.experience.current_experience + 1}")

    def _print_row(self, when: str) -> None:
        if self.metric_vals:
            print(f"-- scores {when} --", file=self.file)
            self.print_current_metrics()
            self.metric_vals = {}
            self.file.flush()


def make_loggers(cfg: RunConfig, run_dir: Path) -> list:
    """Avalanche loggers named in `loggers`; they receive ContinualMetrics' values after every experience."""
    out = []
    for name in filter(None, cfg.loggers.split(",")):
        if name == "text":
            with atomic.space_checked(run_dir / "log.txt"):
                out.append(RowTextLogger(open(run_dir / "log.txt", "a", buffering=1)))
        elif name == "tensorboard":
            from avalanche.logging import TensorboardLogger

            out.append(TensorboardLogger(tb_log_dir=run_dir / "tensorboard"))
        elif name == "wandb":
            from avalanche.logging import WandBLogger

            out.append(WandBLogger(project_name="clsharelora", run_name=cfg.name, path=run_dir / "wandb"))
    return out


def _loading(what: str, name: str, load):
    """Loading a model or tokenizer that a validated path still cannot provide: one error line, no traceback."""
    try:
        return load()
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"model {name!r}: cannot load its {what} ({first})") from None


def capped_sizes(stream: Stream, training_data, evaluators, eval_n: int | None) -> list[dict]:
    """Where a requested n exceeds the data (the loaders then use all items), which experience, what was
    asked and what is used: said once on stderr and kept in results.json's run block. Training counts the
    records drawn, before the length policy (whose drops are reported in `training_data`)."""
    out = []
    for exp, drawn, ev in zip(stream.experiences, training_data, evaluators):
        if exp.train.n is not None and drawn.examples < exp.train.n:
            out.append({"experience": exp.name, "key": "train.n", "requested": exp.train.n, "used": drawn.examples})
        asked = [n for n in (exp.eval_options.get("n"), eval_n) if n is not None]
        records = getattr(ev, "records", None)
        if asked and records is not None and len(records) < min(asked):
            out.append({"experience": exp.name, "key": "eval.n", "requested": min(asked), "used": len(records)})
    return out


def run(config: RunConfig, *, resume: bool = False, progress: bool = True, shared_row0: str | Path | None = None,
        ) -> Path:
    """Run (or resume) the stream; returns the run directory. Every input is validated (prepare, then data,
    then weights and adapter) before the run directory is created. `shared_row0`: the folder where the runs
    of one compare/study share their untrained model's scores (training/shared_row0.py); single process only.
    A plug-in raising (apply() on the weights, a CL plug-in mid-training) is a PluginError naming its file
    and line, its traceback appended to the run's log.txt once the run directory exists."""
    prep = prepare(config, resume=resume)
    with registry.blame_plugins(log=prep.run_dir / "log.txt"):
        return _run(prep, resume=resume, progress=progress, shared_row0=shared_row0)


def _run(prep: Prepared, *, resume: bool, progress: bool, shared_row0: str | Path | None) -> Path:
    if shared_row0 is not None and Path(shared_row0).exists() and not Path(shared_row0).is_dir():
        raise UserError(f"--shared-row0 {shared_row0}: exists and is not a directory; give a folder (created "
                        "when missing) or leave it out")
    cfg = prep.config
    dist = Dist.from_environment(cfg.device)   # rank, world size and this process's device (any number of nodes)
    device = dist.device
    run_dir = prep.run_dir
    # bf16 asked for on a CPU without native bf16 runs in fp32: warned here, recorded in results.json
    precision = hardware.precision_record(device, {"train.bf16": cfg.train.bf16, "eval.autocast": cfg.eval.autocast})
    accumulation = accumulation_steps(cfg.train, dist.world_size)  # before anything is written

    inputs = load_inputs(prep)   # data next (missing/corrupt files, bad stream options fail here)
    evaluators, eval_options = inputs.evaluators, inputs.eval_options
    tokenizer = _loading("tokenizer", cfg.model, lambda: models.load_tokenizer(cfg.model))
    seed_everything(cfg.seed)
    benchmark, training_data = make_benchmark(prep.stream, tokenizer, max_length=cfg.train.max_length,
                                              seed=cfg.seed, data_root=prep.data_root, records=inputs.records)
    capped = capped_sizes(prep.stream, training_data, evaluators, cfg.eval.n)
    for c in capped if dist.is_main else ():
        print(f"note: experience {c['experience']!r}: {c['key']}={c['requested']} but the data hold "
              f"{c['used']} items; using {c['used']}", file=sys.stderr, flush=True)

    model = _load_model(prep, device)   # weights and the adapter on the real model: the last checks
    store = ResultsStore(
        run={"name": cfg.name, "stream": prep.stream.name, "adapter": prep.adapter.name,
             "variant": getattr(prep.adapter, "variant_label", None)  # lora's matched control: match_share_a
             or prep.adapter.options.get("variant", prep.adapter.name),
             "cl": prep.cl.name,
             "model": cfg.model, "seed": cfg.seed, "adapter_options": prep.adapter.options,
             "cl_options": prep.cl.options,
             "batching": {"global_batch": cfg.train.global_batch, "batch_size": cfg.train.batch_size,
                          "processes": dist.world_size, "accumulation": accumulation},
             **({"n_capped": capped} if capped else {})},
        tasks=prep.stream.tasks, experiences=[e.name for e in prep.stream.experiences])
    store.cost.update(param_costs(prep.adapter, model))
    store.precision = precision
    store.training_data = {d.experience: d.to_dict() for d in training_data}
    if dist.is_main:  # the length policy's drops, once per run (also in results.json `training_data`)
        print("training data: " + "; ".join(d.summary() for d in training_data), file=sys.stderr, flush=True)

    with rundir.claim(run_dir, cfg, prep.identity, prep.stream, resume=resume, name_given=prep.name_given,
                      is_main=dist.is_main, barrier=dist.barrier) as claim:
        cl_plugins = prep.cl.plugins(CLContext(seed=cfg.seed, datasets=[e.dataset for e in benchmark.train_stream],
                                               dist=dist, model=model, store=store))
        checkpointer = Checkpointer(run_dir)
        checkpoint = CheckpointPlugin(checkpointer, store, every=cfg.train.checkpoint_every, plugins=cl_plugins,
                                      dist=dist)
        shared = None
        if shared_row0 is not None and dist.world_size == 1:
            shared = SharedRow0(shared_row0, run_dir.name, tokenizer, evaluators, eval_options, model_name=cfg.model,
                                dtype=cfg.dtype, autocast=cfg.eval.autocast)
        scoring = ScoringPlugin(evaluators, tokenizer, store, run_dir, adapter=prep.adapter, dist=dist,
                                progress=progress, shared_row0=shared)
        loggers = make_loggers(cfg, run_dir) if dist.is_main else []
        evaluator = EvaluationPlugin(ContinualMetrics(store), loggers=loggers)
        budgets = {i: {"epochs": e.train.epochs, "max_steps": e.train.max_steps}
                   for i, e in enumerate(prep.stream.experiences)}
        strategy = CausalLMTemplate(
            model=model, train_config=cfg.train, seed=cfg.seed, device=device, dist=dist, progress=progress,
            budgets=budgets, evaluator=evaluator,
            plugins=[*cl_plugins, scoring, CostPlugin(store, device), ExperienceDone(checkpoint, store, run_dir, dist),
                     checkpoint])

        start = 0
        if claim.resume_from is not None:
            state = Checkpointer.read(claim.resume_from)
            rundir.check_rows_unchanged(run_dir, state["results"])
            restored = ResultsStore.from_json(state["results"])
            store.rows, store.cost = restored.rows, {**store.cost, **restored.cost}
            store.shared_row0 = restored.shared_row0
            checkpoint.restore_weights(strategy, state)
            start = state["position"]["exp_index"]
            if dist.is_main:
                print(f"resuming {run_dir} from {claim.resume_from.name}: {store.done} experience(s) done",
                      flush=True)
        try:
            # a full disk under a write that is not atomic's (log.txt, tensorboard): one error naming the run
            with atomic.space_checked(run_dir):
                for experience in prep.cl.schedule(list(benchmark.train_stream))[start:]:  # joint training: one
                    strategy.train(experience)
        finally:
            for logger in loggers:
                if isinstance(logger, RowTextLogger):
                    logger.file.close()
        if dist.is_main:
            store.write(run_dir)
        dist.barrier()
    return run_dir
