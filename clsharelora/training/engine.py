"""The engines that share the model over processes: PyTorch DistributedDataParallel around the peft model,
rebuilt per experience (train.engine: ddp, the default), or FSDP2 sharding it in place once per run
(train.engine: fsdp; `fully_sharded`, with `Lockstep` for evaluation and the gather/load helpers that saves,
checkpoints and resume use; docs/scale.md).

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
import copy

import torch
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError
from .distributed import Dist


def data_parallel(model: torch.nn.Module, dist: Dist, *, init_sync: bool) -> DistributedDataParallel | None:
    """`model` wrapped for data-parallel training, or None on one process (nothing to synchronise)."""
    if not dist.active:
        return None
    device_ids = [dist.device.index] if dist.device.type == "cuda" and dist.device.index is not None else None
    return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False,
                                   find_unused_parameters=False, init_sync=init_sync)


def no_sync(engine: torch.nn.Module | None, sync: bool):
    """The context for one micro-step that does not end the optimizer step: DDP's `no_sync()`, or for an
    FSDP2-sharded model `set_requires_gradient_sync(False)` on its root (recursively), so the micro-steps'
    gradients accumulate unsharded on each rank and are reduce-scattered once, in the last backward."""
    if engine is None or sync:
        return contextlib.nullcontext()
    if fsdp_root(engine) is None:
        return engine.no_sync()
    return _fsdp_no_sync(engine)


@contextlib.contextmanager
def _fsdp_no_sync(model):
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]   # a tied lm_head's unit is outside the root
    for unit in units:
        unit.set_requires_gradient_sync(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.set_requires_gradient_sync(True, recurse=False)


def _registrations(model: torch.nn.Module) -> dict[torch.nn.Parameter, list[torch.nn.Module]]:
    holders: dict[torch.nn.Parameter, list[torch.nn.Module]] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            holders.setdefault(p, []).append(module)
    return holders


def shared_holders(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules that hold a trainable Parameter registered in more than one module (ShareLoRA's shared
    matrices)."""
    return [m for p, mods in _registrations(model).items() if len(mods) > 1 and p.requires_grad for m in mods]


def frozen_shared(model: torch.nn.Module) -> set[torch.nn.Parameter]:
    """Frozen Parameters registered in more than one module (tied input/output embeddings)."""
    return {p for p, mods in _registrations(model).items() if len(mods) > 1 and not p.requires_grad}


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
    # The root is the decoder stack (LlamaModel inside LlamaForCausalLM inside peft's wrappers): every forward
    # reaches it through __call__ (peft's forward and generate end in the causal LM's forward, which calls it),
    # so its hooks (FSDP's, and the evaluation Lockstep's) see every model forward. The causal LM itself is
    # left unwrapped so that `generate` does not switch to `synced_gpus` (transformers does so for modules
    # fully_shard marks): the Lockstep already keeps the ranks' forwards in step, across generate calls too.
    # A frozen untied lm_head thus stays replicated.
    # A frozen tied embedding is left whole on every rank (ignored_params): the lm_head sharing it runs
    # after the stack, outside the root, and a frozen tensor has no gradient to reduce.
    fully_shard(stack_of(model), mesh=mesh, ignored_params=frozen_shared(model) or None)
    # One forward now, outside any inference mode: FSDP allocates its unsharded parameters at the first
    # all-gather, and if that were evaluation's (under torch.inference_mode) they would be inference tensors
    # that no later training forward may write. (A collective: every rank shards, so every rank runs it.)
    one_token_forward(model, dist.device)
    reshard(model)
    return model


def reshard(model: torch.nn.Module) -> None:
    """Every FSDP unit back to its sharded parameters. Needed after forwards without backward: a unit built
    with reshard_after_forward=False (the shared holders) keeps its gathered plain tensors registered in the
    modules until a backward reshards it, and an optimizer or checkpoint must see the sharded DTensors."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def one_token_forward(model: torch.nn.Module, device) -> None:
    """A forward of one token through the whole causal LM (a tied lm_head belongs to the shared holders' unit,
    which FSDP counts as done only when all its modules ran), without grad; its output is not used."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    with torch.no_grad():
        base(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device), use_cache=False, logits_to_keep=1)


def stack_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers decoder stack inside a (peft) causal LM: `base_model` of the transformers model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "base_model", base)


# What train.engine=fsdp is tested with (tests/test_fsdp_run.py); the rest is refused before anything is written.
FSDP_ADAPTERS = ("lora", "sharelora")
FSDP_CL = ("naive", "replay", "joint")
FSDP_REFUSED_CL = {
    "ewc": "its Fisher pass runs extra forwards and backwards per rank and reads per-parameter gradients",
    "lwf": "its teacher forward swaps adapter weights in and out of the sharded model",
    "olora": "it adds a frozen adapter per experience, and FSDP2 fixes the parameter list when it shards",
}


