"""`make bench` / `clsharelora bench`: every measurement of issue #8 in one run, tables printed, JSON written.

Parts (--only): adapters (LoRA vs ShareA/B/AB cost), overhead (our Avalanche strategy vs a bare loop), eval
(items/s vs lm-evaluation-harness), scaling (seq length and rank), meta (Llama-2-7B/13B, Llama-3-8B tables),
neighbour (the demo's step beside a one-core busy loop, as a ratio to the lone step), lwf
(LwF's step time vs naive, issue #13), gradsync (gradient synchronisation: DDP vs the old per-tensor loop,
2 gloo processes, issue #15), evalshard (MMLU scoring sharded by items over 2 gloo processes vs 1 process on
the same CPUs, issue #15), batching (teacher-forced scoring of the demo stream with full batches vs
padding-aware batches, and one forward's cost in tokens, issue #15), errors (seconds until a config, stream
or option error is reported, and `clsharelora list -v`, each in a fresh process; target < 2 s, issue #25).
Every table and JSON carries the CPU model, torch's CPU capability, native bf16 and the thread choice, so
figures from different machines are never read as one machine's.
`--quick` is the CI smoke: tiny-llama, tiny shapes, one repetition, seconds; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from clsharelora import atomic
from clsharelora.errors import UserError

from .mfu import mfu_lines
from .timing import PROJECT_ROOT, fmt_stats

PARTS = ("adapters", "overhead", "eval", "scaling", "meta", "neighbour", "lwf", "gradsync", "evalshard",
         "batching", "errors")
MiB = 2 ** 20
GiB = 2 ** 30

# name -> settings; --quick swaps in the second column
FULL = dict(model="smollm2-135m", reps=5, warmup=1, r=8, batch=4, seq=256,
            overhead_batch=4, overhead_seq=128, overhead_steps_per_block=6, overhead_reps=15,
            mmlu_n=16, mmlu_shots=5, gsm8k_n=4, gsm8k_shots=8, gsm8k_new_tokens=256, humaneval_n=4,
            humaneval_new_tokens=512, eval_batch=8, eval_reps=2,
            scaling_batch=1, scaling_seqs=(128, 256, 512), scaling_ranks=(8, 16, 64), scaling_warmup=1,
            scaling_reps=2, meta_models=("llama2-7b", "llama2-13b", "llama3-8b"), meta_ranks=(8, 64), isolate=True,
            neighbour_batch=None, neighbour_seq=None, neighbour_warmup=1, neighbour_steps=2, neighbour_blocks=2,
            gradsync_batch=2, gradsync_seq=128, gradsync_steps=4, gradsync_blocks=5,
            evalshard_n=48, evalshard_shots=5, evalshard_reps=2,
            batching_reps=3, batching_mmlu_n=32, batching_seq=64, mfu_peak_n=None)
QUICK = dict(FULL, model="tiny-llama", reps=1, warmup=0, batch=2, seq=16, overhead_batch=2, overhead_seq=16,
             overhead_reps=1,
             overhead_steps_per_block=2, mmlu_n=2, mmlu_shots=0, gsm8k_n=2, gsm8k_shots=0, gsm8k_new_tokens=4,
             humaneval_n=2, humaneval_new_tokens=4,
             eval_batch=2, eval_reps=1, scaling_seqs=(16,), scaling_ranks=(4,), scaling_warmup=0,
             scaling_reps=1, meta_models=("llama2-7b",), meta_ranks=(8,), isolate=False,
             neighbour_batch=2, neighbour_seq=16, neighbour_warmup=0, neighbour_steps=1, neighbour_blocks=1,
             gradsync_batch=1, gradsync_seq=16, gradsync_steps=1, gradsync_blocks=1,
             evalshard_n=4, evalshard_shots=0, evalshard_reps=1,
             batching_reps=1, batching_mmlu_n=4, batching_seq=8, mfu_peak_n=128)


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"{option}: expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise UserError(f"{option}: expected positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clsharelora bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CI smoke: tiny-llama, tiny shapes, 1 repetition")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma list of parts: {','.join(PARTS)}")
    p.add_argument("--reps", type=int, help="timed repetitions (step times; default 5, quick 1)")
    p.add_argument("--out", default=str(PROJECT_ROOT / "bench" / "results"), help="JSON output directory")
    p.add_argument("--model", help="model for the measured parts (default smollm2-135m, quick tiny-llama)")
    p.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda | cuda:N")
    p.add_argument("--eval-reps", type=int, help="repetitions of each evaluation (default 3)")
    p.add_argument("--scaling-batch", type=int, help="batch of the scaling sweep (default 1)")
    p.add_argument("--scaling-seqs", help="sequence lengths of the sweep (default 128,256,512)")
    p.add_argument("--scaling-ranks", help="ranks of the sweep (default 8,16,64)")
    p.add_argument("--mmlu-n", type=int, help="MMLU items (default 32)")
    p.add_argument("--gsm8k-n", type=int, help="GSM8K items (default 4; 8-shot, 256 new tokens as the paper stream)")
    p.add_argument("--humaneval-n", type=int, help="HumanEval items (default 4; 0-shot, 512 new tokens as the paper "
                                                   "stream)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads here and in every subprocess (default: torch's). On a shared machine "
                        "1 avoids OpenMP spin-waiting against other jobs, which inflated 2-thread steps 10-20x")
    p.add_argument("--no-profile", action="store_true", help="do not profile when a speed target is missed")
    return p


def settings(args) -> dict[str, Any]:
    s = dict(QUICK if args.quick else FULL)
    for key, value in (("reps", args.reps), ("model", args.model), ("eval_reps", args.eval_reps),
                       ("scaling_batch", args.scaling_batch), ("mmlu_n", args.mmlu_n), ("gsm8k_n", args.gsm8k_n),
                       ("humaneval_n", args.humaneval_n)):
        if value is not None:
            if key != "model" and value < 1:
                raise UserError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
            s[key] = value
    if args.scaling_seqs:
        s["scaling_seqs"] = _ints(args.scaling_seqs, "--scaling-seqs")
    if args.scaling_ranks:
        s["scaling_ranks"] = _ints(args.scaling_ranks, "--scaling-ranks")
    return s


def machine() -> dict[str, Any]:
    """What the numbers ran on: CPU model, torch's CPU capability, native bf16, cores, the thread choice,
    accelerator, library versions, load."""
    import importlib.metadata as md

    import torch

    from clsharelora.hardware import cpu_record

    cpu = cpu_record()
    info = {"cpu": cpu["cpu"], "cpu_capability": cpu["capability"], "bf16_native": cpu["bf16_native"],
            "bf16_reason": cpu["bf16_reason"], "threads": cpu["threads"],
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    for dist in ("transformers", "peft", "avalanche-lib", "lm_eval"):
        try:
            info[dist] = md.version(dist)
        except md.PackageNotFoundError:
            info[dist] = None
    return info


# ------------------------------------------------------------------------------------- tables
def _precision(res: dict) -> str:
    return "bf16 autocast" if res.get("bf16_autocast") else "fp32"


def table_adapters(res: dict) -> list[str]:
    lines = [f"ShareLoRA vs LoRA: {res['model']} on {res['device']}, batch {res['batch']} x {res['seq']} tokens, "
             f"r={res['r']}, {_precision(res)}; step = median [IQR] of {res['reps']} interleaved rounds",
             f"{'variant':17s} {'trainable':>11s} {'xLoRA':>6s} {'Adam state':>11s} {'xLoRA':>6s} "
             f"{'B/param':>7s} {'peak mem':>9s} {'xLoRA':>6s} {'step time':>24s} {'xLoRA paired [IQR]':>21s}  target"]
    for v, x in res["variants"].items():
        pr = x["step_ratio_paired"]
        spread = (pr["q1"], pr["q3"]) if pr["n"] >= 4 else (pr["min"], pr["max"])
        target = "" if "step_target_met" not in x else (
            f"{'met' if x['step_target_met'] else 'MISSED'} (<= {res['targets']['step_ratio_max']}x)")
        lines.append(
            f"{v:17s} {x['trainable_params']:11,d} {x['params_ratio']:6.3f} {x['optimizer_state_bytes'] / MiB:8.2f} MiB"
            f" {x['state_ratio']:6.3f} {x['state_bytes_per_param']:7.2f} {x['peak_memory_bytes'] / MiB:5.0f} MiB"
            f" {x['peak_memory_ratio']:6.3f} {fmt_stats(x['step_time']):>24s} "
            f"{pr['median']:6.3f} [{spread[0]:.3f}-{spread[1]:.3f}]  {target}")
    lines.append(f"peak memory: {res['peak_memory_note']}")
    for v, prof in res.get("profile", {}).items():  # a missed target: the ops the variant adds or slows
        diffs = prof.get("diff_vs_lora", [])[:6]
        if diffs:
            lines.append(f"profile {v} vs lora, ops by input shape, largest self-time differences (calls lora -> {v}):")
        lines += [f"  {d['op'][:40]:40s} {d['input_shapes'][:44]:44s} {d['calls_lora']:5d} -> {d['calls']:5d} "
                  f"{d['delta_ms']:+9.2f} ms" for d in diffs]
    return lines + mfu_lines(res)


def table_overhead(res: dict) -> list[str]:
    return [f"Framework overhead: {res['model']} {res['adapter']} on {res['device']}, batch {res['batch']} x "
            f"{res['seq']}, {_precision(res)}, {res['blocks']} alternating blocks of {res['steps_per_block']} steps",
            f"  CausalLMTemplate step: {fmt_stats(res['strategy_step'])}",
            f"  bare transformers+peft: {fmt_stats(res['bare_step'])}",
            f"  ratio {res['ratio']:.3f}x, median of per-block paired ratios "
            f"(target <= {res['target']}x: {'met' if res['target_met'] else 'MISSED'});"
            f" amortised incl. per-experience setup {res['amortised_ratio']:.3f}x"]


def table_eval(res: dict) -> list[str]:
    lines = [f"Evaluation throughput: {res['model']} on {res['device']}, batch {res['batch_size']}, "
             f"median [IQR/range] of {res['reps']} runs; lm-eval: {res['lm_eval'].get('status')}"
             + (f" ({res['lm_eval']['version']}, HF backend)" if res["lm_eval"].get("version") else
                f" ({res['lm_eval'].get('reason')})")]
    for kind in ("mmlu", "gsm8k", "humaneval"):
        if kind not in res:
            continue
        b = res[kind]
        head = f"  {kind:9s} {b['settings']}: ours {b['ours_items_per_s']:.3f} items/s " \
               f"({fmt_stats(b['ours_seconds'])})"
        if "lm_eval_items_per_s" in b:
            head += (f", lm-eval {b['lm_eval_items_per_s']:.3f} items/s ({fmt_stats(b['lm_eval_seconds'])}); "
                     f"speedup {b['speedup']:.2f}x (target >= {res['target_speedup']}x: "
                     f"{'met' if b['target_met'] else 'MISSED'})")
        lines.append(head)
        if kind == "mmlu":
            acc = f"    accuracy ours {b['ours_accuracy']:.4f}"
            if "lm_eval_accuracy" in b:
                acc += (f", lm-eval {b['lm_eval_accuracy']:.4f} ({'identical' if b['identical_accuracy'] else 'DIFFER'}"
                        f"; same prediction on {b['same_predictions']}/{b['n']} items)")
        elif kind == "gsm8k":
            acc = f"    strict accuracy ours {b['ours_strict_accuracy']:.4f}"
            if "lm_eval_strict_accuracy" in b:
                acc += f", lm-eval {b['lm_eval_strict_accuracy']:.4f}; identical completions {b['same_completions']}/{b['n']}"
        else:
            acc = f"    (pass@1 not run: completions compared as text)"
            if "same_completions" in b:
                acc += f"; identical completions {b['same_completions']}/{b['n']}"
        if b.get("new_tokens_ours"):
            t = b["new_tokens_ours"]
            acc += f"; our completions {t['mean']:.0f} tokens on average (min {t['min']}, max {t['max']})"
        lines.append(acc)
    return lines


def table_scaling(res: dict) -> list[str]:
    lines = [f"Scaling: {res['model']} on {res['device']}, batch {res['batch']}, {_precision(res)}, "
             f"median [range] of {res['reps']} steps after {res['warmup']} warm-up, fresh process per row",
             f"{'variant':9s} {'seq':>5s} {'r':>4s} {'trainable':>11s} {'step time':>24s} {'tokens/s':>9s} "
             f"{'peak mem':>9s} {'Adam state':>11s}"]
    for x in res["rows"]:
        lines.append(f"{x['variant']:9s} {x['seq']:5d} {x['r']:4d} {x['trainable_params']:11,d} "
                     f"{fmt_stats(x['step_time']):>24s} {x['tokens_per_s']:9.1f} {x['peak_memory_bytes'] / MiB:5.0f} MiB"
                     f" {x['optimizer_state_bytes'] / MiB:7.2f} MiB")
    lines.append(f"peak memory: {res['peak_memory_note']}")
    return lines


def table_meta(res: dict) -> list[str]:
    rows = res["rows"]
    batch, seq = rows[0]["batch"], rows[0]["seq"]
    lines = ["Large models (meta device, counts measured on the module tree; memory per process, "
             f"activations at batch {batch} x {seq})",
             f"{'model':11s} {'variant':9s} {'r':>3s} {'trainable':>12s} {'%base':>6s} {'xLoRA':>6s} "
             f"{'Adam state':>11s} {'adapter+grad+Adam':>17s} {'total':>10s} {'xLoRA':>6s} closed form"]
    for x in rows:
        lines.append(f"{x['model']:11s} {x['variant']:9s} {x['r']:3d} {x['trainable_params']:12,d} "
                     f"{x['trainable_percent']:6.3f} {x['params_ratio']:6.3f} "
                     f"{x['optimizer_state_bytes'] / MiB:7.1f} MiB {x['adapter_train_state_bytes'] / MiB:13.1f} MiB "
                     f"{x['total_bytes'] / GiB:6.2f} GiB {x['total_ratio']:6.3f} {'OK' if x['closed_form_ok'] else 'MISMATCH'}")
    return lines


def table_neighbour(res: dict) -> list[str]:
    choice = res["thread_choice"]
    lines = [f"Neighbour load: the demo's step ({res['model']} {res['adapter']} on {res['device']}, batch "
             f"{res['batch']} x {res['seq']}, {_precision(res)}) alone and beside {res['neighbour']}; "
             f"{res['blocks']} alternating block pairs of {res['steps_per_block']} steps",
             f"  thread choice: {choice['threads']} ({choice['source']}: {choice['reason']})"]
    for x in res["rows"]:
        lines.append(f"  {x['threads']:2d} thread(s){' (chosen)' if x['chosen'] else '         '}: lone "
                     f"{fmt_stats(x['lone_step'])}, beside the neighbour {fmt_stats(x['loaded_step'])}; "
                     f"ratio {x['ratio']:.2f}x")
    return lines


def table_lwf(res: dict) -> list[str]:
    return [f"LwF cost: {res['model']} {res['adapter']} on {res['device']}, batch {res['batch']} x {res['seq']}, "
            f"{res['blocks']} paired blocks",
            f"  naive step {fmt_stats(res['naive_step'])}",
            f"  LwF step   {fmt_stats(res['lwf_step'])}",
            f"  LwF / naive (paired median): {res['ratio']:.3f}  (one extra forward, no backward, per micro-batch)"]


def table_gradsync(res: dict) -> list[str]:
    return [f"Gradient sync: {res['model']} {res['variant']} r={res['r']} ({res['trainable_tensors']} trainable "
            f"tensors, {res['trainable_numel']:,d} values), {res['processes']} {res['backend']} processes on "
            f"{res['device']}, {res['threads']} thread(s) each, batch {res['batch']} x {res['seq']} per process, "
            f"{res['blocks']} blocks x {res['steps']} steps",
            f"  local step (no sync)   {fmt_stats(res['local_step'])}",
            f"  per-tensor loop step   {fmt_stats(res['loop_step'])}  (sync overhead {res['loop_overhead_s']:.4f} s)",
            f"  DDP step               {fmt_stats(res['ddp_step'])}  (sync overhead {res['ddp_overhead_s']:.4f} s)",
            f"  DDP / loop step (paired median): {res['step_ratio']:.3f}; overhead ratio: "
            + (f"{res['overhead_ratio']:.3f}" if res["overhead_ratio"] is not None else "n/a")]


def table_evalshard(res: dict) -> list[str]:
    return [f"Evaluation sharded by items: {res['model']} MMLU {res['items']} items {res['shots']}-shot "
            f"({', '.join(res['subjects'])}), batch {res['batch_size']}, {res['reps']} alternating reps in fresh "
            f"processes; 1 process x {res['threads_one']} thread(s) vs 2 {res['backend']} processes x "
            f"{res['threads_two']} thread(s) on {res['cpus']} CPU(s)",
            f"  1 rank   {fmt_stats(res['one_rank'])}",
            f"  2 ranks  {fmt_stats(res['two_ranks'])}  (scoring + gather of the per-item results)",
            f"  2 ranks / 1 rank wall time (median of per-rep ratios): {res['ratio']:.3f}; per-item results equal: "
            f"{'yes' if res['items_equal'] else 'NO'}"]


def table_batching(res: dict) -> list[str]:
    o = res["overhead"]
    lines = [f"Scoring batches: {res['model']} on {res['device']}, {res['threads']} thread(s), eval batch "
             f"{res['batch_size']}, {res['reps']} alternating rounds; full = length-sorted batches of "
             f"{res['batch_size']}, cut = padding-aware (forward_cost {res['forward_cost']} tokens)",
             f"  one forward's cost: 8 x {o['seq']} tokens as 1 batch {fmt_stats(o['batch_of_8'])}, as 8 singles "
             f"{fmt_stats(o['eight_singles'])} -> {o['overhead_tokens']['median']:.1f} tokens per extra forward"]
    for r in res["rows"]:
        lines.append(f"  {r['task']:18s} {r['items']:3d} items  full {fmt_stats(r['full'])}  cut "
                     f"{fmt_stats(r['cut'])}  full / cut {r['ratio']:.2f}  same values: "
                     f"{'yes' if r['same_values'] else 'NO'}")
    lines.append(f"  all passes: full {fmt_stats(res['total_full'])}, cut {fmt_stats(res['total_cut'])}, "
                 f"full / cut (paired median) {res['total_ratio']:.2f}")
    return lines


def table_errors(res: dict) -> list[str]:
    from . import fast_errors

    return fast_errors.table(res)


TABLES = {"errors": table_errors, "adapters": table_adapters, "overhead": table_overhead, "eval": table_eval, "scaling": table_scaling,
          "meta": table_meta, "neighbour": table_neighbour, "lwf": table_lwf,
          "gradsync": table_gradsync, "evalshard": table_evalshard, "batching": table_batching}


def ratio_table(results: dict[str, dict]) -> list[str]:
    """One line per issue-#8 target: measured value, target, met or missed."""
    lines = ["== Targets (issue #8) ==", f"{'measure':44s} {'value':>9s} {'target':>9s}  status"]

    def add(name, value, target, met):
        lines.append(f"{name:44s} {value:9.3f} {target:>9s}  {'met' if met else 'MISSED'}")

    if "adapters" in results:
        a = results["adapters"]["variants"]
        lora_bpp = a["lora"]["state_bytes_per_param"]
        for v in ("share_a", "share_b", "share_ab"):
            add(f"{v} step time / LoRA (paired median)", a[v]["step_ratio_paired"]["median"], "<= 1.02",
                a[v]["step_target_met"])
        for v in ("share_a", "share_b", "share_ab"):
            add(f"{v} Adam bytes per param / LoRA's", a[v]["state_bytes_per_param"] / lora_bpp, "= 1.00",
                a[v]["state_proportional"])
    if "overhead" in results:
        o = results["overhead"]
        add("strategy step / bare loop step", o["ratio"], "<= 1.05", o["target_met"])
    if "eval" in results:
        e = results["eval"]
        for kind in ("mmlu", "gsm8k", "humaneval"):
            if kind not in e:
                continue
            label = f"{kind} items/s ours / lm-eval"
            if "speedup" in e[kind]:
                add(label, e[kind]["speedup"], ">= 1.5", e[kind]["target_met"])
            else:
                lines.append(f"{label:44s} {'n/a':>9s} {'>= 1.5':>9s}  not measured")
            lines[-1] += f"  [{e[kind]['settings']}]"
            if "same_completions" in e[kind]:
                lines[-1] += f" identical completions {e[kind]['same_completions']}/{e[kind]['n']}"
        if "identical_accuracy" in e["mmlu"]:
            add("MMLU accuracy ours - lm-eval", e["mmlu"]["ours_accuracy"] - e["mmlu"]["lm_eval_accuracy"], "= 0",
                e["mmlu"]["identical_accuracy"])
    if "neighbour" in results:
        for x in results["neighbour"]["rows"]:
            lines.append(f"{'demo step beside a busy core / lone, ' + str(x['threads']) + ' thr':44s} "
                         f"{x['ratio']:9.3f} {'-':>9s}  (measured{', chosen' if x['chosen'] else ''})")
    if "gradsync" in results:
        g = results["gradsync"]
        lines.append(f"{'DDP step / per-tensor loop step, 2 gloo procs':44s} {g['step_ratio']:9.3f} {'-':>9s}  "
                     f"(measured)")
    if "evalshard" in results:
        e = results["evalshard"]
        lines.append(f"{'MMLU scoring, 2 ranks / 1 rank, same CPUs':44s} {e['ratio']:9.3f} {'-':>9s}  "
                     f"(measured; per-item equal: {'yes' if e['items_equal'] else 'NO'})")
    if "batching" in results:
        b = results["batching"]
        lines.append(f"{'scoring, full / padding-aware batches':44s} {b['total_ratio']:9.3f} {'-':>9s}  "
                     f"(measured; demo stream + MMLU 5-shot, eval batch {b['batch_size']}; same values: "
                     f"{'yes' if b['same_values'] else 'NO'})")
    if "errors" in results:
        for x in results["errors"]["rows"]:
            add(f"seconds to: {x['command']}"[:44], x["median_s"], f"< {x['target_s']:.0f}", x["target_met"])
    if "meta" in results:
        ok = all(x["closed_form_ok"] for x in results["meta"]["rows"])
        lines.append(f"{'meta-device counts = closed form':44s} {'all' if ok else 'NOT all':>9s} {'all':>9s}  "
                     f"{'met' if ok else 'MISSED'}")
    return lines


