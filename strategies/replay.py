"""Experience replay over text: a class-balanced-by-experience buffer of past training examples is mixed
into each new experience's training data (Avalanche-style: the plugin extends `adapted_dataset`).

The buffer is a pure function of (seed, experiences seen): each past experience keeps the first
mem_size // n_seen items of a seeded permutation, so it needs no stored state to resume exactly.
"""

from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin

from clsharelora.errors import ConfigError
from clsharelora.registry import register
from clsharelora.training.cl_base import CLContext, CLStrategy


class TextReplayPlugin(SupervisedPlugin, supports_distributed=True):
    def __init__(self, datasets, mem_size: int, seed: int):
        super().__init__()
        self.datasets, self.mem_size, self.seed = datasets, mem_size, seed
        self.seen = 0

    def buffer(self):
        if self.seen == 0:
            return None
        quota = self.mem_size // self.seen
        parts = []
        for i in range(self.seen):
            data = self.datasets[i]
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(self.seed * 7919 + i))
            parts.append(data.subset(order[:min(quota, len(data))].tolist()))
        out = parts[0]
        for part in parts[1:]:
            out = out.concat(part)
        return out

    def after_train_dataset_adaptation(self, strategy, **kwargs):
        buffer = self.buffer()
        if buffer is not None and len(buffer):
            strategy.adapted_dataset = strategy.adapted_dataset.concat(buffer)

    def after_training_exp(self, strategy, **kwargs):
        self.seen = strategy.experience.current_experience + 1

    def state_dict(self) -> dict:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.seen = int(state["seen"])


@register("replay", "cl")
class Replay(CLStrategy):
    defaults = {"mem_size": 200}

    def validate(self) -> None:
        if not isinstance(self.options["mem_size"], int) or self.options["mem_size"] < 1:
            raise ConfigError("cl.mem_size must be a positive integer")

    def plugins(self, context: CLContext) -> list:
        return [TextReplayPlugin(context.datasets, self.options["mem_size"], context.seed)]
