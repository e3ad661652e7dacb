"""The DDP engine on a ShareLoRA model (2 gloo processes, in-process spawn): the reducer's buckets hold every
trainable tensor once (each shared tensor once), and its averaged gradient equals the mean of the two
processes' full local gradients (all layers' contributions summed), computed without DDP as the reference.
Also: on accumulation micro-steps (`no_sync`) nothing is communicated."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from transformers import AutoModelForCausalLM

from clsharelora.adapters import ShareLoraConfig, apply_sharelora, shared_parameters, spec_of
from clsharelora.models import configs
from clsharelora.training import engine
from clsharelora.training.distributed import Dist
from clsharelora.training.template import trainable_parameters

VOCAB = 256


def _model(variant: str):
    torch.manual_seed(0)
    model = apply_sharelora(AutoModelForCausalLM.from_config(configs.tiny_llama(vocab_size=VOCAB)),
                            ShareLoraConfig(variant=variant, r=4, dropout=0.0))
    g = torch.Generator().manual_seed(1)   # B starts at zero in LoRA: random adapters give every tensor a gradient
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _batch(rank: int):
    g = torch.Generator().manual_seed(100 + rank)   # a different batch per rank
    ids = torch.randint(0, VOCAB, (2, 12), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


VARIANTS = ("lora", "share_a", "share_b", "share_ab")


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for variant in VARIANTS:   # one spawn for all variants: starting processes costs more than the checks
            _check(rank, world, variant, out)
    finally:
        torch_dist.destroy_process_group()


def _check(rank: int, world: int, variant: str, out: str) -> None:
    model = _model(variant)
    params = trainable_parameters(model)
    # reference: this rank's full local gradient (no DDP), averaged over ranks by hand
    model(**_batch(rank)).loss.backward()
    local = [p.grad.clone() for p in params]
    reference = []
    for g in local:
        gathered = [torch.empty_like(g) for _ in range(world)]
        torch_dist.all_gather(gathered, g)
        reference.append(torch.stack(gathered).mean(0))
    model.zero_grad(set_to_none=True)

    ddp = engine.data_parallel(model, Dist(rank=rank, world_size=world), init_sync=True)
    seen: list[list[int]] = []

    def recording_hook(state, bucket):
        seen[-1].extend(id(p) for p in bucket.parameters())
        return default_hooks.allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, recording_hook)
    seen.append([])
    with engine.no_sync(ddp, sync=False):           # an accumulation micro-step: no communication
        ddp(**_batch(rank)).loss.backward()
    model.zero_grad(set_to_none=True)
    seen.append([])
    with engine.no_sync(ddp, sync=True):            # the step's last micro-step: buckets reduced
        ddp(**_batch(rank)).loss.backward()
    shared = [ps[0] for ps in shared_parameters(model, spec_of(model)).values()]
    torch.save({"no_sync_ids": seen[0], "sync_ids": seen[1], "param_ids": [id(p) for p in params],
                "shared_ids": [id(p) for p in shared],
                "max_diff": max(float((p.grad - r).abs().max()) for p, r in zip(params, reference)),
                "scale": max(float(r.abs().max()) for r in reference)}, f"{out}/{variant}-rank{rank}.pt")


def test_ddp_reduces_each_shared_tensor_once_to_the_mean_of_full_local_gradients():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        results = {(v, r): torch.load(f"{tmp}/{v}-rank{r}.pt") for v in VARIANTS for r in range(2)}
    for (variant, _), res in results.items():
        assert res["no_sync_ids"] == []                        # no_sync: nothing went over the wire
        ids = res["sync_ids"]
        assert len(ids) == len(set(ids))                       # no tensor in two buckets or twice in one
        assert sorted(ids) == sorted(res["param_ids"])         # every trainable tensor, each once
        if variant != "lora":
            assert res["shared_ids"] and set(res["shared_ids"]) <= set(ids)
        assert res["max_diff"] <= 1e-5 * max(1.0, res["scale"]), res


def test_a_pinned_gpu_under_a_multi_process_launch_is_refused_naming_what_is_allowed(monkeypatch):
    """Several processes on one pinned `cuda:N` would each train alone (world size 1) and all write."""
    from clsharelora.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"device 'cuda:1' pins one GPU, but the launch starts 2 processes; "
                                          r"allowed with several processes: auto \| cuda \| cpu"):
        Dist.from_environment("cuda:1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert Dist.from_environment("cuda:1") == Dist.single("cuda:1")
