"""Part 3: evaluation throughput, ours vs lm-evaluation-harness's HF backend, on the same model, items, shots.

Same work on both sides: MMLU letter scoring (log-likelihood of " A".." D" after the few-shot prompt, argmax),
GSM8K under the paper stream's default protocol (lm-eval `gsm8k_cot`: greedy generation, its stop strings
and answer filters), and HumanEval 0-shot greedy completion with lm-eval's humaneval stop strings, at the
paper stream's lengths (GSM8K 8-shot 256 new tokens, HumanEval 512: streams/paper.yaml); each row carries
its protocol label. For GSM8K lm-eval renders its own prompts from its shipped `gsm8k_cot` task (only the
data swapped to the same items); for MMLU and HumanEval the prompts rendered by our evaluators are handed to
lm-eval as a local JSON-lines task (bench/lm_eval_tasks/*.yaml, filled in a temp dir). What is compared is
the scoring/generation machinery. Our NLL
pass (part of `Evaluator.evaluate`, absent from lm-eval) is not timed. Timed: tokenisation + model calls +
answer extraction on our side; `lm_eval.evaluator.evaluate` (request building, model calls, filters,
metrics) on theirs. Runs alternate (ours, lm-eval, ours, ...) after one warm-up call of each (one batch of
MMLU, one item of a generation task: at 256-512 new tokens a batch would cost as much as a timed run).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .adapters import pick_device
from .timing import summarize, synchronize

TARGET = 1.5            # our items/s >= 1.5 x lm-eval's (issue #8)
TASK_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
LM_EVAL_PIN = "lm-eval==0.4.13"


def _offline_env() -> None:
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[key] = "1"


def lm_eval_version() -> str | None:
    try:
        import importlib.metadata as md

        return md.version("lm_eval")
    except Exception:
        return None


# ------------------------------------------------------------------------------------------ ours
def ours_mmlu(model, tokenizer, ev, prompts=None) -> list[str]:
    """Letter predictions exactly as MMLUEvaluator scores them (without its NLL pass)."""
    from clsharelora.evaluation.generation import eval_context
    from clsharelora.evaluation.multiple_choice import predict_letters
    from clsharelora.evaluation.nll import letter_logprobs

    prompts = ev.prompts if prompts is None else prompts
    with eval_context(model, autocast=ev.autocast):
        logprobs = letter_logprobs(model, tokenizer, prompts, ev.letters, batch_size=ev.batch_size,
                                   contexts=ev.contexts[: len(prompts)])
    return predict_letters(logprobs, [len(r.choices) for r in ev.records[: len(prompts)]])


def ours_humaneval(model, tokenizer, ev, prompts=None) -> list[str]:
    """Greedy completions exactly as HumanEvalEvaluator generates them (samples=1, without running tests)."""
    from clsharelora.evaluation.generation import eval_context, generate
    from clsharelora.evaluation.humaneval import STOP

    prompts = humaneval_prompts(ev) if prompts is None else prompts
    with eval_context(model, autocast=ev.autocast):
        return generate(model, tokenizer, prompts, max_new_tokens=ev.max_new_tokens, stop=STOP,
                        batch_size=ev.batch_size)


def humaneval_prompts(ev) -> list[str]:
    return [prompt for prompt, _, _ in ev.problems]


def ours_gsm8k(model, tokenizer, ev, prompts=None) -> list[str]:
    """Greedy completions exactly as GSM8KEvaluator generates them (without its NLL pass)."""
    from clsharelora.evaluation.generation import eval_context, generate

    prompts = ev.prompts if prompts is None else prompts
    with eval_context(model, autocast=ev.autocast):
        return generate(model, tokenizer, prompts, max_new_tokens=ev.max_new_tokens, stop=ev.stop,
                        batch_size=ev.batch_size, contexts=ev.contexts[: len(prompts)])


# --------------------------------------------------------------------------------------- lm-eval
HF_DEFAULT_MAX_GEN_TOKS = 256   # lm-eval HFLM.max_gen_toks: what gsm8k_cot (which sets none) generates


def gsm8k_cot_task(directory: Path, name: str, gsm8k_ev) -> str:
    """lm-eval's own shipped `gsm8k_cot` task over the evaluator's items (data swapped to a local file, as
    tests/test_lm_eval_parity.py does), so lm-eval renders its own prompts; `--num_fewshot` = our shots, and
    the token budget ours when it is not lm-eval's default. Returns the task YAML's text."""
    import lm_eval
    import yaml

    shipped = Path(lm_eval.__file__).resolve().parent / "tasks" / "gsm8k" / "gsm8k-cot.yaml"
    data = directory / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"question": r.question, "answer": r.meta["raw_answer"]}) + "\n"
                            for r in gsm8k_ev.records))
    wrapper = {"include": str(shipped), "task": name, "dataset_path": "json", "dataset_name": None,
               "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(directory / "hf_cache")},
               "num_fewshot": len(gsm8k_ev.shots)}
    if gsm8k_ev.max_new_tokens != HF_DEFAULT_MAX_GEN_TOKS:
        generation = dict(yaml.safe_load(shipped.read_text())["generation_kwargs"])
        wrapper["generation_kwargs"] = {**generation, "max_gen_toks": gsm8k_ev.max_new_tokens}
    return yaml.safe_dump(wrapper)


def write_tasks(directory: Path, mmlu_ev, gsm8k_ev, humaneval_ev, tag: str) -> dict[str, str]:
    """Task YAMLs (and their JSON-lines data) in `directory`; returns kind -> lm-eval task name. GSM8K is
    lm-eval's shipped `gsm8k_cot` rendering its own prompts (`gsm8k_cot_task`); MMLU and HumanEval hand
    lm-eval the prompts our evaluators rendered (tests/test_lm_eval_parity.py checks MMLU's are lm-eval's)."""
    names = {kind: f"clsharelora_bench_{kind}_{tag}" for kind in ("mmlu", "gsm8k", "humaneval")}
    rows = {
        "mmlu": [{"context": p, "gold": "ABCD".index(r.answer)} for r, p in zip(mmlu_ev.records, mmlu_ev.prompts)],
        "humaneval": [{"context": p, "answer": r.target}
                      for r, p in zip(humaneval_ev.records, humaneval_prompts(humaneval_ev))],
    }
    templates = {"mmlu": "mmlu_letters.yaml", "humaneval": "humaneval_completion.yaml"}
    new_tokens = {"mmlu": 1, "humaneval": humaneval_ev.max_new_tokens}
    for kind, items in rows.items():
        data = directory / f"{kind}.jsonl"
        data.write_text("".join(json.dumps(x) + "\n" for x in items))
        text = (TASK_DIR / templates[kind]).read_text()
        text = text.replace("__TASK__", names[kind]).replace("__DATA_FILE__", json.dumps(str(data)))
        text = text.replace("__MAX_GEN_TOKS__", str(new_tokens[kind]))
        (directory / f"{names[kind]}.yaml").write_text(text)
    (directory / f"{names['gsm8k']}.yaml").write_text(gsm8k_cot_task(directory, names["gsm8k"], gsm8k_ev))
    return names


class LmEvalRunner:
    """lm-eval's HFLM over a checkpoint directory and our local tasks; one `run` = one evaluate() call."""

    def __init__(self, model_dir: str, task_dir: Path, device: torch.device, batch_size: int):
        _offline_env()
        from lm_eval.models.huggingface import HFLM

        self.lm = HFLM(pretrained=model_dir, device=str(device), dtype="float32", batch_size=batch_size)
        self.task_dir = task_dir

    def run(self, task: str, limit: int | None = None) -> tuple[float, list[dict]]:
        """(seconds of lm_eval.evaluator.evaluate, per-document sample records)."""
        import logging

        from lm_eval.evaluator import evaluate
        from lm_eval.tasks import TaskManager

        logging.getLogger("lm-eval").setLevel(logging.ERROR)
        loaded = TaskManager(include_path=str(self.task_dir), include_defaults=False).load([task])
        device = self.lm.device
        synchronize(device)
        start = time.perf_counter()
        out = evaluate(lm=self.lm, task_dict=loaded, limit=limit, bootstrap_iters=0, log_samples=True,
                       verbosity="ERROR")
        synchronize(device)
        return time.perf_counter() - start, out["samples"][task]


