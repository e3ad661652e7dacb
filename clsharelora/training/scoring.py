"""ScoringPlugin: after every experience (and once before the first), score every task of the stream.

Each score appends one row to the R matrices, the adapter of that experience is saved, and results.json
is rewritten atomically. With several processes the tasks are split across ranks and gathered.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from avalanche.core import SupervisedPlugin

from .. import atomic
from ..evaluation.base import Evaluator
from .distributed import Dist
from .results import ResultsStore


class ScoringPlugin(SupervisedPlugin, supports_distributed=True):
    def __init__(self, evaluators: list[Evaluator], tokenizer, store: ResultsStore, run_dir: Path, *,
                 adapter, dist: Dist | None = None, progress: bool = True):
        super().__init__()
        self.evaluators = evaluators
        self.tokenizer = tokenizer
        self.store = store
        self.run_dir = Path(run_dir)
        self.adapter = adapter
        self.dist = dist or Dist.single()
        self.progress = progress
        self.eval_time_s = float(store.cost.get("eval_time_s", 0.0))

    def score(self, model) -> list[dict]:
        """Every task's TaskScore dict, in stream order; task i is computed on rank i % world_size."""
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        mine = {}
        try:
            for i, evaluator in enumerate(self.evaluators):
                if i % self.dist.world_size == self.dist.rank:
                    mine[i] = evaluator.evaluate(model, self.tokenizer, progress=self.progress).as_dict()
        finally:
            model.train(was_training)
        merged = {}
        for part in self.dist.gather_objects(mine):
            merged.update(part)
        self.eval_time_s += time.perf_counter() - start
        return [merged[i] for i in range(len(self.evaluators))]

    def before_training_exp(self, strategy, **kwargs):
        if not self.store.rows:
            self._record(strategy, self.score(strategy.model))

    def after_training_exp(self, strategy, **kwargs):
        self._record(strategy, self.score(strategy.model))
        if self.dist.is_main:
            with atomic.directory(self.run_dir / "adapters" / f"exp_{self.store.done}") as tmp:
                self.adapter.save(strategy.model, tmp)
                for plugin in strategy.plugins:  # CL methods whose row needs more than the trained adapter
                    if hasattr(plugin, "save_adapters"):
                        plugin.save_adapters(strategy.model, tmp)
        self.dist.barrier()

    def _record(self, strategy, row: list[dict]) -> None:
        self.store.add_row(row)
        self.store.cost["eval_time_s"] = round(self.eval_time_s, 3)
        if self.dist.is_main:
            self.store.write(self.run_dir)
