"""Part 6: the demo's training step alone and beside a one-core neighbour (a busy-loop process), as a ratio
to the lone step, printed with the thread choice that produced it.

Why: on the project's 2-core machine a demo step went from 2.4 s to 51-56 s while another process used one
core: every OpenMP parallel region waits at its barrier for the thread the neighbour descheduled. The ratio
shows what a neighbour costs at the thread count clsharelora chose (clsharelora.hardware), and, when that is
above 1, at 1 thread as well, so the cost of the wider pool under load is visible next to its gain alone.

The step is the demo's (configs/demo.yaml: model, adapter, batch, max length, precision) on packed GSM8K
text, all tokens targets. Lone and loaded blocks alternate so machine drift hits both; the ratio is the
median of per-block ratios (loaded block median / the lone block median before it).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from typing import Any, Iterator, Sequence

import torch

from .adapters import make_batches, pick_device, train_step
from .timing import PROJECT_ROOT, summarize, timed

#: one core's worth of load, nothing else: no imports, no memory, no I/O
BUSY_LOOP = "while True: pass"


def demo_config():
    """The demo's resolved RunConfig (configs/demo.yaml): what `make demo` trains."""
    from clsharelora import config as cfgmod

    return cfgmod.from_dict(cfgmod.load_yaml(PROJECT_ROOT / "configs" / "demo.yaml"))


@contextlib.contextmanager
def neighbour() -> Iterator[subprocess.Popen]:
    """A busy-loop Python process for the duration of the block; stopped (by its pid) on exit."""
    proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)   # let it reach the loop before the first timed step
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def build_demo_model(model_name: str, device: torch.device, seed: int = 0):
    """(model with the demo's adapter, AdamW over its unique trainable tensors), train mode."""
    from clsharelora import registry
    from clsharelora.models import load_model
    from clsharelora.training.template import trainable_parameters

    cfg = demo_config()
    opts = {k: v for k, v in cfg.adapter.items() if k != "name"}
    base = load_model(model_name, device="cpu", seed=seed)
    torch.manual_seed(seed)
    model = registry.create(cfg.adapter["name"], "adapter", **opts).apply(base).to(device)
    model.train()
    return model, torch.optim.AdamW(trainable_parameters(model), lr=cfg.train.lr)


def run(*, model_name: str, batch: int | None, seq: int | None, warmup: int, steps: int, blocks: int,
        device: str | None, thread_counts: Sequence[int] | None = None, log=print) -> dict[str, Any]:
    """Per thread count: lone and loaded step times in alternating blocks, and their ratio."""
    from clsharelora.hardware import thread_record

    cfg = demo_config()
    batch = batch or cfg.train.batch_size
    seq = seq or cfg.train.max_length
    dev = pick_device(device)
    choice = thread_record()
    chosen = torch.get_num_threads()
    counts = list(dict.fromkeys(thread_counts or [chosen, 1]))
    bf16 = bool(cfg.train.bf16)
    adapter = " ".join([cfg.adapter["name"], *([cfg.adapter["variant"]] if cfg.adapter.get("variant") else []),
                        *([f"r={cfg.adapter['r']}"] if cfg.adapter.get("r") else [])])
    log(f"[neighbour] {model_name} {adapter} on {dev}: batch {batch} x {seq}, threads {counts}, "
        f"{blocks} lone/loaded block pairs of {steps} steps after {warmup} warm-up")
    model, optimizer = build_demo_model(model_name, dev)
    batches = make_batches(model_name, batch=batch, seq=seq, device=dev)
    counter = [0]

    def step() -> float:
        counter[0] += 1
        return timed(lambda: train_step(model, optimizer, batches[counter[0] % len(batches)], bf16=bf16), dev)[0]

    rows = []
    try:
        for threads in counts:
            torch.set_num_threads(threads)
            for _ in range(warmup):
                step()
            lone, loaded, ratios = [], [], []
            for _ in range(blocks):
                alone = [step() for _ in range(steps)]
                with neighbour():
                    beside = [step() for _ in range(steps)]
                lone += alone
                loaded += beside
                ratios.append(summarize(beside)["median"] / summarize(alone)["median"])
            row = {"threads": threads, "chosen": threads == chosen, "lone_step": summarize(lone),
                   "loaded_step": summarize(loaded), "block_ratios": ratios, "ratio": summarize(ratios)["median"]}
            rows.append(row)
            log(f"[neighbour] {threads} thread(s): lone {row['lone_step']['median']:.3f} s, beside a busy core "
                f"{row['loaded_step']['median']:.3f} s, ratio {row['ratio']:.2f}x")
    finally:
        torch.set_num_threads(chosen)
    return {"model": model_name, "device": str(dev), "adapter": adapter, "batch": batch, "seq": seq,
            "bf16_autocast": bf16, "warmup": warmup, "steps_per_block": steps, "blocks": blocks,
            "neighbour": f"one busy-loop process ({BUSY_LOOP!r})", "thread_choice": choice, "rows": rows}
