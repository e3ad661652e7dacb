"""Part 1: LoRA vs ShareA / ShareB / ShareAB on the same batches: trainable parameters, optimizer-state
bytes, peak memory and step time, with ratios to LoRA, and each step's MFU (mfu.py).

The step is the bare loop every adapter sees (forward under bf16 autocast, fp32 on a CPU without native bf16, token-mean loss, backward,
clip to norm 1, AdamW step): what differs between variants is only the adapter. Step times are taken in
interleaved rounds in one process (drift cancels, see timing.py); peak memory comes from a fresh
subprocess per variant (`measure_config`), which also serves the scaling sweep.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from .mfu import matmul_peak, peak_line, step_mfu
from .timing import PeakMemory, interleaved, paired_ratio, run_isolated, summarize, timed

VARIANTS = ("lora", "share_a", "share_b", "share_ab")
#: descriptive rows beside the variants (no target): LoRA and ShareA with dropout_masks=per_input (issue #28)
PER_INPUT = "+per_input"
ROWS = (*VARIANTS, "lora" + PER_INPUT, "share_a" + PER_INPUT)
STEP_TARGET = 1.02          # ShareLoRA step time must stay within 2 % of LoRA's (issue #8)
STATE_TOLERANCE = 0.01      # optimizer-state bytes per trainable parameter equal across variants within 1 %


def pick_device(device: str | None = None) -> torch.device:
    """cuda when present (or asked for), else cpu."""
    if device and device != "auto":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def adapter_strategy(variant: str, r: int):
    """The registry adapter of a variant name (a ROWS entry), with the project's default alpha/dropout/targets;
    a '+per_input' suffix sets dropout_masks=per_input."""
    from clsharelora import registry

    variant, per_input, _ = variant.partition(PER_INPUT)
    extra = {"dropout_masks": "per_input"} if per_input else {}
    if variant == "lora":
        return registry.create("lora", "adapter", r=r, **extra)
    return registry.create("sharelora", "adapter", variant=variant, r=r, **extra)


def build(model_name: str, variant: str, r: int, device: torch.device | str, seed: int = 0):
    """(peft model in train mode on `device`, AdamW over its unique trainable tensors)."""
    from clsharelora.models import load_model
    from clsharelora.training.template import trainable_parameters

    base = load_model(model_name, device="cpu", seed=seed)
    torch.manual_seed(seed)
    model = adapter_strategy(variant, r).apply(base).to(device)
    model.train()
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-4)
    return model, optimizer


def make_batches(model_name: str, *, batch: int, seq: int, n_batches: int = 2, seed: int = 0,
                 device: torch.device | str = "cpu") -> list[dict[str, torch.Tensor]]:
    """`n_batches` batches of `batch` rows x exactly `seq` tokens of real text: GSM8K train examples
    (prompt + chain of thought), tokenised and packed end to end, every token a target."""
    from clsharelora.data import load_benchmark
    from clsharelora.models import load_tokenizer
    from clsharelora.prompts import prompt_for, target_for

    tokenizer = load_tokenizer(model_name)
    need = batch * seq * n_batches
    stream: list[int] = []
    records = load_benchmark("gsm8k", "train", n=max(8, need // 100), seed=seed)
    for record in records:
        stream += tokenizer(prompt_for(record) + target_for(record), add_special_tokens=True)["input_ids"]
        stream.append(tokenizer.eos_token_id)
        if len(stream) >= need:
            break
    if len(stream) < need:
        raise ValueError(f"not enough GSM8K text for {n_batches} batches of {batch}x{seq} tokens")
    ids = torch.tensor(stream[:need], dtype=torch.long).view(n_batches, batch, seq)
    return [{"input_ids": b.to(device), "attention_mask": torch.ones_like(b).to(device), "labels": b.to(device)}
            for b in ids]


#: the name the bench's bf16 request goes by in the fallback warning (clsharelora.hardware.bf16_for)
BF16_SETTING = "bench bf16 autocast"


def bf16_used(device: torch.device | str, requested: bool = True) -> bool:
    """bf16 autocast as requested, except fp32 on a CPU without native bf16 (one warning line)."""
    from clsharelora.hardware import bf16_for

    return bf16_for(device, requested, BF16_SETTING)


def autocast(device: torch.device | str, enabled: bool = True):
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                          enabled=bf16_used(device, enabled))


def train_step(model, optimizer, batch: dict[str, torch.Tensor], *, bf16: bool = True,
               max_grad_norm: float | None = 1.0) -> float:
    """One optimizer step of a plain transformers + peft loop; returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(batch["input_ids"].device, bf16):
        loss = model(**batch).loss
    loss.backward()
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_grad_norm)
    optimizer.step()
    return float(loss.detach())


