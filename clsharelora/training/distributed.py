"""Process-group facts and the few collectives training needs, on top of accelerate's PartialState.

`accelerate launch` / torchrun set the environment; PartialState initialises the process group (gloo on
CPU, nccl on GPUs). A single process gets world_size 1 and every collective is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from ..errors import ConfigError


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @classmethod
    def single(cls, device: str | torch.device = "cpu") -> "Dist":
        return cls(device=torch.device(device))

    @classmethod
    def from_environment(cls, device: str = "auto") -> "Dist":
        """Use accelerate's PartialState; `device`='cpu' forces CPU (gloo) even where GPUs exist. Under a
        launcher each process takes its node's GPU `local_rank` (accelerate's device), on any number of nodes;
        a pinned `cuda:N` is for one process only (several processes would share one GPU and each run alone)."""
        import os

        from accelerate import PartialState

        if device.startswith("cuda:"):
            processes = int(os.environ.get("WORLD_SIZE") or 1)
            if processes > 1:
                raise ConfigError(f"device {device!r} pins one GPU, but the launch starts {processes} processes; "
                                  f"allowed with several processes: auto | cuda | cpu (each process then takes "
                                  f"the GPU of its local rank)")
            return cls.single(device)
        state = PartialState(cpu=device == "cpu")
        return cls(rank=state.process_index, world_size=state.num_processes,
                   local_rank=state.local_process_index, device=state.device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1 and torch_dist.is_available() and torch_dist.is_initialized()

    def barrier(self) -> None:
        if self.active:
            torch_dist.barrier()

    def all_reduce_sum(self, tensors) -> None:
        """Sum each tensor over all ranks, in place (identity on one process)."""
        if not self.active:
            return
        for t in tensors:
            torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)

    def sum_int(self, value: int) -> int:
        if not self.active:
            return int(value)
        t = torch.tensor([int(value)], dtype=torch.long, device=self.device)
        torch_dist.all_reduce(t)
        return int(t.item())

    def sum_float(self, value: float) -> float:
        if not self.active:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(t)
        return float(t.item())

    def gather_objects(self, obj) -> list:
        """Every rank's object, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        torch_dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        if not self.active:
            return obj
        box = [obj]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]
