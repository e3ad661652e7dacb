"""The continual-learning metrics as an Avalanche PluginMetric, so Avalanche's loggers (text, CSV,
TensorBoard, W&B) receive the per-task scores and ACC/BWT/FWT/forgetting/plasticity after every experience."""

from __future__ import annotations

import math

from avalanche.evaluation.metric_definitions import PluginMetric
from avalanche.evaluation.metric_results import MetricValue

from .results import SCORES, ResultsStore


class ContinualMetrics(PluginMetric[dict]):
    """Reads the ResultsStore that ScoringPlugin fills (it runs first) and emits its newest row + metrics.

    Names follow Avalanche's "Metric/Phase/Stream/Task" style, e.g. ``Accuracy/Task/gsm8k`` and
    ``CL/BWT/accuracy``; x is the number of experiences done.
    """

    def __init__(self, store: ResultsStore):
        super().__init__()
        self.store = store

    def result(self) -> dict:
        return self.store.metrics()

    def reset(self) -> None:
        """Nothing to reset: the store is the run's state, not an accumulator."""

    def _emit(self) -> list[MetricValue]:
        if not self.store.rows:
            return []
        x = self.store.done
        values = []
        for cell in self.store.rows[-1]:
            for score in SCORES:
                if cell.get(score) is None:   # a task scored without generation has no accuracy
                    continue
                values.append(MetricValue(self, f"{score.capitalize()}/Task/{cell['task']}", float(cell[score]), x))
        for score, metrics in self.store.metrics().items():
            for name in ("acc", "bwt", "fwt", "forgetting", "plasticity"):
                value = metrics.get(name)
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    values.append(MetricValue(self, f"CL/{name.upper()}/{score}", float(value), x))
        return values

    def before_training_exp(self, strategy):
        return self._emit() if self.store.done == 0 else None

    def after_training_exp(self, strategy):
        return self._emit()

    def __str__(self) -> str:
        return "ContinualMetrics"
