"""`clsharelora gpu-check`: what a first session on a GPU must establish, in one command, as JSON + markdown.

Three parts, each timed and skipped (saying so) when it would exceed --budget-min:
environment (GPU, memory, driver, torch/CUDA, bf16, TF32, SDPA backends); correctness on the device (logits
and one optimizer step against CPU fp32 for LoRA, ShareA and ShareAB; bf16 against fp32; shared ShareLoRA
tensors still one Parameter after the steps; the project's decode loop against HF `generate` on 16 prompts;
an adapter saved on the device loading on the CPU with the same logits; a HumanEval program through the
sandbox); speed (training tokens/s and MFU against the bf16 matmul peak measured in the same run, for
SmolLM2 and a Llama-2-7B-shaped random-weight model, LoRA vs ShareA; measured peak memory / the dry run's
plan; decode tokens/s of the project's loop vs HF `generate`). Every CUDA-only figure says "skipped: no CUDA"
on a CPU: nothing is estimated in its place. `--device cpu --tiny` runs the same code on tiny-llama (tests).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .errors import ConfigError

HELP = "one-command GPU check: environment, correctness vs CPU, speed/MFU/memory (JSON + markdown)"
NO_CUDA = "skipped: no CUDA"
#: correctness tolerances, stated in the report next to each figure
TOL = {"fp32_logits_rel": 1e-3, "fp32_grad_rel": 5e-3, "fp32_step": 1e-5, "bf16_kl": 0.01, "bf16_top1": 0.9}
#: seconds each part is planned to need (full size / --tiny); a part starts only when that much budget is left
PLANNED_S = {"environment": (5, 1), "correctness": (120, 30), "matmul_peak": (15, 0), "train": (150, 0),
             "decode": (120, 0)}
SGD_LR = 1e-3
PROMPTS = [f"Question {i}: what is {i} + {2 * i + 1}? Answer:" for i in range(8)] + [
    "def fibonacci(n):\n    ", "The capital of France is", "Once upon a time", "import numpy as np\n",
    "A list of prime numbers: 2, 3, 5,", "Translate to French: cheese ->", "class Stack:\n    def push(self,",
    "The derivative of x^2 is"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="gpu-check", help="folder for gpu-check.json and gpu-check.md (default gpu-check)")
    p.add_argument("--budget-min", type=float, default=8.0, help="wall-clock budget in minutes (default 8)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="device under test (default cuda)")
    p.add_argument("--tiny", action="store_true", help="tiny-llama instead of SmolLM2 (fast; for tests)")


class Budget:
    """Wall-clock budget: a part starts only when its planned seconds still fit, and records its time."""

    def __init__(self, minutes: float, tiny: bool):
        self.start, self.seconds, self.tiny = time.perf_counter(), minutes * 60, tiny

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def run(self, name: str, fn, *args):
        planned = PLANNED_S[name][1 if self.tiny else 0]
        if planned > self.left():
            return {"status": f"skipped: budget (needs ~{planned} s, {max(0, self.left()):.0f} s left)"}
        t0 = time.perf_counter()
        out = fn(*args)
        out["seconds"] = round(time.perf_counter() - t0, 2)
        return out


# ------------------------------------------------------------------------------------ environment
def environment(device) -> dict:
    import torch

    from .hardware import cpu_record
    from .versions import SUPPORTED, installed

    env = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
           "packages": {n: installed(n) for n in SUPPORTED}, "cpu": cpu_record()["cpu"]}
    if device.type != "cuda":
        return {**env, **dict.fromkeys(("gpu", "gpu_memory_gib", "driver", "cuda", "bf16", "tf32",
                                        "sdpa_backends"), NO_CUDA)}
    props = torch.cuda.get_device_properties(device)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20).stdout.split("\n")[0].strip() or None
    except (OSError, subprocess.SubprocessError):
        driver = None
    sdp = torch.backends.cuda
    return {**env, "gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2 ** 30, 2),
            "driver": driver or "unknown (nvidia-smi not found)", "cuda": torch.version.cuda,
            "compute_capability": f"{props.major}.{props.minor}", "bf16": torch.cuda.is_bf16_supported(),
            "tf32": {"matmul": sdp.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
            "sdpa_backends": {"flash": sdp.flash_sdp_enabled() and sdp.is_flash_attention_available(),
                              "mem_efficient": sdp.mem_efficient_sdp_enabled(), "math": sdp.math_sdp_enabled(),
                              "cudnn": sdp.cudnn_sdp_enabled()}}


# ------------------------------------------------------------------------------------ correctness
def _check(name: str, ok: bool, value, tolerance: str) -> dict:
    return {"name": name, "status": "pass" if ok else "fail", "value": value, "tolerance": tolerance}


def _batch(tokenizer, device):
    """Four prompts, right-padded, with padding masked out of the labels."""
    from .benchmarks.tokenized import IGNORE_INDEX

    enc = tokenizer(PROMPTS[:4], return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    return ids, mask, labels


def _logits(model, batch):
    import torch

    with torch.no_grad():
        return model(input_ids=batch[0], attention_mask=batch[1]).logits.float().cpu()


def _sgd_step(model, batch) -> dict:
    """One SGD step on the batch (SGD: its update is lr x grad, so CPU and device must agree to the last
    digits; Adam's first step is lr x sign(grad), which amplifies noise in near-zero gradients)."""
    import torch

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD(list(dict.fromkeys(params.values())), lr=SGD_LR)
    loss = model(input_ids=batch[0], attention_mask=batch[1], labels=batch[2]).loss
    loss.backward()
    grads = {n: p.grad.detach().float().cpu().clone() for n, p in params.items()}
    opt.step()
    opt.zero_grad()
    return {"loss": float(loss), "grads": grads, "params": {n: p.detach().float().cpu() for n, p in params.items()}}


def _max_rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def correctness(device, model_name: str, data_root) -> dict:
    """Every check against CPU fp32 on the same weights, adapters initialised once on the CPU and copied."""
    import torch

    from . import registry
    from .adapters.sharing import is_tied
    from .evaluation.generation import eos_ids, generate
    from .models import load_model, load_tokenizer

    torch.backends.cuda.matmul.allow_tf32 = False      # fp32 means fp32 here; TF32 is reported, not mixed in
    tokenizer = load_tokenizer(model_name)
    checks = []
    batch_cpu = _batch(tokenizer, "cpu")
    batch_dev = tuple(t.to(device) for t in batch_cpu)
    for variant in ("lora", "share_a", "share_ab"):
        # dropout 0: the step must be deterministic to compare devices
        adapter = (registry.create("lora", "adapter", dropout=0.0) if variant == "lora"
                   else registry.create("sharelora", "adapter", variant=variant, dropout=0.0))
        torch.manual_seed(0)
        cpu = adapter.apply(load_model(model_name, seed=1))
        for p in cpu.parameters():          # LoRA's B starts at zero: give it values so the check sees it
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.02)
        dev = copy.deepcopy(cpu).to(device)
        cpu.eval(), dev.eval()
        a, b = _logits(cpu, batch_cpu), _logits(dev, batch_dev)
        diff = _max_rel(b, a)
        checks.append(_check(f"{variant}: fp32 logits, {device.type} vs cpu (max |diff| / max |logit|)",
                             diff <= TOL["fp32_logits_rel"], diff, f"<= {TOL['fp32_logits_rel']}"))
        with torch.autocast(device.type, dtype=torch.bfloat16):
            c = _logits(dev, batch_dev)
        mask = batch_cpu[1].bool()
        lp32, lp16 = (torch.log_softmax(x, -1)[mask] for x in (b, c))
        kl = float((lp32.exp() * (lp32 - lp16)).sum(-1).mean())
        top1 = float((lp32.argmax(-1) == lp16.argmax(-1)).float().mean())
        ok = kl <= TOL["bf16_kl"] and top1 >= TOL["bf16_top1"]
        checks.append(_check(f"{variant}: bf16 autocast vs fp32 on {device.type} (mean KL(fp32 || bf16) per "
                             f"position, nats; top-1 agreement)", ok, {"kl": kl, "top1": top1},
                             f"KL <= {TOL['bf16_kl']}, top-1 >= {TOL['bf16_top1']}"))
        s_cpu, s_dev = _sgd_step(cpu, batch_cpu), _sgd_step(dev, batch_dev)
        grad = max(_rel(s_dev["grads"][n], s_cpu["grads"][n]) for n in s_cpu["grads"])
        step = max(float((s_dev["params"][n] - s_cpu["params"][n]).abs().max()) for n in s_cpu["params"])
        ok = grad <= TOL["fp32_grad_rel"] and step <= TOL["fp32_step"]
        checks.append(_check(f"{variant}: one SGD step (lr {SGD_LR}), {device.type} vs cpu (max relative grad "
                             f"diff; max |param diff| after)", ok,
                             {"grad_rel": grad, "param_abs": step, "loss_cpu": s_cpu["loss"], "loss_dev": s_dev["loss"]},
                             f"grad <= {TOL['fp32_grad_rel']}, param <= {TOL['fp32_step']}"))
        if variant != "lora":
            checks.append(_check(f"{variant}: shared tensors still one Parameter after the step on {device.type}",
                                 is_tied(dev), is_tied(dev), "must be true"))
        with tempfile.TemporaryDirectory() as tmp:
            adapter.save(dev, tmp)
            back = adapter.load(load_model(model_name, seed=1), tmp).eval()
            diff = _max_rel(_logits(back, batch_cpu), _logits(dev, batch_dev))
        checks.append(_check(f"{variant}: adapter saved on {device.type}, loaded on cpu (max |logit diff| / max "
                             f"|logit|)", diff <= TOL["fp32_logits_rel"], diff, f"<= {TOL['fp32_logits_rel']}"))
        del cpu, dev

    model = load_model(model_name, seed=1, device=device).eval()
    eos = eos_ids(model, tokenizer)
    ours = generate(model, tokenizer, PROMPTS, max_new_tokens=24, batch_size=8)
    same = 0
    with torch.inference_mode():
        for prompt, text in zip(PROMPTS, ours):
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
            new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=24, pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
            new = new[:next((i for i, t in enumerate(new) if t in eos), len(new))]
            same += tokenizer.decode(new) == text
    checks.append(_check(f"decode loop (batches of 8, left-padded, KV cache) vs HF generate one prompt at a time, "
                         f"greedy, 24 new tokens, on {device.type}: equal completions",
                         same == len(PROMPTS), f"{same}/{len(PROMPTS)}", "all equal"))
    checks.append(_sandbox_check(data_root))
    return {"status": "fail" if any(c["status"] == "fail" for c in checks) else "pass", "checks": checks}


