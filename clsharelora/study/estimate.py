"""`clsharelora study --dry-run`: the grid, each strategy's trainable parameters (closed form on the
architecture config, no weights) and a compute estimate for the whole study.

The estimate is an upper bound from token counts, not a measurement: training costs 6·N FLOPs per token
(forward 2N + backward 4N; a frozen base skips its weight gradients, so the true cost is nearer 4N), every
scoring pass costs 2·N per token with prompts taken at the full max_length and every generation at its
max_new_tokens. Divided by an assumed sustained FLOP/s (`--flops`, printed), it gives hours.
"""

from __future__ import annotations

import math

from .. import registry
from ..benchmarks.stream import parse_stream
from ..config import from_dict
from ..data import load_benchmark
from ..models import resolve
from ..paths import PROJECT_ROOT
from .grid import Study

#: assumed sustained throughput when --flops is not given: a GPU at ~40% of bf16 peak, a CPU in fp32
DEFAULT_FLOPS = {"bfloat16": 1.2e14, "float16": 1.2e14, "float32": 3.0e10}
#: what a CUDA study assumes without a measurement: the bf16 GPU figure above (stated in the output)
DEFAULT_GPU_FLOPS = DEFAULT_FLOPS["bfloat16"]


#: where `make gpu-check` writes its measurement (committed from a GPU node, docs/scale.md)
GPU_CHECK_JSON = PROJECT_ROOT / "docs" / "results" / "gpu-check.json"


def measured_flops(path=None) -> tuple[float, str] | None:
    """(model FLOP/s, source) of SmolLM2 LoRA training as `clsharelora gpu-check` measured it on a GPU
    (GPU_CHECK_JSON), or None when there is no such measurement."""
    import json

    path = path or GPU_CHECK_JSON
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for row in (report.get("speed") or {}).get("train") or []:
        if row.get("model") == "smollm2-135m" and row.get("adapter") == "lora" and row.get("model_flops_per_s"):
            return float(row["model_flops_per_s"]), f"measured by gpu-check on {report['environment'].get('gpu')} ({path})"
    return None


def _arch_config(model: str):
    from ..models import configs

    spec = resolve(model)
    return configs.architecture(spec.architecture) if spec.architecture else None


def _base_params(config) -> int:
    """Llama-style closed form: embeddings (+ untied head), per layer attention + MLP + 2 norms, final norm."""
    h, v, layers = config.hidden_size, config.vocab_size, config.num_hidden_layers
    heads, kv = config.num_attention_heads, getattr(config, "num_key_value_heads", config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or h // heads
    attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
    mlp = 3 * h * config.intermediate_size
    tied = getattr(config, "tie_word_embeddings", False)
    return v * h * (1 if tied else 2) + layers * (attn + mlp + 2 * h) + h


def _items(benchmark: str, split: str, n, options: dict, data_root) -> int:
    if n is not None:
        return n
    total = 0
    for part in split.split("+"):
        total += len(load_benchmark(benchmark, part, root=data_root, **options))
    return total


def _eval_split(task: str) -> tuple[str, str]:
    return {"gsm8k": ("gsm8k", "test"), "humaneval": ("humaneval", "test"), "mmlu": ("mmlu", "test"),
            "mmlu_pro": ("mmlu_pro", "test")}[task]


def estimate(study: Study, flops: float | None = None) -> str:
    """The text `--dry-run` prints."""
    config = from_dict({k: v for k, v in study.base.items() if k not in ("out",)})
    stream = parse_stream(study.stream, str(study.source))
    arch = _arch_config(config.model)
    lines = [f"study {study.name}: {len(study.strategies)} strategies x {len(study.seeds)} seeds x "
             f"{len(study.orders)} orders = {len(study.cells)} cells (model {config.model}, stream {stream.name})"]
    for k, order in enumerate(study.orders):
        lines.append(f"  order {k}: {' -> '.join(order)}")
    lines.append("strategies (trainable parameters, closed form):")
    for s in study.strategies:
        adapter = registry.create(s.adapter["name"], "adapter", **{k: v for k, v in s.adapter.items() if k != "name"})
        registry.create(s.cl["name"], "cl", **{k: v for k, v in s.cl.items() if k != "name"})
        count = f"{adapter.expected_params(arch):,}" if arch is not None else "? (no in-code architecture)"
        lines.append(f"  {s.label:<28} adapter {s.adapter}  cl {s.cl}  trainable {count}")
    if arch is None:
        lines.append("compute estimate: needs a registry model (its architecture); skipped")
        return "\n".join(lines)
    n_base = _base_params(arch)
    t = config.train
    global_batch = t.global_batch
    train_tokens = eval_tokens = 0
    for e in stream.experiences:
        items = _items(e.train.benchmark, e.train.split, e.train.n, e.train.options, config.data_root)
        length = e.train.max_length or t.max_length
        steps = e.train.max_steps or t.max_steps or math.ceil(items / global_batch) * (e.train.epochs or t.epochs)
        train_tokens += steps * global_batch * length
        bench, split = _eval_split(e.task)
        n_eval = e.eval_options.get("n") or config.eval.n or _items(bench, split, None, {}, config.data_root)
        if config.eval.n:
            n_eval = min(n_eval, config.eval.n)
        per_item = t.max_length + int(e.eval_options.get("max_new_tokens", 0))
        eval_tokens += n_eval * per_item
    rows = len(stream.experiences) + 1
    cell_flops = 6 * n_base * train_tokens + 2 * n_base * eval_tokens * rows
    on_gpu = config.device.startswith("cuda")
    measured = measured_flops() if on_gpu and not flops else None
    if flops:
        rate, source = flops, "--flops"
    elif measured:
        rate, source = measured
    elif on_gpu:
        rate, source = DEFAULT_GPU_FLOPS, "assumed for a GPU in bf16, no gpu-check measurement; --flops to change"
    else:
        rate = DEFAULT_FLOPS.get(config.dtype, 3.0e10)
        source = f"assumed for dtype {config.dtype}; --flops to change"
    hours = cell_flops * len(study.cells) / rate / 3600
    lines += [
        "compute estimate (upper bound from token counts, see clsharelora/study/estimate.py):",
        f"  base parameters N:      {n_base:,}",
        f"  per cell: train tokens {train_tokens:,} (6N each), scored tokens {eval_tokens:,} x {rows} rows (2N each)",
        f"  per cell: {cell_flops:.3g} FLOPs; study: {cell_flops * len(study.cells):.3g} FLOPs",
        f"  at {rate:.3g} FLOP/s sustained ({source}): {hours:,.2f} device-hours ({hours / len(study.cells):,.3f} "
        f"per cell)" + (f"; {hours * 60:,.0f} GPU-minutes" if on_gpu else ""),
    ]
    return "\n".join(lines)
