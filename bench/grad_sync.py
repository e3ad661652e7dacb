"""Part: what gradient synchronisation costs, the engine (DDP: bucketed all-reduce overlapped with backward)
against the per-tensor loop it replaced (one blocking all_reduce per trainable tensor after backward, kept
here only as the reference). 2 gloo processes on CPU, one optimizer step = forward + backward (+ sync) of one
micro-batch; blocks alternate local (no sync: the floor), loop, ddp, and each block's median step is paired.
Reported: step time of each, the sync overhead over the local step, and engine / loop ratios, with the
settings beside them. On one CPU box the "network" is shared memory, so the figure is a floor on the
overhead, not a cluster's.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import torch

from .timing import summarize


def per_tensor_loop(params, world_size: int) -> None:
    """The old `Dist.average_gradients`: all-reduce (mean) every gradient, one tensor at a time."""
    import torch.distributed as torch_dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch_dist.all_reduce(p.grad, op=torch_dist.ReduceOp.SUM)
        p.grad.div_(world_size)


def _worker(rank: int, world: int, init_file: str, out: str, s: dict) -> None:
    import torch.distributed as torch_dist

    from clsharelora.training import engine
    from clsharelora.training.distributed import Dist
    from clsharelora.training.template import trainable_parameters

    from .adapters import build, make_batches

    torch.set_num_threads(s["threads"])
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, _ = build(s["model"], s["variant"], s["r"], "cpu")
        params = trainable_parameters(model)
        batch = make_batches(s["model"], batch=s["batch"], seq=s["seq"], n_batches=world, seed=0)[rank]
        ddp = engine.data_parallel(model, Dist(rank=rank, world_size=world), init_sync=True)

        def step(kind: str) -> float:
            torch_dist.barrier()
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            if kind == "ddp":
                ddp(**batch).loss.backward()
            else:
                model(**batch).loss.backward()
                if kind == "loop":
                    per_tensor_loop(params, world)
            return time.perf_counter() - t0

        samples: dict[str, list[float]] = {"local": [], "loop": [], "ddp": []}
        medians: list[dict[str, float]] = []
        for _ in range(s["blocks"]):
            block = {}
            for kind in samples:
                step(kind)   # the first step of a block is not a sample
                times = [step(kind) for _ in range(s["steps"])]
                samples[kind] += times
                block[kind] = summarize(times)["median"]
            medians.append(block)
        if rank == 0:
            torch.save({"samples": samples, "medians": medians,
                        "tensors": len(params), "numel": sum(p.numel() for p in params)}, f"{out}/rank0.pt")
    finally:
        torch_dist.destroy_process_group()


def run(*, model_name: str, variant: str = "share_a", r: int, batch: int, seq: int, steps: int, blocks: int,
        threads: int = 1, log=print) -> dict[str, Any]:
    import torch.multiprocessing as mp

    s = dict(model=model_name, variant=variant, r=r, batch=batch, seq=seq, steps=steps, blocks=blocks,
             threads=threads)
    log(f"[grad_sync] {model_name} {variant} r={r}, 2 gloo processes on CPU ({threads} thread(s) each), batch "
        f"{batch} x {seq} per process, {blocks} blocks x {steps} steps of local | per-tensor loop | DDP")
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), tmp, s), nprocs=2, join=True)
        res = torch.load(f"{tmp}/rank0.pt")
    paired = {k: summarize([m[k] - m["local"] for m in res["medians"]])["median"] for k in ("loop", "ddp")}
    ratios = [m["ddp"] / m["loop"] for m in res["medians"]]
    out = {**s, "device": "cpu", "processes": 2, "backend": "gloo", "trainable_tensors": res["tensors"],
           "trainable_numel": res["numel"], **{f"{k}_step": summarize(v) for k, v in res["samples"].items()},
           "loop_overhead_s": paired["loop"], "ddp_overhead_s": paired["ddp"],
           "step_ratio": summarize(ratios)["median"], "block_ratios": ratios}
    out["overhead_ratio"] = (paired["ddp"] / paired["loop"]) if paired["loop"] > 0 else None
    return out


if __name__ == "__main__":   # one brief run of this part alone: python -m bench.grad_sync
    import json
    import sys

    from .timing import fmt_stats

    r = run(model_name=sys.argv[1] if len(sys.argv) > 1 else "tiny-llama", r=8, batch=1, seq=64, steps=3, blocks=3,
            log=lambda m: print(m, file=sys.stderr))
    for k in ("local", "loop", "ddp"):
        print(f"{k:6s} step {fmt_stats(r[k + '_step'])}")
    print(json.dumps({k: v for k, v in r.items() if not k.endswith("_step")}, indent=1))