def _sandbox_check(data_root) -> dict:
    """HumanEval/0's canonical solution must pass in the sandbox and a wrong body must fail."""
    from .data import load_benchmark
    from .errors import UserError
    from .evaluation.humaneval import _problem_parts, check_program
    from .evaluation.sandbox import run_program

    try:
        record = load_benchmark("humaneval", "test", root=data_root, source="files")[0]
    except UserError as exc:
        return {"name": "HumanEval program through the sandbox", "status": f"skipped: no HumanEval data ({exc})"}
    prompt, test, entry_point = _problem_parts(record)
    good = run_program(check_program(prompt, record.target, test, entry_point))
    bad = run_program(check_program(prompt, "    return None\n", test, entry_point))
    return _check(f"HumanEval {record.id} through the sandbox: canonical solution passes, a wrong one fails",
                  good.status == "passed" and bad.status == "failed", {"canonical": good.status, "wrong": bad.status,
                                                                       "isolation": good.isolation},
                  "passed / failed")


# ------------------------------------------------------------------------------------------- speed
def matmul_peak(device) -> dict:
    """bf16 matmul FLOP/s of the best of 4 timed blocks of 20 8192^3 products: the MFU denominator."""
    import torch

    if device.type != "cuda":
        return {"status": NO_CUDA}
    n = 8192
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    from .bench.timing import timed

    def block():
        for _ in range(20):
            a @ b

    seconds = min(timed(block, device)[0] for _ in range(4))
    return {"status": "measured", "flops": 20 * 2 * n ** 3 / seconds}


