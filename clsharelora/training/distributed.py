"""Process-group facts and the few collectives training needs, on top of accelerate's PartialState.

`accelerate launch` / torchrun set the environment; PartialState initialises the process group (gloo on
CPU, nccl on GPUs). A single process gets world_size 1 and every collective is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


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
        """Use accelerate's PartialState; `device`='cpu' forces CPU (gloo) even where GPUs exist."""
        from accelerate import PartialState

        state = PartialState(cpu=device == "cpu")
        dev = state.device if device in ("auto", "cpu") else torch.device(device)
        return cls(rank=state.process_index, world_size=state.num_processes,
                   local_rank=state.local_process_index, device=dev)

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