def check_fsdp_combination(adapter: str, cl: str, load_in_4bit: bool) -> None:
    """ConfigError for what train.engine=fsdp cannot run: FSDP2 shards the model in place once per run (it
    cannot be undone per experience as the DDP wrapper is), so the parameter list is fixed for the run."""
    if adapter not in FSDP_ADAPTERS:
        raise ConfigError(f"train.engine=fsdp: adapter {adapter!r} is not supported (untested under FSDP); "
                          f"allowed with fsdp: {', '.join(FSDP_ADAPTERS)} (or train.engine=ddp)")
    if cl not in FSDP_CL:
        why = FSDP_REFUSED_CL.get(cl, "untested under FSDP")
        raise ConfigError(f"train.engine=fsdp: cl method {cl!r} is not supported ({why}); allowed with fsdp: "
                          f"{', '.join(FSDP_CL)} (or train.engine=ddp)")
    if load_in_4bit:
        raise ConfigError("train.engine=fsdp with load_in_4bit=true is not supported (bitsandbytes' 4-bit "
                          "weights are not sharded by fully_shard here); choose one of them")


def fsdp_root(model: torch.nn.Module | None):
    """The outermost FSDP2 module inside `model` (None when `model` is not sharded)."""
    if model is None:
        return None
    from torch.distributed.fsdp import FSDPModule

    return next((m for m in model.modules() if isinstance(m, FSDPModule)), None)


def _full_options(**extra):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **extra)


def full_trainable_state(model: torch.nn.Module, *, every_name: bool = False) -> dict[str, torch.Tensor]:
    """The trainable tensors of a sharded model, gathered whole (a collective: call it on EVERY rank), on CPU;
    rank 0 gets them, the other ranks an empty dict (`cpu_offload`). Frozen base weights are never gathered.
    Keyed by the names `named_parameters` gives (each shared tensor once, as checkpoints store them), or with
    `every_name` by every name `state_dict()` has (a shared tensor under each layer's name, as peft saves)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    full = get_model_state_dict(model, options=_full_options(cpu_offload=True, ignore_frozen_params=True))
    if not full or every_name:
        return full
    return {n: full[n].contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_full_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Every rank passes the same whole tensors (as `full_trainable_state` wrote them); each keeps its shard."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    # strict=False: the frozen base is not in a checkpoint, and a shared tensor comes under its first name only
    set_model_state_dict(model, dict(tensors), options=_full_options(strict=False))   # it rewrites the dict


def full_optimizer_state(model: torch.nn.Module, optimizer) -> dict:
    """The optimizer state of a sharded model, gathered whole and keyed by parameter name (collective; rank 0
    gets it, the others an empty dict)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))


def load_full_optimizer(model: torch.nn.Module, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, copy.deepcopy(state), options=_full_options())   # (it rewrites it)


class Lockstep:
    """Equal numbers of model forwards on every rank, for evaluation of a sharded model.

    FSDP all-gathers parameters in every forward, so all ranks must run the same number of forwards; item
    sharding gives ranks different numbers of batches, and generation a data-dependent number of decode steps.
    This is `torch.distributed.algorithms.Join` (the mechanism DDP uses for uneven inputs) with the model as
    the Joinable: a forward pre-hook on the FSDP root, registered before FSDP's own, announces "still working"
    (Join.notify_join_context, an all-reduce of 1) before each real forward; a rank whose items are done
    leaves the `with`, and Join then answers each such all-reduce with a 0 and one dummy forward (one token)
    of the same model until every rank is done. The interface relied on: every forward of the evaluators
    (prefill, each decode step of `generate`, teacher-forced scoring) goes through the root's `__call__`."""

    def __init__(self, model: torch.nn.Module, dist: Dist):
        from torch.distributed.algorithms.join import Joinable, JoinHook

        class _Model(Joinable):
            def __init__(inner):
                super().__init__()

            def join_hook(inner, **kwargs):
                hook = JoinHook()
                hook.main_hook = self._dummy_forward
                return hook

            @property
            def join_device(inner):
                return dist.device

            @property
            def join_process_group(inner):
                return None   # the default group

        self.model, self.dist = model, dist
        self.root = stack_of(model)
        self.joinable = _Model()
        self._working = False
        self._handle = self.root.register_forward_pre_hook(self._announce, prepend=True)

    def _announce(self, module, args):
        if self._working:
            from torch.distributed.algorithms.join import Join

            Join.notify_join_context(self.joinable)

    def _dummy_forward(self) -> None:
        one_token_forward(self.model, self.dist.device)

    @contextlib.contextmanager
    def items(self):
        """Run this rank's share of the items inside; on leaving, shadow the other ranks' forwards until all
        are done."""
        from torch.distributed.algorithms.join import Join

        with Join([self.joinable]):
            self._working = True
            try:
                yield
            finally:
                self._working = False
        reshard(self.model)

    def close(self) -> None:
        self._handle.remove()
