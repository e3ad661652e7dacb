"""Part: evaluation wall time sharded by items over 2 ranks against 1 rank, on the same CPUs (issue #15).

Scoring after each experience splits every task's items over the ranks (`shard_indices`, balanced by prompt
length), each rank scores its share and the per-item results are gathered (`merge_shards`), as the scoring
plug-in does. This part times that on MMLU at the paper stream's 5 shots: one process with every usable
CPU against 2 gloo processes with half of them each (the comparison a user with these CPUs faces), in
alternating repetitions, each in fresh processes; model loading and a one-item warm-up are outside the
timed span, the gather is inside. It also checks that the 2-rank per-item results equal the 1-rank ones. Sharding costs something
the single process does not pay: each rank builds its own few-shot context cache for every subject it
holds.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import numpy as np
import torch

from .timing import summarize


def _worker(rank: int, world: int, init_file: str, out: str, s: dict) -> None:
    import torch.distributed as torch_dist

    from clsharelora.data import load_benchmark
    from clsharelora.evaluation.base import make_evaluator
    from clsharelora.evaluation.items import merge_shards, shard_indices
    from clsharelora.models import load_model, load_tokenizer
    from clsharelora.training.distributed import Dist

    torch.set_num_threads(s["threads"])
    if world > 1:
        torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        evaluator = make_evaluator("mmlu", shots=s["shots"], batch_size=s["batch_size"],
                                   records=load_benchmark("mmlu", "test", n=s["n"], subjects=list(s["subjects"])))
        model = load_model(s["model"], device="cpu")
        tokenizer = load_tokenizer(s["model"])
        model.eval()
        dist = Dist(rank=rank, world_size=world)
        evaluator.score_items(model, tokenizer, [0], progress=False)   # warm-up: first-call costs out of the span
        dist.barrier()
        t0 = time.perf_counter()
        mine = shard_indices(evaluator.item_costs(), world)[rank]
        part = evaluator.score_items(model, tokenizer, mine, progress=False)
        merged = merge_shards(dist.gather_objects((mine, part)), len(evaluator.records))
        seconds = time.perf_counter() - t0
        if rank == 0:
            torch.save({"seconds": seconds, "items": merged, "n": len(evaluator.records),
                        "shard_sizes": [len(x) for x in shard_indices(evaluator.item_costs(), world)]},
                       f"{out}/world{world}.pt")
    finally:
        if world > 1:
            torch_dist.destroy_process_group()


def _score(world: int, threads: int, s: dict) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(world, os.path.join(tmp, "init"), tmp, {**s, "threads": threads}), nprocs=world,
                 join=True)
        return torch.load(f"{tmp}/world{world}.pt", weights_only=False)


def same_items(a: dict, b: dict) -> bool:
    """Per-item results equal: exact for integers and booleans, 1e-5 relative for the float NLLs (the
    batches hold different neighbours on each rank, which may move the last bits of a float sum)."""
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.dtype.kind == "f":
            if not np.allclose(x, y, rtol=1e-5, atol=1e-7):
                return False
        elif not np.array_equal(x, y):
            return False
    return True


def run(*, model_name: str, n: int, shots: int, batch_size: int, reps: int, cpus: int,
        subjects: tuple[str, ...] = ("high_school_psychology", "elementary_mathematics"), log=print) -> dict[str, Any]:
    s = dict(model=model_name, n=n, shots=shots, batch_size=batch_size, subjects=list(subjects))
    half = max(1, cpus // 2)
    log(f"[eval_sharding] {model_name}: MMLU {n} items {shots}-shot from {len(subjects)} subjects, batch "
        f"{batch_size}; 1 process x {cpus} thread(s) vs 2 gloo processes x {half} thread(s), {reps} alternating reps")
    one, two, ratios, equal = [], [], [], []
    for rep in range(reps):
        a = _score(1, cpus, s)
        b = _score(2, half, s)
        one.append(a["seconds"])
        two.append(b["seconds"])
        ratios.append(b["seconds"] / a["seconds"])
        equal.append(same_items(a["items"], b["items"]))
        log(f"[eval_sharding] rep {rep + 1}: 1 rank {a['seconds']:.1f} s, 2 ranks {b['seconds']:.1f} s "
            f"(shards {b['shard_sizes']}), per-item results equal: {equal[-1]}")
    return {**s, "device": "cpu", "backend": "gloo", "reps": reps, "cpus": cpus, "threads_one": cpus,
            "threads_two": half, "items": a["n"], "one_rank": summarize(one), "two_ranks": summarize(two),
            "ratio": summarize(ratios)["median"], "rep_ratios": ratios, "items_equal": all(equal)}
