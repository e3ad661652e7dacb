"""Experience replay over text: a class-balanced-by-experience buffer of past training examples is mixed
into each new experience's training data (Avalanche-style: the plugin extends `adapted_dataset`).

The buffer is a pure function of (seed, experiences seen): each past experience keeps the first
mem_size // n_seen items of a seeded permutation, so it needs no stored state to resume exactly.

How much of the training is old data:
- `ratio: null` (default): the buffer joins the new data and is shuffled with it, so its share is
  |buffer| / (|new| + |buffer|), which depends on the experience's size;
- `ratio: ρ`: every optimizer step (the global batch G, all processes together) holds exactly
  m = round(ρ·G) memory examples and G − m new ones (`MixedOrder`). An epoch is one pass over the new data
  (ceil(|new| / (G − m)) steps; its last, partial step keeps the proportion); memory examples are drawn
  from a seeded permutation of the buffer, reshuffled whenever it is used up.
"""

from __future__ import annotations

import math

import torch
from avalanche.core import SupervisedPlugin
from torch.utils.data import Sampler

from clsharelora.errors import ConfigError
from clsharelora.registry import register
from clsharelora.training.cl_base import CLContext, CLStrategy


class MixedOrder(Sampler[int]):
    """This rank's indices into concat(new, memory) (new first) so that each optimizer step, i.e. each
    `global_batch` consecutive positions of one seeded global order, holds `per_step` memory items.

    Rank r takes positions r, r+W, ... of the global order (as DistributedSampler does, padding the end with
    its first items), so step k of W processes with micro-batch B and accumulation G/(W·B) consumes exactly
    positions [k·G, (k+1)·G): the same step content on any number of processes."""

    def __init__(self, n_new: int, n_memory: int, per_step: int, global_batch: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0):
        super().__init__()
        if not 1 <= per_step < global_batch or n_memory < 1:
            raise ValueError(f"need 1 <= per_step < global_batch and a memory, got {per_step}, {global_batch}, "
                             f"{n_memory}")
        self.n_new, self.n_memory, self.per_step, self.global_batch = n_new, n_memory, per_step, global_batch
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _blocks(self) -> list[tuple[int, int]]:
        """(new, memory) counts of every step of an epoch."""
        fresh = self.global_batch - self.per_step
        full, rest = divmod(self.n_new, fresh)
        return [(fresh, self.per_step)] * full + ([(rest, round(rest * self.per_step / fresh))] if rest else [])

    def global_order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        new = torch.randperm(self.n_new, generator=g).tolist()
        memory: list[int] = []
        order, taken = [], 0
        for n_fresh, n_old in self._blocks():
            while len(memory) < n_old:
                memory += (self.n_new + torch.randperm(self.n_memory, generator=g)).tolist()
            block = new[taken:taken + n_fresh] + memory[:n_old]
            taken, memory = taken + n_fresh, memory[n_old:]
            order += [block[i] for i in torch.randperm(len(block), generator=g).tolist()]
        return order

    def __len__(self) -> int:
        return math.ceil(sum(a + b for a, b in self._blocks()) / self.world_size)

    def __iter__(self):
        order = self.global_order()
        padded = order + order[:len(self) * self.world_size - len(order)]
        return iter(padded[self.rank::self.world_size])


class TextReplayPlugin(SupervisedPlugin, supports_distributed=True):
    def __init__(self, datasets, mem_size: int, seed: int, ratio: float | None = None):
        super().__init__()
        self.datasets, self.mem_size, self.seed, self.ratio = datasets, mem_size, seed, ratio
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

    def memory_per_step(self, global_batch: int) -> int:
        """m = round(ratio x global_batch), which must leave room for both old and new examples."""
        m = round(self.ratio * global_batch)
        if not 1 <= m <= global_batch - 1:
            raise ConfigError(f"cl.ratio={self.ratio} of train.global_batch={global_batch} gives {m} memory "
                              f"examples per step; allowed: a ratio with 1 <= round(ratio x global_batch) <= "
                              f"{global_batch - 1}, i.e. in [{0.5 / global_batch:.3g}, {1 - 0.5 / global_batch:.3g})")
        return m

    def after_train_dataset_adaptation(self, strategy, **kwargs):
        buffer = self.buffer()
        if buffer is None or not len(buffer):
            return
        n_new = len(strategy.adapted_dataset)
        strategy.adapted_dataset = strategy.adapted_dataset.concat(buffer)
        if self.ratio is not None:
            per_step = self.memory_per_step(strategy.cfg.global_batch)
            strategy.sampler_factory = lambda data, rank, world_size, seed, global_batch: MixedOrder(
                n_new, len(buffer), per_step, global_batch, rank=rank, world_size=world_size, seed=seed)

    def after_training_exp(self, strategy, **kwargs):
        self.seen = strategy.experience.current_experience + 1

    def state_dict(self) -> dict:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.seen = int(state["seen"])


@register("replay", "cl")
class Replay(CLStrategy):
    """Options: mem_size (examples kept over all past experiences), ratio (memory share of every optimizer
    step, in (0, 1); null = the buffer simply joins the new data)."""

    defaults = {"mem_size": 200, "ratio": None}
    option_help = {"mem_size": "examples kept from all past experiences together (split evenly)",
                   "ratio": "fraction of every optimizer step drawn from memory; null: the buffer joins the data"}

    def validate(self) -> None:
        mem, ratio = self.options["mem_size"], self.options["ratio"]
        if isinstance(mem, bool) or not isinstance(mem, int) or mem < 1:
            raise ConfigError(f"cl.mem_size must be a positive integer, got {mem!r}")
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1):
            raise ConfigError(f"cl.ratio must be a number in (0, 1) (the memory share of each optimizer step) or "
                              f"null, got {ratio!r}")

    def plugins(self, context: CLContext) -> list:
        ratio = self.options["ratio"]
        return [TextReplayPlugin(context.datasets, self.options["mem_size"], context.seed,
                                 None if ratio is None else float(ratio))]