#: the speed configurations: (model label, registry name or architecture, r, batch, seq, checkpointing);
#: the label "smollm2-135m" is what `study --dry-run` reads its measured throughput from (study/estimate.py)
TRAIN_SHAPES = (("smollm2-135m", "smollm2-135m", 8, 16, 512, False),
                ("llama2-7b-shaped (random weights)", "llama2-7b", 64, 2, 1024, True))


def _train_config(model: str, adapter: dict, r: int, batch: int, seq: int, ckpt: bool):
    from .config import from_dict

    return from_dict({"model": model, "adapter": {**adapter, "r": r, "alpha": 2 * r, "targets": "all-linear"},
                      "dtype": "bfloat16", "train": {"batch_size": batch, "global_batch": batch, "max_length": seq,
                                                     "gradient_checkpointing": ckpt, "bf16": True}})


def train_speed(device, peak: dict, budget: Budget) -> dict:
    """Tokens/s of forward + backward + AdamW on random tokens in bf16, model FLOP/s = 6 N tokens/s (N: base
    parameters, the convention of clsharelora/study/estimate.py), MFU = that / the measured bf16 peak, and
    the measured peak memory / the dry run's plan for the same config."""
    if device.type != "cuda":
        return {"status": NO_CUDA, "rows": []}
    rows = []
    for label, name, r, batch, seq, ckpt in TRAIN_SHAPES:
        for adapter in ({"name": "lora"}, {"name": "sharelora", "variant": "share_a"}):
            if budget.left() < 30:
                rows.append({"model": label, "adapter": adapter.get("variant", "lora"), "status": "skipped: budget"})
                continue
            rows.append(train_row(device, label, name, adapter, r=r, batch=batch, seq=seq, ckpt=ckpt,
                                  peak_flops=peak.get("flops")))
    return {"status": "measured", "rows": rows}


