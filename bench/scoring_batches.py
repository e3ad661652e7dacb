"""Part: teacher-forced scoring with full batches against padding-aware batches (issue #15, the demo's time).

Scoring pads every row of a batch to its longest row. With full length-sorted batches of 8, the demo's
MMLU-Pro pads eight items to one 577-token item; `length_sorted_batches(..., forward_cost=...)` cuts the
batches where the padding costs more than another forward. This part measures (1) what one more forward
costs, in tokens, on this device: 8 single rows against one batch of 8 equal rows, the figure behind
`forward_cost_tokens`; (2) the teacher-forced passes of the demo stream (streams/demo.yaml: its items,
prompts and eval batch size; GSM8K/HumanEval reference NLLs, MMLU/MMLU-Pro letter log-probs) and of MMLU at
the paper stream's 5 shots (two subjects, so queries follow a cached context as in the full test set), with full batches and with the device's forward cost, in alternating rounds,
as a ratio, and checks that both give the same per-item values. Generation keeps full batches (every extra
batch repeats the decode loop) and is not part of this measure.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from .adapters import pick_device
from .timing import PROJECT_ROOT, interleaved, paired_ratio, summarize


def forward_overhead_tokens(model, device: torch.device, *, seq: int, reps: int) -> dict[str, Any]:
    """Seconds of one batch of 8 rows x `seq` tokens and of the same 8 rows one at a time (alternating
    rounds), and the extra cost of one forward in tokens: (singles - batch) / 7 forwards / seconds per token."""
    ids = torch.randint(10, 1000, (8, seq), generator=torch.Generator().manual_seed(0)).to(device)

    def batch():
        model(input_ids=ids, logits_to_keep=1)

    def singles():
        for row in ids:
            model(input_ids=row[None], logits_to_keep=1)

    with torch.inference_mode():
        times = interleaved({"batch": batch, "singles": singles}, warmup=1, reps=reps, device=device)
    per_token = min(times["batch"]) / (8 * seq)
    extra = [(s - b) / 7 / per_token for s, b in zip(times["singles"], times["batch"])]
    return {"seq": seq, "batch_of_8": summarize(times["batch"]), "eight_singles": summarize(times["singles"]),
            "overhead_tokens": summarize(extra)}


#: two subjects, as bench part evalshard: the paper stream scores ~250 items per subject after one context
PAPER_MMLU_SUBJECTS = ("high_school_psychology", "elementary_mathematics")


def demo_passes(model_name: str, paper_mmlu_n: int, batch_size: int):
    """[(label, items, score(model, forward_cost) -> per-item values)]: the demo stream's tasks plus MMLU
    5-shot, each with the pass the evaluator runs (letters for multiple choice, reference NLLs otherwise)."""
    from clsharelora.benchmarks.stream import load_stream
    from clsharelora.data import load_benchmark
    from clsharelora.evaluation.base import make_evaluator
    from clsharelora.evaluation.nll import letter_logprobs, target_nlls
    from clsharelora.models import load_tokenizer
    from clsharelora.paths import data_root

    tok = load_tokenizer(model_name)
    stream = load_stream(PROJECT_ROOT / "streams" / "demo.yaml")
    specs = [(f"{e.task} (demo)", e.task, {**e.eval_options, "batch_size": batch_size}) for e in stream.experiences]
    # the paper stream's MMLU: 5-shot with many items per subject, so the queries follow a cached context
    records = load_benchmark("mmlu", "test", n=paper_mmlu_n, subjects=list(PAPER_MMLU_SUBJECTS))
    specs.append(("mmlu 5-shot", "mmlu", {"shots": 5, "batch_size": batch_size, "records": records}))
    passes = []
    for label, task, options in specs:
        ev = make_evaluator(task, data_root=data_root(None), seed=0, **options)
        if hasattr(ev, "letters"):
            def score(model, cost, ev=ev):
                return letter_logprobs(model, tok, ev.prompts, ev.letters, batch_size=batch_size,
                                       contexts=ev.contexts, forward_cost=cost).numpy()
        else:
            def score(model, cost, ev=ev):
                return np.array(target_nlls(model, tok, ev.nll_pairs, batch_size=batch_size, forward_cost=cost))
        passes.append((label, len(ev.records), score))
    return passes


def run(*, model_name: str, reps: int, paper_mmlu_n: int, overhead_seq: int, device: str = "auto",
        log: Callable[[str], None] = print) -> dict[str, Any]:
    from clsharelora.evaluation.generation import forward_cost_tokens
    from clsharelora.models import load_model

    from .neighbour import demo_config

    dev = pick_device(device)
    model = load_model(model_name, device=str(dev)).eval()
    cost = forward_cost_tokens(dev)
    batch_size = demo_config().eval.batch_size
    log(f"batching: one forward's cost in tokens ({model_name}, 8 x {overhead_seq})")
    overhead = forward_overhead_tokens(model, dev, seq=overhead_seq, reps=reps)
    rows, full_total, cut_total = [], [0.0] * reps, [0.0] * reps
    for label, n, score in demo_passes(model_name, paper_mmlu_n, batch_size):
        log(f"batching: {label}, {n} items, full vs cut batches, {reps} rounds")
        outputs: dict[str, Any] = {}

        def call(name, c, score=score):
            def go():
                with torch.inference_mode():
                    outputs[name] = score(model, c)
            return go

        times = interleaved({"full": call("full", None), "cut": call("cut", cost)}, warmup=0, reps=reps,
                            device=dev)
        same = bool(np.allclose(outputs["full"], outputs["cut"], rtol=1e-5, atol=1e-6))
        rows.append({"task": label, "items": n, "full": summarize(times["full"]), "cut": summarize(times["cut"]),
                     "ratio": paired_ratio(times["full"], times["cut"])["median"], "same_values": same})
        full_total = [a + b for a, b in zip(full_total, times["full"])]
        cut_total = [a + b for a, b in zip(cut_total, times["cut"])]
    return {"model": model_name, "device": str(dev), "threads": torch.get_num_threads(), "reps": reps,
            "batch_size": batch_size, "forward_cost": cost, "overhead": overhead, "rows": rows,
            "total_full": summarize(full_total), "total_cut": summarize(cut_total),
            "total_ratio": paired_ratio(full_total, cut_total)["median"],
            "same_values": all(r["same_values"] for r in rows)}
