"""Part 2: framework overhead. Our Avalanche strategy (CausalLMTemplate) vs a bare transformers + peft loop,
on the same model object, the same tokenised examples, batch, optimizer, schedule, clipping and autocast.

A step is the wall time between the ends of two consecutive optimizer steps, so everything the loop does
per step counts (data loading and collation, plugin callbacks, the loss bookkeeping), not just the model.
Blocks alternate (strategy, bare, strategy, bare, ...) so machine drift hits both; the first step of each
block (optimizer state allocation, data-loader start) is not a sample, and is reported separately as the
per-block setup through the amortised time (block wall time / steps).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from .adapters import autocast, bf16_used, build, make_batches, pick_device
from .timing import summarize, synchronize

TARGET = 1.05   # strategy step <= 1.05 x bare loop step (issue #8)


def _dataset(batches: list[dict[str, torch.Tensor]]):
    from clsharelora.benchmarks.tokenized import TokenizedPairs

    rows = [b["input_ids"][i].tolist() for b in batches for i in range(b["input_ids"].shape[0])]
    return TokenizedPairs([{"input_ids": r, "labels": list(r)} for r in rows], [str(i) for i in range(len(rows))])


def _train_config(batch: int, steps: int, device):
    from clsharelora.config import TrainConfig

    return TrainConfig(lr=1e-4, batch_size=batch, global_batch=batch, max_steps=steps, bf16=bf16_used(device),
                       max_grad_norm=1.0, warmup_ratio=0.03, schedule="cosine")


def strategy_block(model, dataset, pad: int, batch: int, steps: int, device,
                   plugins=()) -> tuple[list[float], float]:
    """(end time of every optimizer step, wall time of the whole train() call) of one Avalanche experience
    (extra `plugins`, e.g. a CL method's, run inside it: bench/lwf_cost.py)."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.utils import AvalancheDataset
    from avalanche.core import SupervisedPlugin

    from clsharelora.benchmarks.tokenized import PadCollator
    from clsharelora.training.template import CausalLMTemplate

    class StepClock(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.ends: list[float] = []

        def after_update(self, strategy, **kwargs):
            synchronize(device)
            self.ends.append(time.perf_counter())

    clock = StepClock()
    bench = benchmark_from_datasets(train=[AvalancheDataset([dataset], collate_fn=PadCollator(pad))])
    strategy = CausalLMTemplate(model=model, train_config=_train_config(batch, steps, device), plugins=[*plugins, clock],
                                progress=False, device=device)
    synchronize(device)
    start = time.perf_counter()
    strategy.train(bench.train_stream[0])
    synchronize(device)
    return clock.ends, time.perf_counter() - start


def bare_block(model, dataset, pad: int, batch: int, steps: int, device) -> tuple[list[float], float]:
    """The same experience as a plain loop: DataLoader + PadCollator, AdamW, cosine schedule, clip, autocast."""
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    from clsharelora.benchmarks.tokenized import PadCollator
    from clsharelora.training.template import trainable_parameters

    cfg = _train_config(batch, steps, device)
    synchronize(device)
    start = time.perf_counter()
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.schedule, optimizer, num_warmup_steps=int(round(cfg.warmup_ratio * steps)),
                              num_training_steps=steps)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, collate_fn=PadCollator(pad),
                        generator=torch.Generator().manual_seed(0))
    model.train()
    ends: list[float] = []
    while len(ends) < steps:
        for b in loader:
            b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
            optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                loss = model(**b).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            float(loss.detach())
            synchronize(device)
            ends.append(time.perf_counter())
            if len(ends) == steps:
                break
    return ends, time.perf_counter() - start


def prepare(*, model_name: str, r: int, batch: int, seq: int, reps: int, steps_per_block: int, device: str | None):
    """What both paired-block parts (this one and lwf_cost.py) time: a LoRA model, `steps_per_block` batches
    of examples, the pad id, the device, and how many blocks give each loop `reps` step samples."""
    from clsharelora.evaluation.generation import pad_id
    from clsharelora.models import load_tokenizer

    if steps_per_block < 2:
        raise ValueError("steps_per_block must be >= 2 (the first step of a block is not a sample)")
    dev = pick_device(device)
    model, _ = build(model_name, "lora", r, dev)
    dataset = _dataset(make_batches(model_name, batch=batch, seq=seq, n_batches=steps_per_block, device="cpu"))
    return model, dataset, pad_id(load_tokenizer(model_name)), dev, math.ceil(reps / (steps_per_block - 1))


def alternate(blocks: int, steps_per_block: int, loops: dict) -> dict[str, Any]:
    """Run each of the two `loops` (name -> () -> (step end times, wall)) in turn, `blocks` times. Returns
    per loop its step samples and amortised steps, and per block the ratio of the first loop's median step
    to the second's (paired: drift between blocks cancels)."""
    first, second = loops
    samples: dict[str, list[float]] = {name: [] for name in loops}
    walls: dict[str, list[float]] = {name: [] for name in loops}
    ratios = []
    for _ in range(blocks):
        medians = {}
        for name, loop in loops.items():
            ends, wall = loop()
            if len(ends) != steps_per_block:
                raise RuntimeError(f"{name} loop ran {len(ends)} optimizer steps, expected {steps_per_block}")
            steps = [b - a for a, b in zip(ends, ends[1:])]
            samples[name] += steps
            medians[name] = summarize(steps)["median"]
            walls[name].append(wall / steps_per_block)
        ratios.append(medians[first] / medians[second])
    return {"samples": samples, "walls": walls, "block_ratios": ratios}


def run(*, model_name: str, r: int, batch: int, seq: int, reps: int, steps_per_block: int, device: str | None,
        log=print) -> dict[str, Any]:
    """Alternate strategy and bare blocks until each has `reps` step samples; ratios and target check."""
    model, dataset, pad, dev, blocks = prepare(model_name=model_name, r=r, batch=batch, seq=seq, reps=reps,
                                               steps_per_block=steps_per_block, device=device)
    log(f"[overhead] {model_name} LoRA r={r} on {dev}: batch {batch} x {seq}, {blocks} alternating blocks of "
        f"{steps_per_block} steps per loop")
    timed = alternate(blocks, steps_per_block, {
        "strategy": lambda: strategy_block(model, dataset, pad, batch, steps_per_block, dev),
        "bare": lambda: bare_block(model, dataset, pad, batch, steps_per_block, dev)})
    samples, walls = timed["samples"], timed["walls"]
    strategy, bare = summarize(samples["strategy"]), summarize(samples["bare"])
    ratio = summarize(timed["block_ratios"])["median"]
    amortised = summarize(walls["strategy"])["median"] / summarize(walls["bare"])["median"]
    return {"model": model_name, "device": str(dev), "adapter": f"lora r={r}", "batch": batch, "seq": seq,
            "bf16_autocast": bf16_used(dev), "steps_per_block": steps_per_block, "blocks": blocks,
            "strategy_step": strategy, "bare_step": bare, "ratio": ratio, "block_ratios": timed["block_ratios"],
            "unpaired_ratio": strategy["median"] / bare["median"],
            "strategy_amortised_step": summarize(walls["strategy"]), "bare_amortised_step": summarize(walls["bare"]),
            "amortised_ratio": amortised, "target": TARGET, "target_met": ratio <= TARGET}
