"""Part: what LwF costs per optimizer step. The same Avalanche experience (model, examples, batch, optimizer,
schedule) with and without LwF's distillation active; LwF adds one teacher forward (no backward) per
micro-batch, so the expected ratio is about 1 + forward / (forward + backward), roughly 1.3-1.5.
Blocks alternate (lwf, naive, lwf, ...) and the ratio is the median of paired block medians: overhead.py's
prepare, alternate and strategy_block, so both parts time the same model, examples and loop.
"""

from __future__ import annotations

from typing import Any

from .overhead import alternate, prepare, strategy_block
from .timing import summarize


def run(*, model_name: str, r: int, batch: int, seq: int, reps: int, steps_per_block: int, device: str | None,
        log=print) -> dict[str, Any]:
    from clsharelora.strategies import _adapter_copies as copies
    from clsharelora.strategies.lwf import TEACHER, LwFPlugin

    model, dataset, pad, dev, blocks = prepare(model_name=model_name, r=r, batch=batch, seq=seq, reps=reps,
                                               steps_per_block=steps_per_block, device=device)
    log(f"[lwf] {model_name} LoRA r={r} on {dev}: batch {batch} x {seq}, {blocks} alternating blocks of "
        f"{steps_per_block} steps, LwF vs naive")
    lwf = LwFPlugin(model, lwf_lambda=1.0, temperature=2.0)
    lwf._ensure_teacher()
    copies.copy_weights(model, copies.TRAINED, TEACHER)
    lwf.teacher_for = 0          # distil in this (single, index-0) experience, as from experience 2 on
    timed = alternate(blocks, steps_per_block, {
        "lwf": lambda: strategy_block(model, dataset, pad, batch, steps_per_block, dev, plugins=(lwf,)),
        "naive": lambda: strategy_block(model, dataset, pad, batch, steps_per_block, dev)})
    samples = timed["samples"]
    return {"model": model_name, "device": str(dev), "adapter": f"lora r={r}", "batch": batch, "seq": seq,
            "steps_per_block": steps_per_block, "blocks": blocks, "naive_step": summarize(samples["naive"]),
            "lwf_step": summarize(samples["lwf"]), "ratio": summarize(timed["block_ratios"])["median"],
            "block_ratios": timed["block_ratios"]}