def lm_eval_mmlu_letters(samples: list[dict], n: int) -> list[str]:
    """lm-eval's prediction per document: argmax of the choice log-likelihoods (its `acc`)."""
    preds: list[str | None] = [None] * n
    for s in samples:
        lls = [resp[0] for resp in s["filtered_resps"]]
        preds[s["doc_id"]] = "ABCD"[max(range(len(lls)), key=lambda i: (lls[i], -i))]
    return preds  # type: ignore[return-value]


def lm_eval_completions(samples: list[dict], n: int) -> list[str]:
    """lm-eval's raw completion per document (before any answer filter)."""
    texts: list[str | None] = [None] * n
    for s in samples:
        texts[s["doc_id"]] = s["resps"][0][0]
    return texts  # type: ignore[return-value]


def lm_eval_gsm8k(samples: list[dict], n: int) -> tuple[list[str], list[float]]:
    """(raw completion, strict-match exact_match) per document."""
    texts: list[str | None] = [None] * n
    strict: list[float] = [0.0] * n
    for s in samples:
        if s.get("filter", "strict-match") != "strict-match":
            continue
        texts[s["doc_id"]] = s["resps"][0][0]
        strict[s["doc_id"]] = float(s["exact_match"])
    return texts, strict  # type: ignore[return-value]


