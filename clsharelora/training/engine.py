"""The data-parallel engine: PyTorch DistributedDataParallel around the peft model, for one experience.

Why DDP directly and not `accelerate.Accelerator.prepare`: prepare also wraps the optimizer, scheduler and
dataloader (its own sampler, gradient-accumulation state and loss scaling), which would fight the template's
contract (its seeded global-batch sampler and the loss normalised by the target tokens of the whole global
step). accelerate still starts the processes and builds the process group (`Dist.from_environment`).

What DDP gives over a per-tensor loop: gradients all-reduced in buckets while backward is still running,
and `no_sync()` on accumulation micro-steps (the template enters it on every micro-step but the last).
Choices, and why:
- the wrapper is built at the start of each experience's training and dropped at its end: CL plug-ins add
  adapters between experiences (LwF's teacher, O-LoRA's frozen copies), and DDP fixes its parameter list
  (the parameters that require grad) when it is built;
- `find_unused_parameters=False`: every trainable adapter tensor is used by every forward, so the reducer
  needs no graph walk per step; `static_graph` is left off (it only helps reentrant checkpointing or graphs
  with unused parameters, and the template uses non-reentrant checkpointing);
- `forward_sync_buffers=False`: the model's buffers (rotary frequencies) are constants (synced once at init);
- `init_sync` only for the first wrapper of a run: it broadcasts rank 0's parameters (the frozen base too)
  so all ranks start identical; later experiences start from identical updates on every rank.
ShareLoRA: DDP lists parameters by identity (`_build_params_for_reducer` dedups shared Parameters), so a
tensor shared by every layer is one entry in one bucket; autograd sums the contributions of all layers into
its gradient before its accumulate-grad hook fires once per backward (tests/test_multiprocess.py checks
both, and that 2 processes reach the adapter of one).
Everything else (plug-ins, scoring, checkpoints, adapter saving) keeps using the unwrapped model: the
wrapper shares its Parameters, so they see the same tensors.
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn.parallel import DistributedDataParallel

from .distributed import Dist


def data_parallel(model: torch.nn.Module, dist: Dist, *, init_sync: bool) -> DistributedDataParallel | None:
    """`model` wrapped for data-parallel training, or None on one process (nothing to synchronise)."""
    if not dist.active:
        return None
    device_ids = [dist.device.index] if dist.device.type == "cuda" and dist.device.index is not None else None
    return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False,
                                   find_unused_parameters=False, init_sync=init_sync)


def no_sync(engine: torch.nn.Module | None, sync: bool):
    """The context for one micro-step: DDP's `no_sync()` unless this micro-step ends the optimizer step."""
    if engine is None or sync:
        return contextlib.nullcontext()
    return engine.no_sync()
