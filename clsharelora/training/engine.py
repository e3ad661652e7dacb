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


def shared_holders(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules that hold a Parameter registered in more than one module (ShareLoRA's shared matrices)."""
    holders: dict[int, list[torch.nn.Module]] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            holders.setdefault(id(p), []).append(module)
    return [m for mods in holders.values() if len(mods) > 1 for m in mods]


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks, found as accelerate's FSDP auto-wrap finds them: the base model's
    `_no_split_modules` class names."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def fully_sharded(model: torch.nn.Module, dist: Dist, mesh=None) -> torch.nn.Module:
    """FSDP2 (`torch.distributed.fsdp.fully_shard`, in place), sharing kept: the frozen base is sharded per
    decoder layer, and the modules that hold shared tensors (every layer's copy of a shared lora_A/lora_B)
    form one unit of their own, created first and kept unsharded from the first forward to the end of
    backward (`reshard_after_forward=False`), so each shared tensor is one whole tensor used by every layer
    and its gradient, summed over all layers, is reduced once. Why not the obvious ways: passing the shared
    tensors as `ignored_params` to the layers and letting the root own them fails (the root's traversal stops
    at submodules already sharded, so nobody reduces their gradients), and letting layer 0's unit own them
    breaks the tying (FSDP swaps the Parameter in layer 0 only); tests/test_fsdp_sharing.py checks this
    recipe against one process."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = mesh or init_device_mesh(dist.device.type, (dist.world_size,))
    holders = shared_holders(model)
    if holders:
        fully_shard(holders, mesh=mesh, reshard_after_forward=False)
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model
