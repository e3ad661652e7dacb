"""Part: what LwF costs per optimizer step. The same Avalanche experience (model, examples, batch, optimizer,
schedule) with and without LwF's distillation active; LwF adds one teacher forward (no backward) per
micro-batch, so the expected ratio is about 1 + forward / (forward + backward), roughly 1.3-1.5.
Blocks alternate (naive, lwf, naive, ...) and the ratio is the median of paired block medians, as in
overhead.py, whose strategy_block both use.
"""

from __future__ import annotations

import math
from typing import Any

from .adapters import build, make_batches, pick_device
from .overhead import _dataset, strategy_block
from .timing import summarize


def run(*, model_name: str, r: int, batch: int, seq: int, reps: int, steps_per_block: int, device: str | None,
        log=print) -> dict[str, Any]:
    from clsharelora.evaluation.generation import pad_id
    from clsharelora.models import load_tokenizer
    from clsharelora.strategies import _adapter_copies as copies
    from clsharelora.strategies.lwf import TEACHER, LwFPlugin

    if steps_per_block < 2:
        raise ValueError("steps_per_block must be >= 2 (the first step of a block is not a sample)")
    dev = pick_device(device)
    blocks = math.ceil(reps / (steps_per_block - 1))
    log(f"[lwf] {model_name} LoRA r={r} on {dev}: batch {batch} x {seq}, {blocks} alternating blocks of "
        f"{steps_per_block} steps, naive vs LwF")
    model, _ = build(model_name, "lora", r, dev)
    dataset = _dataset(make_batches(model_name, batch=batch, seq=seq, n_batches=steps_per_block, device="cpu"))
    pad = pad_id(load_tokenizer(model_name))
    lwf = LwFPlugin(model, lwf_lambda=1.0, temperature=2.0)
    lwf._ensure_teacher()
    copies.copy_weights(model, copies.TRAINED, TEACHER)
    lwf.teacher_for = 0          # distil in this (single, index-0) experience, as from experience 2 on
    samples: dict[str, list[float]] = {"naive": [], "lwf": []}
    ratios = []
    for _ in range(blocks):
        medians = {}
        for name, plugins in (("naive", ()), ("lwf", (lwf,))):
            ends, _ = strategy_block(model, dataset, pad, batch, steps_per_block, dev, plugins=plugins)
            steps = [b - a for a, b in zip(ends, ends[1:])]
            samples[name] += steps
            medians[name] = summarize(steps)["median"]
        ratios.append(medians["lwf"] / medians["naive"])
    return {"model": model_name, "device": str(dev), "adapter": f"lora r={r}", "batch": batch, "seq": seq,
            "steps_per_block": steps_per_block, "blocks": blocks, "naive_step": summarize(samples["naive"]),
            "lwf_step": summarize(samples["lwf"]), "ratio": summarize(ratios)["median"], "block_ratios": ratios}