def train_row(device, label: str, name: str, adapter: dict, *, r: int, batch: int, seq: int, ckpt: bool,
              peak_flops: float | None, seconds: float = 10.0) -> dict:
    """One configuration of `train_speed`: at least 3 timed steps after a warm-up step, up to 20 or `seconds`.
    `name` is a registry model with weights, or "llama2-7b" (its architecture with random bf16 weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    from . import registry
    from .bench.timing import synchronize
    from .dry_run import memory_plan, unique_params
    from .models import configs, load_model

    config = _train_config(name, adapter, r, batch, seq, ckpt)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    if name == "llama2-7b":
        with torch.device(device):
            base = AutoModelForCausalLM.from_config(configs.llama2_7b(), dtype=torch.bfloat16)
    else:
        base = load_model(name, dtype=torch.bfloat16, device=device)
    if ckpt:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    options = {k: v for k, v in config.adapter.items() if k != "name"}
    model = registry.create(adapter["name"], "adapter", **options).apply(base)
    trainable = [p for p in dict.fromkeys(model.parameters()) if p.requires_grad]
    for p in trainable:              # adapter weights, grads and AdamW state in fp32, as the dry run plans
        p.data = p.data.float()
    model.train()
    opt = torch.optim.AdamW(trainable, lr=1e-5)
    ids = torch.randint(0, base.config.vocab_size, (batch, seq), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    synchronize(device)
    steps, t0 = 0, time.perf_counter()
    while steps < 3 or (steps < 20 and time.perf_counter() - t0 < seconds):
        step()
        steps += 1
        synchronize(device)
    elapsed = time.perf_counter() - t0
    n_trainable = sum(p.numel() for p in trainable)
    n_base = unique_params(base) - n_trainable
    tokens_s = steps * batch * seq / elapsed
    flops = 6 * n_base * tokens_s
    plan = memory_plan(config, base.config, n_base, n_trainable)
    peak_bytes = torch.cuda.max_memory_allocated(device) if cuda else None
    return {"model": label, "adapter": adapter.get("variant", "lora"), "r": r, "batch": batch, "seq": seq,
            "gradient_checkpointing": ckpt, "steps": steps, "tokens_per_s": tokens_s, "model_flops_per_s": flops,
            "mfu": flops / peak_flops if peak_flops else None,
            "peak_memory_gib": peak_bytes / 2 ** 30 if cuda else NO_CUDA,
            "planned_memory_gib": plan["total"] / 2 ** 30,
            "peak_over_plan": peak_bytes / plan["total"] if cuda else NO_CUDA}


#: decode shapes: (label, benchmark, gsm8k_cot shots, new tokens), the evaluators' prompts of the paper stream
DECODE_SHAPES = (("gsm8k 8-shot (gsm8k_cot)", "gsm8k", 8, 256), ("humaneval", "humaneval", 0, 512))


def decode_prompts(benchmark: str, shots: int, n: int, data_root=None) -> list[str]:
    """The first n test prompts as the evaluators build them (prompts.prompt_for; GSM8K with the gsm8k_cot
    exemplars, HumanEval zero-shot)."""
    from .data import load_benchmark
    from .prompts import gsm8k_cot_exemplars, prompt_for

    records = load_benchmark(benchmark, "test", root=data_root, source="files")[:n]
    if benchmark == "gsm8k":
        return [prompt_for(r, gsm8k_cot_exemplars(shots), cot=True) for r in records]
    return [prompt_for(r) for r in records]


def decode_speed(device, budget: Budget, data_root=None) -> dict:
    """Generated tokens/s of the project's decode loop and of HF `generate` (batched, left-padded) on
    SmolLM2 in bf16, at batch 32 and 64 for each of DECODE_SHAPES; no stop strings, so both decode to EOS or
    the token limit."""
    import torch

    from .errors import UserError
    from .models import load_model, load_tokenizer

    if device.type != "cuda":
        return {"status": NO_CUDA, "rows": []}
    tokenizer = load_tokenizer("smollm2-135m")
    model = load_model("smollm2-135m", dtype=torch.bfloat16, device=device).eval()
    rows = []
    for label, benchmark, shots, new in DECODE_SHAPES:
        for batch in (32, 64):
            if budget.left() < 40:
                rows.append({"shape": label, "batch": batch, "status": "skipped: budget"})
                continue
            try:
                prompts = decode_prompts(benchmark, shots, batch, data_root)
            except UserError as exc:
                rows.append({"shape": label, "batch": batch, "status": f"skipped: no {benchmark} data ({exc})"})
                continue
            rows.append(decode_row(device, model, tokenizer, label, prompts, new))
    return {"status": "measured", "rows": rows}


def decode_row(device, model, tokenizer, label: str, prompts: list[str], new: int) -> dict:
    """Tokens/s of `prompts` in one batch through the project's `generate` (a row leaves the batch at EOS)
    and through HF `generate` (counting its non-pad new tokens)."""
    import torch

    from .bench.timing import timed
    from .evaluation.generation import generate

    batch = len(prompts)
    row = {"shape": label, "batch": batch, "max_new_tokens": new}
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        ours, texts = timed(lambda: generate(model, tokenizer, prompts, max_new_tokens=new, batch_size=batch), device)
        made = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
        row["ours_tokens_per_s"] = made / ours
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        enc = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
        tokenizer.padding_side = side
        hf, out = timed(lambda: model.generate(**enc, do_sample=False, max_new_tokens=new,
                                               pad_token_id=tokenizer.pad_token_id), device)
        made = int((out[:, enc["input_ids"].shape[1]:] != tokenizer.pad_token_id).sum())
        row["hf_generate_tokens_per_s"] = made / hf
    return row


# ------------------------------------------------------------------------------------------ report
def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    return str(v)


def markdown(report: dict) -> str:
    env = report["environment"]
    where = env.get("gpu") if env.get("gpu") not in (None, NO_CUDA) else report["device"]
    lines = [f"# gpu-check: {where}", "",
             f"Command: `{report['command']}` ({report['elapsed_s']:.0f} s of a {report['budget_min']:g}-minute "
             f"budget; model {report['model']}). Every figure below was measured by this run.", "",
             "## Environment", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in env.items()]
    corr = report["correctness"]
    lines += ["", f"## Correctness on {report['device']}: {corr['status']}", ""]
    if corr.get("checks"):
        lines += ["| check | status | value | tolerance |", "|---|---|---|---|"]
        lines += [f"| {c['name']} | {c['status']} | {_fmt(c.get('value', ''))} | {c.get('tolerance', '')} |"
                  for c in corr["checks"]]
    speed = report["speed"]
    peak = speed["matmul_peak"]
    lines += ["", "## Speed", "", f"bf16 matmul peak (8192^3, best of 4 x 20): "
              + (f"{peak['flops'] / 1e12:.1f} TFLOP/s" if peak.get("flops") else peak["status"]), ""]
    train = speed["train"]
    lines.append(f"Training (bf16 autocast, AdamW, random tokens; model FLOP/s = 6 N tokens/s): {train['status']}")
    if train.get("rows"):
        lines += ["", "| model | adapter | r | batch x seq | ckpt | tokens/s | MFU | peak GiB | plan GiB | peak/plan |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for row in train["rows"]:
            if "tokens_per_s" not in row:
                lines.append(f"| {row['model']} | {row['adapter']} | {row['status']} |||||||")
                continue
            lines.append(f"| {row['model']} | {row['adapter']} | {row['r']} | {row['batch']} x {row['seq']} | "
                         f"{row['gradient_checkpointing']} | {row['tokens_per_s']:,.0f} | "
                         f"{_fmt(row['mfu'])} | {_fmt(row['peak_memory_gib'])} | {row['planned_memory_gib']:.2f} | "
                         f"{_fmt(row['peak_over_plan'])} |")
    decode = speed["decode"]
    lines += ["", f"Decoding, SmolLM2 bf16, generated tokens/s: {decode['status']}"]
    if decode.get("rows"):
        lines += ["", "| prompts | batch | new tokens | ours | HF generate |", "|---|---|---|---|---|"]
        for row in decode["rows"]:
            if "ours_tokens_per_s" not in row:
                lines.append(f"| {row['shape']} | {row['batch']} | {row['status']} | | |")
                continue
            lines.append(f"| {row['shape']} | {row['batch']} | {row['max_new_tokens']} | "
                         f"{row['ours_tokens_per_s']:,.0f} | {row['hf_generate_tokens_per_s']:,.0f} |")
    return "\n".join(lines) + "\n"


def check(device_name: str, *, budget_min: float, tiny: bool, data_root=None) -> dict:
    import torch

    if device_name == "cuda" and not torch.cuda.is_available():
        device = torch.device("cpu")
    else:
        device = torch.device(device_name)
    budget = Budget(budget_min, tiny)
    model = "tiny-llama" if tiny else "smollm2-135m"
    report = {"device": str(device), "requested_device": device_name, "model": model, "budget_min": budget_min,
              "tiny": tiny, "tolerances": TOL}
    report["environment"] = budget.run("environment", environment, device)
    report["correctness"] = budget.run("correctness", correctness, device, model, data_root)
    peak = budget.run("matmul_peak", matmul_peak, device)
    report["speed"] = {"matmul_peak": peak,
                       "train": budget.run("train", train_speed, device, peak, budget),
                       "decode": budget.run("decode", decode_speed, device, budget, data_root)}
    report["elapsed_s"] = round(time.perf_counter() - budget.start, 1)
    return report


def main(args) -> int:
    if not (args.budget_min > 0) or math.isinf(args.budget_min):
        raise ConfigError(f"--budget-min {args.budget_min:g}: must be a positive number of minutes (default 8)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    report = check(args.device, budget_min=args.budget_min, tiny=args.tiny)
    report["command"] = (f"clsharelora gpu-check --device {args.device} --budget-min {args.budget_min:g} "
                         f"--out {args.out}" + (" --tiny" if args.tiny else ""))
    from . import atomic

    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "gpu-check.json", json.dumps(report, indent=1, default=str) + "\n")
    atomic.write_text(out / "gpu-check.md", markdown(report))
    if args.device == "cuda" and report["device"] == "cpu":
        print("gpu-check: no CUDA device; every CUDA part says so (correctness ran on the CPU)", file=sys.stderr)
    print(markdown(report))
    print(f"gpu-check: {out / 'gpu-check.json'}, {out / 'gpu-check.md'}")
    return 1 if report["correctness"].get("status") == "fail" else 0
