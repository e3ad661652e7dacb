"""FSDP2 (`torch.distributed.fsdp.fully_shard`) through `engine.fully_sharded`, 2 gloo processes on CPU, for
each ShareLoRA variant: the gradient equals one process's on the global batch (the mean of both ranks'
batches); after an optimizer step each shared tensor is still one tensor used by every layer; the full
(gathered) state saves in the peft + sharelora.json format and loads on one process, tied, with the same
values. Also the two obvious recipes that do NOT work, so that a change of FSDP's behaviour shows:
shared tensors as `ignored_params` of the layers (the root does not take them: never reduced), and layer 0's
unit owning them (the tying breaks)."""

from __future__ import annotations

import os
import tempfile

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from test_ddp_engine import VARIANTS, VOCAB, _batch, _model
from transformers import AutoModelForCausalLM

from clsharelora.adapters import is_tied, load_sharelora, save_sharelora, shared_parameters, spec_of
from clsharelora.models import configs
from clsharelora.training import engine
from clsharelora.training.distributed import Dist


def _grad_diffs(model, reference) -> dict[str, float]:
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            out[name] = float((grad - reference[name]).abs().max())
    return out


def _tied_across_layers(model) -> bool:
    return all(all(p is ps[0] for p in ps) for ps in shared_parameters(model, spec_of(model)).values())


def _check(rank: int, world: int, variant: str, recipe: str, out: str) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model, ref = _model(variant), _model(variant)
    (sum(ref(**_batch(r)).loss for r in range(world)) / world).backward()   # one process, global batch
    reference = {n: p.grad for n, p in ref.named_parameters() if p.requires_grad}
    mesh = init_device_mesh("cpu", (world,))
    layers = engine.decoder_layers(model)
    shared = {ps[0] for ps in shared_parameters(model, spec_of(model)).values()}
    if recipe == "engine":
        engine.fully_sharded(model, Dist(rank=rank, world_size=world), mesh=mesh)
    elif recipe == "ignored":
        for layer in layers:
            fully_shard(layer, mesh=mesh, ignored_params=shared)
        fully_shard(model, mesh=mesh)
    else:   # "layer0"
        fully_shard(layers[0], mesh=mesh, reshard_after_forward=False)
        for layer in layers[1:]:
            fully_shard(layer, mesh=mesh, ignored_params=shared)
        fully_shard(model, mesh=mesh)
    model(**_batch(rank)).loss.backward()
    engine.reshard(model)   # every unit (the engine recipe's root is the decoder stack, not the peft model)
    res = {"layers": len(layers), "tied": _tied_across_layers(model)}
    if res["tied"]:
        res["diffs"] = _grad_diffs(model, reference)
    if recipe == "engine":
        torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
        res["tied_after_step"] = _tied_across_layers(model)
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:   # one process: a plain model takes the gathered state, saves, and loads tied
            single = _model(variant)
            single.load_state_dict(full)
            save_sharelora(single, f"{out}/{variant}-adapter")
            torch.manual_seed(0)
            base = AutoModelForCausalLM.from_config(configs.tiny_llama(vocab_size=VOCAB))
            loaded = load_sharelora(base, f"{out}/{variant}-adapter")
            res["loaded_tied"] = is_tied(loaded)
            res["loaded_diff"] = max(float((p - full[n]).abs().max()) for n, p in loaded.state_dict().items()
                                     if "lora_" in n)
    torch.save(res, f"{out}/{variant}-{recipe}-rank{rank}.pt")


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for variant in VARIANTS[1:]:
            _check(rank, world, variant, "engine", out)
        for recipe in ("ignored", "layer0"):
            _check(rank, world, "share_a", recipe, out)
    finally:
        torch_dist.destroy_process_group()


def test_fsdp2_two_processes_equal_one_and_shared_tensors_stay_whole_through_step_save_and_load():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        load = lambda v, recipe, r: torch.load(f"{tmp}/{v}-{recipe}-rank{r}.pt")   # noqa: E731
        for variant in VARIANTS[1:]:
            for rank in range(2):
                res = load(variant, "engine", rank)
                assert res["layers"] == 2 and res["tied"] and res["tied_after_step"], (variant, res)
                assert max(res["diffs"].values()) <= 1e-6, (variant, res["diffs"])
            rank0 = load(variant, "engine", 0)
            assert rank0["loaded_tied"] and rank0["loaded_diff"] == 0.0, (variant, rank0)
        ignored = load("share_a", "ignored", 0)   # tied, but the shared A gradients stay local
        assert ignored["tied"] and max(d for n, d in ignored["diffs"].items() if "lora_A" in n) > 1e-3
        assert max(d for n, d in ignored["diffs"].items() if "lora_B" in n) <= 1e-6
        assert not load("share_a", "layer0", 0)["tied"]