def measure_config(model_name: str, variant: str, r: int, batch: int, seq: int, warmup: int, reps: int,
                   device: str | None = None, bf16: bool = True) -> dict[str, Any]:
    """One configuration in this (fresh) process: peak memory over warm-up + timed steps, step times,
    trainable parameters and optimizer-state bytes. Called through `run_isolated`."""
    from clsharelora.adapters.counting import count_trainable, optimizer_state_bytes

    dev = pick_device(device)
    model, optimizer = build(model_name, variant, r, dev)
    batches = make_batches(model_name, batch=batch, seq=seq, device=dev)
    times = []
    with PeakMemory(dev) as mem:
        for i in range(warmup + reps):
            seconds, _ = timed(lambda: train_step(model, optimizer, batches[i % len(batches)], bf16=bf16), dev)
            if i >= warmup:
                times.append(seconds)
    return {"variant": variant, "r": r, "batch": batch, "seq": seq, "device": str(dev),
            "trainable_params": count_trainable(model), "optimizer_state_bytes": optimizer_state_bytes(optimizer),
            "peak_memory_bytes": mem.peak_bytes, "peak_memory_kind": mem.kind, "step_time": summarize(times)}


def profile_steps(model_name: str, variants: Sequence[str], r: int, batch: int, seq: int,
                  device: torch.device | str, top: int = 12) -> dict[str, Any]:
    """torch.profiler of one (warm) step per variant: the top ops by self time, and, for every variant after
    the first (LoRA), the ops by input shape whose call count or self time differ most from the first's, so a
    missed target names the ops (and the shapes: which projection, A or B) that the variant adds or slows."""
    from torch.profiler import ProfilerActivity, profile

    dev = torch.device(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    batches = make_batches(model_name, batch=batch, seq=seq, device=dev, n_batches=1)
    sort = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    out, by_shape = {}, {}
    for variant in variants:
        model, optimizer = build(model_name, variant, r, dev)
        train_step(model, optimizer, batches[0])
        with profile(activities=activities, record_shapes=True) as prof:
            train_step(model, optimizer, batches[0])
        averages = prof.key_averages()
        events = sorted(averages, key=lambda e: getattr(e, sort, 0), reverse=True)
        total = sum(e.self_cpu_time_total for e in averages)
        by_shape[variant] = {(e.key, str(e.input_shapes)): (e.count, getattr(e, sort, 0) / 1000)
                             for e in prof.key_averages(group_by_input_shape=True)}
        out[variant] = {
            "self_cpu_total_ms": total / 1000,
            "top_ops": [{"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1000}
                        for e in events[:top]],
        }
        del model, optimizer
    ref = by_shape[variants[0]]
    for variant in variants[1:]:
        mine = by_shape[variant]
        diffs = []
        for key in set(ref) | set(mine):
            (n0, t0), (n1, t1) = ref.get(key, (0, 0.0)), mine.get(key, (0, 0.0))
            if n0 != n1 or t0 != t1:
                diffs.append({"op": key[0], "input_shapes": key[1], f"calls_{variants[0]}": n0, "calls": n1,
                              f"self_ms_{variants[0]}": t0, "self_ms": t1, "delta_ms": t1 - t0})
        out[variant]["diff_vs_" + variants[0]] = sorted(diffs, key=lambda d: -abs(d["delta_ms"]))[:2 * top]
    return out


def run(*, model_name: str, r: int, batch: int, seq: int, warmup: int, reps: int, device: str | None,
        profile_on_miss: bool = True, isolate: bool = True, peak_n: int | None = None, log=print) -> dict[str, Any]:
    """The part-1 table: interleaved step times in this process, memory per variant in fresh processes
    (`isolate=False`, for the CI smoke only: in this process, after the others, so not a clean figure).
    `peak_n`: size of the MFU matmul microbench (None: mfu.PEAK_N of the device type)."""
    from clsharelora.adapters.counting import count_trainable, optimizer_state_bytes

    dev = pick_device(device)
    log(f"[adapters] {model_name} on {dev}: batch {batch} x {seq} tokens, r={r}, "
        f"{'bf16 autocast' if bf16_used(dev) else 'fp32'}, "
        f"{warmup} warm-up + {reps} interleaved rounds")
    batches = make_batches(model_name, batch=batch, seq=seq, device=dev)
    built = {v: build(model_name, v, r, dev) for v in ROWS}
    counters = {v: 0 for v in ROWS}

    def stepper(variant):
        model, optimizer = built[variant]

        def step():
            counters[variant] += 1
            return train_step(model, optimizer, batches[counters[variant] % len(batches)])
        return step

    t0 = time.perf_counter()
    times = interleaved({v: stepper(v) for v in ROWS}, warmup=warmup, reps=reps, device=dev)
    log(f"[adapters] timing done in {time.perf_counter() - t0:.0f} s")
    peak = matmul_peak(dev, torch.bfloat16 if bf16_used(dev) else torch.float32, peak_n)
    log(f"[adapters] {peak_line(peak)}")
    rows = {}
    for v in ROWS:
        model, optimizer = built[v]
        rows[v] = {"trainable_params": count_trainable(model),
                   "mfu": step_mfu(summarize(times[v])["median"], sum(p.numel() for p in model.parameters()),
                                   batch * seq, peak),
                   "expected_params": adapter_strategy(v, r).expected_params(model.base_model.model.config),
                   "optimizer_state_bytes": optimizer_state_bytes(optimizer),
                   "step_time": summarize(times[v])}
    del built
    for v in ROWS:  # fresh process per variant: 1 warm-up + 1 step is enough for the peak (Adam state exists)
        t0 = time.perf_counter()
        kwargs = dict(model_name=model_name, variant=v, r=r, batch=batch, seq=seq, warmup=1 if isolate else 0,
                      reps=1, device=str(dev))
        mem = run_isolated("clsharelora.bench.adapters:measure_config", kwargs) if isolate else measure_config(**kwargs)
        rows[v]["peak_memory_bytes"] = mem["peak_memory_bytes"]
        rows[v]["peak_memory_kind"] = mem["peak_memory_kind"]
        log(f"[adapters] peak memory {v}: {mem['peak_memory_bytes'] / 2**20:.0f} MiB "
            f"({time.perf_counter() - t0:.0f} s)")
    lora = rows["lora"]
    state_per_param_lora = lora["optimizer_state_bytes"] / lora["trainable_params"]
    for v in ROWS:
        row = rows[v]
        row["params_ratio"] = row["trainable_params"] / lora["trainable_params"]
        row["state_ratio"] = row["optimizer_state_bytes"] / lora["optimizer_state_bytes"]
        row["state_bytes_per_param"] = row["optimizer_state_bytes"] / row["trainable_params"]
        row["peak_memory_ratio"] = row["peak_memory_bytes"] / max(1, lora["peak_memory_bytes"])
        row["step_ratio_of_medians"] = row["step_time"]["median"] / lora["step_time"]["median"]
        row["step_ratio_paired"] = paired_ratio(times[v], times["lora"])
        row["closed_form_ok"] = row["trainable_params"] == row["expected_params"]
        if v in VARIANTS and v != "lora":
            row["step_target_met"] = row["step_ratio_paired"]["median"] <= STEP_TARGET
            row["state_proportional"] = abs(row["state_bytes_per_param"] / state_per_param_lora - 1) <= STATE_TOLERANCE
    result = {"model": model_name, "device": str(dev), "r": r, "batch": batch, "seq": seq,
              "bf16_autocast": bf16_used(dev),
              "warmup": warmup, "reps": reps, "variants": rows, "mfu_peak": peak,
              "targets": {"step_ratio_max": STEP_TARGET, "state_bytes_per_param_tolerance": STATE_TOLERANCE},
              "peak_memory_note": ("fresh subprocess per variant; " if isolate else "NOT isolated (smoke); ") + (
                  "CUDA max_memory_allocated" if dev.type == "cuda" else
                  "CPU resident-set growth over the loaded model during 1 warm-up + 1 step (VmHWM after clear_refs)")}
    missed = [v for v in VARIANTS if v != "lora" and not rows[v]["step_target_met"]]
    if missed and profile_on_miss:
        log(f"[adapters] step-time target missed by {', '.join(missed)}: profiling one step each")
        result["profile"] = profile_steps(model_name, ["lora", *missed], r, batch, seq, dev)
    return result