def _model_dir(model_name: str, model, tokenizer, scratch: Path) -> str:
    """The checkpoint lm-eval loads: the converted SmolLM2 directory, else a save of the in-memory model."""
    from clsharelora.models import resolve

    if resolve(model_name).source == "embedded":
        from clsharelora.models.smollm2 import embedded_dir

        return str(embedded_dir())
    path = scratch / "model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _new_tokens(tokenizer, completions: list[str]) -> dict[str, float]:
    """Token counts of the completions (after the stop-string cut): how much of max_new_tokens rows use,
    which is what letting finished rows leave the batch saves."""
    counts = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in completions]
    return {"mean": sum(counts) / len(counts), "max": max(counts), "min": min(counts)}


def _top_ops(prof, top: int = 10) -> dict[str, Any]:
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return {"self_cpu_total_ms": total / 1000,
            "top_ops": [{"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1000,
                         "share": e.self_cpu_time_total / total if total else 0.0} for e in events[:top]]}


def profile_one_batch(kind: str, model, tokenizer, ev, lm_runner, task: str | None) -> dict[str, Any]:
    """torch.profiler of a warm-up-sized run on each side: where the time goes when a speed-up target is missed."""
    from torch.profiler import profile

    out = {}
    with profile() as prof:
        OURS[kind](model, tokenizer, ev, PROMPTS[kind](ev)[:warm_items(kind, ev.batch_size)])
    out["ours"] = _top_ops(prof)
    if lm_runner and task:
        with profile() as prof:
            lm_runner.run(task, limit=warm_items(kind, ev.batch_size))
        out["lm_eval"] = _top_ops(prof)
    return out


OURS = {"mmlu": ours_mmlu, "gsm8k": ours_gsm8k, "humaneval": ours_humaneval}
PROMPTS = {"mmlu": lambda ev: ev.prompts, "gsm8k": lambda ev: ev.prompts, "humaneval": humaneval_prompts}


def warm_items(kind: str, batch_size: int) -> int:
    """Items of a warm-up (and of a profile): one batch of MMLU, two items of a generation task."""
    return batch_size if kind == "mmlu" else min(2, batch_size)


def settings_line(kind: str, block: dict, batch_size: int) -> str:
    """The settings a ratio was measured at, printed next to it."""
    if kind == "mmlu":
        return f"{block['protocol']}, {block['n']} items {block['shots']}-shot, batch {batch_size}"
    return (f"{block['protocol']}, {block['n']} items {block['shots']}-shot, {block['max_new_tokens']} new tokens, "
            f"batch {batch_size}")


