"""ScoringPlugin: after every experience (and once before the first), score every task of the stream.

Each score appends one row to the R matrices, its per-item results go to items/row_<i>.npz and the adapter of
that experience is saved; runner.ExperienceDone then checkpoints and publishes the row in results.json. With several processes every task's
items are split across the ranks (balanced by prompt length, `evaluation.items.shard_indices`), and the
per-item results gathered on every rank, so a task's score is computed from exactly the items one process
would score, whatever the number of ranks. Under FSDP (train.engine=fsdp) every rank must run the same
number of model forwards; engine.Lockstep (torch's Join) keeps them in step while the ranks score their shares.
Row 0 (before training) may come from the runs of the same compare/study (`shared_row0`, one process only):
training/shared_row0.py says when that is exact and how it is checked.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from avalanche.core import SupervisedPlugin

from .. import atomic
from ..evaluation.base import Evaluator
from ..evaluation.items import merge_shards, shard_indices
from . import engine
from .distributed import Dist
from .results import ResultsStore, write_items
from .shared_row0 import SharedRow0


class ScoringPlugin(SupervisedPlugin, supports_distributed=True):
    def __init__(self, evaluators: list[Evaluator], tokenizer, store: ResultsStore, run_dir: Path, *,
                 adapter, dist: Dist | None = None, progress: bool = True, shared_row0: SharedRow0 | None = None):
        super().__init__()
        self.evaluators = evaluators
        self.tokenizer = tokenizer
        self.store = store
        self.run_dir = Path(run_dir)
        self.adapter = adapter
        self.dist = dist or Dist.single()
        self.progress = progress
        self.eval_time_s = float(store.cost.get("eval_time_s", 0.0))
        self._lock: engine.Lockstep | None = None
        self.shared_row0 = shared_row0 if self.dist.world_size == 1 else None

    def score(self, model, *, row0: bool = False) -> tuple[list[dict], dict[str, dict]]:
        """Every task's TaskScore dict in stream order, and {task: per-item results}; each task's items
        are split over the ranks and gathered. `row0`: the untrained model's row, read from the runs of the
        same compare/study where they scored the same function on the same items (`shared_row0`)."""
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        lockstep = self._lockstep(model)
        try:
            if row0 and self.shared_row0 is not None:
                parts, self.store.shared_row0 = self.shared_row0.score(
                    model, lambda ev: self._score_task(ev, model, lockstep))
            else:
                parts = [self._score_task(ev, model, lockstep) for ev in self.evaluators]
        finally:
            model.train(was_training)
        self.eval_time_s += time.perf_counter() - start
        scores = [ev.summarize(part) for ev, part in zip(self.evaluators, parts)]
        return [sc.as_dict() for sc in scores], {sc.task: sc.items for sc in scores}

    def _score_task(self, evaluator: Evaluator, model, lockstep) -> dict:
        """One task's per-item results over all its items: this rank's share scored, every share gathered."""
        mine = shard_indices(evaluator.item_costs(), self.dist.world_size)[self.dist.rank]
        with lockstep.items() if lockstep else contextlib.nullcontext():
            part = evaluator.score_items(model, self.tokenizer, mine, progress=self.progress)
        return merge_shards(self.dist.gather_objects((mine, part)), len(evaluator.records))

    def _lockstep(self, model) -> engine.Lockstep | None:
        """For an FSDP-sharded model, the Join that gives every rank the same number of forwards (ranks score
        different items: different batch counts and decode steps); None otherwise."""
        if engine.fsdp_root(model) is None:
            return None
        if self._lock is None or self._lock.model is not model:
            self._lock = engine.Lockstep(model, self.dist)
        return self._lock

    def before_training_exp(self, strategy, **kwargs):
        if not self.store.rows:
            self._record(strategy, *self.score(strategy.model, row0=True))

    def after_training_exp(self, strategy, **kwargs):
        self._record(strategy, *self.score(strategy.model))
        # a sharded model's adapter is gathered whole on every rank first (a collective); rank 0 writes it
        gathered = None if engine.fsdp_root(strategy.model) is None else \
            engine.full_trainable_state(strategy.model, every_name=True)
        if self.dist.is_main:
            with atomic.directory(self.run_dir / "adapters" / f"exp_{self.store.done}") as tmp:
                if gathered is None:
                    self.adapter.save(strategy.model, tmp)
                else:   # only lora and sharelora run sharded (engine.FSDP_ADAPTERS); both take the gathered tensors
                    self.adapter.save(strategy.model, tmp, state_dict=gathered)
                for plugin in strategy.plugins:  # CL methods whose row needs more than the trained adapter
                    if hasattr(plugin, "save_adapters"):
                        plugin.save_adapters(strategy.model, tmp)
        self.dist.barrier()

    def _record(self, strategy, row: list[dict], items: dict[str, dict]) -> None:
        if self.dist.is_main:  # the items first: a row in results.json always has its items on disk
            ids = {e.task: [r.id for r in e.records] for e in self.evaluators}
            write_items(self.run_dir, len(self.store.rows), items, ids)
        self.store.add_row(row)
        self.store.cost["eval_time_s"] = round(self.eval_time_s, 3)
        # results.json gets the row from runner.ExperienceDone, once a checkpoint holding it is on disk
