"""Part 4: how step time and memory grow with sequence length and LoRA rank, for LoRA and ShareA.

One factor at a time around the part-1 point: sequence length at fixed rank, then rank at fixed length.
Every configuration runs in a fresh subprocess (`adapters.measure_config`), so its peak memory is its own.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from .adapters import bf16_used, measure_config, pick_device
from .timing import run_isolated


def grid(seqs: Sequence[int], ranks: Sequence[int], base_seq: int, base_rank: int) -> list[tuple[int, int]]:
    """(seq, r) points: every seq at base_rank, every rank at base_seq, each once, in a stable order."""
    points = [(s, base_rank) for s in seqs] + [(base_seq, r) for r in ranks]
    return list(dict.fromkeys(points))


def run(*, model_name: str, variants: Sequence[str], seqs: Sequence[int], ranks: Sequence[int], base_seq: int,
        base_rank: int, batch: int, warmup: int, reps: int, device: str | None, isolate: bool = True,
        log=print) -> dict[str, Any]:
    """Each (seq, r, variant) in a fresh process (`isolate=False`: in this one, for the CI smoke only)."""
    dev = pick_device(device)
    points = grid(seqs, ranks, base_seq, base_rank)
    log(f"[scaling] {model_name} on {dev}: batch {batch}, {len(points)} (seq, r) points x {len(variants)} "
        f"adapters, {warmup} warm-up + {reps} steps each, fresh process per point")
    rows = []
    for seq, r in points:
        for variant in variants:
            t0 = time.perf_counter()
            kwargs = dict(model_name=model_name, variant=variant, r=r, batch=batch, seq=seq, warmup=warmup,
                          reps=reps, device=str(dev))
            row = run_isolated("clsharelora.bench.adapters:measure_config", kwargs) if isolate else measure_config(**kwargs)
            row["tokens_per_s"] = batch * seq / row["step_time"]["median"]
            rows.append(row)
            log(f"[scaling] {variant:8s} seq {seq:4d} r {r:3d}: step {row['step_time']['median']:.3f} s, "
                f"peak {row['peak_memory_bytes'] / 2**20:.0f} MiB ({time.perf_counter() - t0:.0f} s)")
    return {"model": model_name, "device": str(dev), "batch": batch, "bf16_autocast": bf16_used(dev), "warmup": warmup,
            "reps": reps, "base_seq": base_seq, "base_rank": base_rank, "rows": rows,
            "peak_memory_note": ("fresh subprocess per point; " if isolate else "NOT isolated (smoke); ") + (
                "CUDA max_memory_allocated" if dev.type == "cuda" else
                "CPU resident-set growth over the loaded model during the steps (VmHWM after clear_refs)")}