# --------------------------------------------------------------------------------------- main
def run_part(part: str, s: dict, args, log, save_partial=None) -> dict:
    """Run one part; `save_partial(result)` (the eval part) saves a result still missing later tasks."""
    if part == "adapters":
        from . import adapters

        return adapters.run(model_name=s["model"], r=s["r"], batch=s["batch"], seq=s["seq"], warmup=s["warmup"],
                            reps=s["reps"], device=args.device, profile_on_miss=not args.no_profile,
                            isolate=s["isolate"], peak_n=s["mfu_peak_n"], log=log)
    if part == "overhead":
        from . import overhead

        return overhead.run(model_name=s["model"], r=s["r"], batch=s["overhead_batch"], seq=s["overhead_seq"],
                            reps=max(s.get("overhead_reps", s["reps"]), s["overhead_steps_per_block"] - 1),
                            steps_per_block=s["overhead_steps_per_block"], device=args.device, log=log)
    if part == "eval":
        from . import eval_throughput

        return eval_throughput.run(model_name=s["model"], mmlu_n=s["mmlu_n"], mmlu_shots=s["mmlu_shots"],
                                   gsm8k_n=s["gsm8k_n"], gsm8k_shots=s["gsm8k_shots"],
                                   gsm8k_new_tokens=s["gsm8k_new_tokens"], humaneval_n=s["humaneval_n"],
                                   humaneval_new_tokens=s["humaneval_new_tokens"], batch_size=s["eval_batch"],
                                   reps=s["eval_reps"], device=args.device,
                                   profile_on_miss=not args.no_profile, log=log, on_task_done=save_partial)
    if part == "scaling":
        from . import scaling

        return scaling.run(model_name=s["model"], variants=("lora", "share_a"), seqs=s["scaling_seqs"],
                           ranks=s["scaling_ranks"], base_seq=s["seq"] if s["seq"] in s["scaling_seqs"]
                           else s["scaling_seqs"][len(s["scaling_seqs"]) // 2],
                           base_rank=s["scaling_ranks"][0], batch=s["scaling_batch"], warmup=s["scaling_warmup"],
                           reps=s["scaling_reps"], device=args.device, isolate=s["isolate"], log=log)
    if part == "neighbour":
        from . import neighbour

        return neighbour.run(model_name=s["model"], batch=s["neighbour_batch"], seq=s["neighbour_seq"],
                             warmup=s["neighbour_warmup"], steps=s["neighbour_steps"], blocks=s["neighbour_blocks"],
                             device=args.device, log=log)
    if part == "lwf":
        from . import lwf_cost

        return lwf_cost.run(model_name=s["model"], r=s["r"], batch=s["overhead_batch"], seq=s["overhead_seq"],
                            reps=max(s.get("overhead_reps", s["reps"]), s["overhead_steps_per_block"] - 1),
                            steps_per_block=s["overhead_steps_per_block"], device=args.device, log=log)
    if part == "gradsync":
        from . import grad_sync

        return grad_sync.run(model_name=s["model"], r=s["r"], batch=s["gradsync_batch"], seq=s["gradsync_seq"],
                             steps=s["gradsync_steps"], blocks=s["gradsync_blocks"],
                             threads=args.threads or 1, log=log)
    if part == "evalshard":
        from clsharelora.hardware import usable_cpus

        from . import eval_sharding

        return eval_sharding.run(model_name=s["model"], n=s["evalshard_n"], shots=s["evalshard_shots"],
                                 batch_size=s["eval_batch"], reps=s["evalshard_reps"],
                                 cpus=args.threads or usable_cpus(), log=log)
    if part == "batching":
        from . import scoring_batches

        return scoring_batches.run(model_name=s["model"], reps=s["batching_reps"], paper_mmlu_n=s["batching_mmlu_n"],
                                   overhead_seq=s["batching_seq"], device=args.device, log=log)
    if part == "errors":
        from . import fast_errors

        return fast_errors.run(reps=s["reps"], quick=args.quick, log=log)
    from . import meta_table

    return meta_table.run(models=s["meta_models"], ranks=s["meta_ranks"], batch=s["batch"], seq=s["seq"], log=log)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        parts = [p.strip() for p in args.only.split(",") if p.strip()]
        unknown = [p for p in parts if p not in PARTS]
        if unknown or not parts:
            raise UserError(f"--only: unknown part(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(PARTS)}")
        s = settings(args)
        if args.threads is None:
            from clsharelora.hardware import apply_cpu_threads

            apply_cpu_threads()   # affinity mask and cgroup quota (an explicit OMP_NUM_THREADS wins)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.threads is not None:
        if args.threads < 1:
            print(f"error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        import torch

        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)  # for subprocesses
        torch.set_num_threads(args.threads)
    import warnings

    warnings.filterwarnings("ignore")
    from .timing import quiet

    from clsharelora.hardware import machine_line

    info = machine()
    line = machine_line()
    log(f"bench: {info['cpu']} ({info['cpu_count']} cpus, torch {info['torch']}, {info['torch_threads']} threads"
        f"{', ' + info['cuda'] if info['cuda'] else ''}); load average {info['load_average']}"
        f"{'; QUICK smoke: numbers are meaningless' if args.quick else ''}")
    results: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    def write(part: str, result: dict, wall: float, *, complete: bool) -> None:
        """PART.json; `complete` False while a part (eval) has saved only the tasks it finished so far."""
        payload = {"part": part, "quick": args.quick, "complete": complete, "machine": machine(), "settings": s,
                   "wall_seconds": wall, "result": result}
        atomic.write_text(out / f"{part}.json", json.dumps(payload, indent=1, default=list) + "\n")

    for part in parts:
        t0 = time.perf_counter()
        with quiet():
            results[part] = run_part(part, s, args, log, save_partial=lambda result, part=part, t0=t0: write(
                part, result, time.perf_counter() - t0, complete=False))
        seconds[part] = time.perf_counter() - t0
        write(part, results[part], seconds[part], complete=True)
        print("\n".join(["", *TABLES[part](results[part]), line]), flush=True)
    summary = ratio_table(results)
    # a partial run (--only) gets its own summary file, so it does not overwrite the summary of other parts
    name = "summary.json" if parts == list(PARTS) else f"summary-{'-'.join(parts)}.json"
    (out / name).write_text(json.dumps(
        {"quick": args.quick, "machine": info, "machine_line": line, "machine_at_end": machine(), "settings": s, "wall_seconds": seconds,
         "parts": parts, "ratio_table": summary}, indent=1, default=list) + "\n")
    print("\n".join(["", *summary, line]), flush=True)
    log(f"bench: {sum(seconds.values()):.0f} s in all; JSON in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