# ------------------------------------------------------------------------------------------- run
def run(*, model_name: str, mmlu_n: int, mmlu_shots: int, gsm8k_n: int, gsm8k_shots: int, gsm8k_new_tokens: int,
        humaneval_n: int, humaneval_new_tokens: int,
        mmlu_subjects: tuple[str, ...] = ("high_school_psychology", "elementary_mathematics"),
        batch_size: int, reps: int, device: str | None, profile_on_miss: bool = True, log=print,
        on_task_done=None) -> dict[str, Any]:
    """The comparison for MMLU, GSM8K (the paper stream's default protocol, gsm8k_cot) and HumanEval; each
    task's block names its protocol. `on_task_done(result)` is called with the result so far after each
    task, so a caller can save what is measured before a later task fails or is killed."""
    from clsharelora.evaluation.base import make_evaluator
    from clsharelora.evaluation.gsm8k import extract_strict, is_correct
    from clsharelora.models import load_model, load_tokenizer

    dev = pick_device(device)
    log(f"[eval] {model_name} on {dev}: MMLU {mmlu_n} items {mmlu_shots}-shot, GSM8K {gsm8k_n} items "
        f"{gsm8k_shots}-shot (<= {gsm8k_new_tokens} new tokens), HumanEval {humaneval_n} items 0-shot "
        f"(<= {humaneval_new_tokens} new tokens), batch {batch_size}, {reps} reps")
    # Items from a few subjects, as a full MMLU run has ~250 per subject: the per-subject few-shot context
    # is then shared, as it is on the whole test set.
    from clsharelora.data import load_benchmark

    mmlu = make_evaluator("mmlu", shots=mmlu_shots, batch_size=batch_size,
                          records=load_benchmark("mmlu", "test", n=mmlu_n, subjects=list(mmlu_subjects)))
    gsm8k = make_evaluator("gsm8k", n=gsm8k_n, shots=gsm8k_shots, batch_size=batch_size,
                           max_new_tokens=gsm8k_new_tokens)
    humaneval = make_evaluator("humaneval", n=humaneval_n, batch_size=batch_size,
                               max_new_tokens=humaneval_new_tokens)
    model = load_model(model_name, device=dev)
    tokenizer = load_tokenizer(model_name)
    evs = {"mmlu": mmlu, "gsm8k": gsm8k, "humaneval": humaneval}
    protocols = {kind: ev.label for kind, ev in evs.items()}
    prompt_tokens = {kind: sum(len(tokenizer(p)["input_ids"]) for p in PROMPTS[kind](ev)) / len(ev.records)
                     for kind, ev in evs.items()}
    result: dict[str, Any] = {"model": model_name, "device": str(dev), "batch_size": batch_size, "reps": reps,
                              "target_speedup": TARGET, "mean_prompt_tokens": prompt_tokens,
                              "mmlu": {"n": len(mmlu.records), "shots": mmlu_shots,
                                       "subjects": list(mmlu_subjects), "protocol": protocols["mmlu"]},
                              "gsm8k": {"n": len(gsm8k.records), "shots": gsm8k_shots,
                                        "max_new_tokens": gsm8k_new_tokens, "protocol": protocols["gsm8k"]},
                              "humaneval": {"n": len(humaneval.records), "shots": 0,
                                            "max_new_tokens": humaneval_new_tokens,
                                            "protocol": protocols["humaneval"]},
                              "timed_work": "ours: tokenise + forward/generate + answer extraction (NLL pass "
                                            "excluded); lm-eval: lm_eval.evaluator.evaluate on a local task"}
    version = lm_eval_version()
    lm_runner = None
    scratch = tempfile.TemporaryDirectory(prefix="clsharelora-bench-lmeval-")
    if version is None:
        result["lm_eval"] = {"status": "not measured",
                             "reason": f"lm-eval is not installed (pip install {LM_EVAL_PIN})"}
    else:
        try:
            names = write_tasks(Path(scratch.name), mmlu, gsm8k, humaneval, tag=str(os.getpid()))
            lm_runner = LmEvalRunner(_model_dir(model_name, model, tokenizer, Path(scratch.name)),
                                     Path(scratch.name), dev, batch_size)
            result["lm_eval"] = {"status": "measured", "version": version, "backend": "hf (HFLM)",
                                 "tasks": names}
        except Exception as exc:  # recorded, not hidden: the comparison is then "not measured"
            result["lm_eval"] = {"status": "not measured", "reason": f"{type(exc).__name__}: {exc}"}
    try:
        for kind, ev in evs.items():
            ours_fn = OURS[kind]
            t0 = time.perf_counter()
            ours_fn(model, tokenizer, ev, PROMPTS[kind](ev)[:warm_items(kind, batch_size)])    # warm-up
            if lm_runner:
                lm_runner.run(result["lm_eval"]["tasks"][kind], limit=warm_items(kind, batch_size))
            ours_t, theirs_t, ours_out, theirs_out = [], [], None, None
            for _ in range(reps):
                synchronize(dev)
                start = time.perf_counter()
                ours_out = ours_fn(model, tokenizer, ev)
                if kind == "gsm8k":
                    ours_strict = [is_correct(extract_strict(c), r.answer) for c, r in zip(ours_out, ev.records)]
                synchronize(dev)
                ours_t.append(time.perf_counter() - start)
                if lm_runner:
                    seconds, theirs_out = lm_runner.run(result["lm_eval"]["tasks"][kind])
                    theirs_t.append(seconds)
            n = len(ev.records)
            block = result[kind]
            block["ours_seconds"] = summarize(ours_t)
            block["ours_items_per_s"] = n / block["ours_seconds"]["median"]
            if kind == "mmlu":
                block["ours_accuracy"] = sum(p == r.answer for p, r in zip(ours_out, ev.records)) / n
            elif kind == "gsm8k":
                block["ours_strict_accuracy"] = sum(ours_strict) / n
            if lm_runner:
                block["lm_eval_seconds"] = summarize(theirs_t)
                block["lm_eval_items_per_s"] = n / block["lm_eval_seconds"]["median"]
                block["speedup"] = block["ours_items_per_s"] / block["lm_eval_items_per_s"]
                block["speedup_paired"] = summarize([b / a for a, b in zip(ours_t, theirs_t)])
                block["target_met"] = block["speedup"] >= TARGET
                if kind == "mmlu":
                    theirs = lm_eval_mmlu_letters(theirs_out, n)
                    block["lm_eval_accuracy"] = sum(p == r.answer for p, r in zip(theirs, ev.records)) / n
                    block["same_predictions"] = sum(a == b for a, b in zip(ours_out, theirs))
                    block["identical_accuracy"] = block["lm_eval_accuracy"] == block["ours_accuracy"]
                elif kind == "gsm8k":
                    texts, strict = lm_eval_gsm8k(theirs_out, n)
                    block["lm_eval_strict_accuracy"] = sum(strict) / n
                    block["same_completions"] = sum(a == b for a, b in zip(ours_out, texts))
                else:
                    texts = lm_eval_completions(theirs_out, n)
                    block["same_completions"] = sum(a == b for a, b in zip(ours_out, texts))
                block["settings"] = settings_line(kind, block, batch_size)
            if not lm_runner:
                block["settings"] = settings_line(kind, block, batch_size)
            if profile_on_miss and lm_runner and not block["target_met"]:
                log(f"[eval] {kind}: speed-up target missed; profiling a warm-up-sized run on each side")
                block["profile"] = profile_one_batch(kind, model, tokenizer, ev, lm_runner,
                                                     result["lm_eval"]["tasks"][kind])
            block["new_tokens_ours"] = _new_tokens(tokenizer, ours_out) if kind != "mmlu" else None
            log(f"[eval] {kind} done in {time.perf_counter() - t0:.0f} s")
            if on_task_done is not None:
                on_task_done(result)
    finally:
        scratch.cleanup()
    return result
