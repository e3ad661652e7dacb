"""Multi-task joint training: the upper bound the sequential strategies are placed against.

One training phase on the union of every experience's training set, shuffled together (so each task is
sampled in proportion to its training-set size), for as many optimizer steps as the sequential run takes in
total (the sum of every experience's planned steps, computed by the template from the same budgets), then
every task is scored once. The run's results therefore hold two rows (before, after); analysis draws them
as a reference line, not as a forgetting matrix. Same cost per step as naive training.
"""

from __future__ import annotations

from avalanche.core import SupervisedPlugin

from clsharelora.registry import register
from clsharelora.training.cl_base import CLContext, CLStrategy


def union(datasets):
    out = datasets[0]
    for data in datasets[1:]:
        out = out.concat(data)
    return out


class JointPlugin(SupervisedPlugin, supports_distributed=True):
    def __init__(self, datasets, store=None):
        super().__init__()
        self.datasets, self.store = datasets, store
        self.total_steps = None

    def before_training(self, strategy, **kwargs):
        if self.total_steps is not None:
            return
        world = strategy.dist.world_size
        steps = []
        for i, data in enumerate(self.datasets):
            padded = -(-len(data) // world) * world           # the epoch as all ranks see it (as the template)
            steps.append(strategy.planned_steps(padded, i)[0])
        self.total_steps = sum(steps)
        strategy.budgets[0] = {"epochs": None, "max_steps": self.total_steps}
        if self.store is not None:
            self.store.cost["joint"] = {"steps": self.total_steps, "sequential_steps": steps,
                                        "train_sizes": [len(d) for d in self.datasets]}

    def after_train_dataset_adaptation(self, strategy, **kwargs):
        if strategy.experience.current_experience == 0:
            strategy.adapted_dataset = union(self.datasets)


@register("joint", "cl")
class Joint(CLStrategy):
    """No options: the union, the step count and the sampling follow from the stream and `train`."""

    defaults = {}

    def schedule(self, experiences: list) -> list:
        return experiences[:1]

    def plugins(self, context: CLContext) -> list:
        return [JointPlugin(context.datasets, store=context.store)]
