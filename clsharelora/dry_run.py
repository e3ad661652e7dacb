"""Dry run: the model on the meta device (no weights read), the adapter applied, and a plan in text:
parameter counts, a memory plan per process, the batching (global batch, accumulation) and the stream with
its optimizer steps per experience. This is what CI checks of `make stream-llama2`.
"""

from __future__ import annotations


import os
from pathlib import Path

from . import models, registry
from .benchmarks.stream import load_stream
from .config import RunConfig, accumulation_steps
from .errors import ConfigError, UserError
from .adapters.counting import unique_params
from .training.preflight import apply_on_meta, check_expected_params
from .training.template import plan_steps

GiB = 1024 ** 3
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def activation_bytes(config, *, batch: int, seq: int, dtype_bytes: int = 2) -> int:
    """Activation memory of a transformer forward kept for backward, without recomputation
    (Korthikanti et al. 2022, eq. 2, scaled to the dtype): L·s·b·h·(34 + 5·a·s/h) bytes at 16 bit."""
    layers, hidden, heads = config.num_hidden_layers, config.hidden_size, config.num_attention_heads
    per_layer = seq * batch * hidden * (34 + 5 * heads * seq / hidden)
    return int(layers * per_layer * dtype_bytes / 2)


def planned_processes() -> int:
    """The processes a launch here would use: accelerate/torchrun's WORLD_SIZE, else one per visible GPU."""
    import torch

    return int(os.environ.get("WORLD_SIZE") or 0) or max(1, torch.cuda.device_count())


def _accumulation(train, processes: int) -> str:
    try:
        return str(accumulation_steps(train, processes))
    except ConfigError:
        return "not divisible"


def _engine_line(engine: str, processes: int, accumulation: int) -> str:
    """Which engine `train.engine` selects for this many processes, and what it does."""
    if processes == 1:
        return (f"one process (no gradient synchronisation; train.engine={engine} applies from 2 processes: "
                + ("PyTorch DDP)" if engine == "ddp" else "FSDP2)"))
    if engine == "fsdp":
        return (f"FSDP2 (train.engine=fsdp, training/engine.py): the base sharded per decoder layer over {processes} "
                f"processes (per-GPU memory: the FSDP figure at N={processes} above), shared ShareLoRA tensors whole "
                f"in one unit, gradient sync off on {accumulation - 1} of {accumulation} micro-steps")
    return ("PyTorch DDP (train.engine=ddp, training/engine.py): the base and adapter replicated per process, "
            f"adapter gradients all-reduced in buckets during backward, no_sync on {accumulation - 1} of "
            f"{accumulation} micro-steps")


def dry_run(config: RunConfig, *, resume: bool = False) -> str:
    """The plan of a run, after the run's own validation (training/runner.py `prepare` and `load_inputs`:
    names, options, stream options, data, the adapter's count, the output folder): whatever the run would
    refuse before training, the dry run refuses with the same error; a plug-in raising is one error line."""
    with registry.blame_plugins():
        return _plan(config, resume=resume)


def memory_plan(config: RunConfig, hf_config, base_params: int, trainable: int) -> dict[str, float]:
    """Bytes per process the dry run plans for (estimates): base weights, adapter + grads + AdamW, activations
    kept for backward, fp32 logits + grad, and their total (gpu-check divides the measured peak by it)."""
    t = config.train
    weights = base_params * (0.5 if config.load_in_4bit else BYTES[config.dtype])
    acts = activation_bytes(hf_config, batch=t.batch_size, seq=t.max_length)
    if t.gradient_checkpointing:
        acts = int(acts / hf_config.num_hidden_layers * 2 + 2 * t.batch_size * t.max_length
                   * hf_config.hidden_size * hf_config.num_hidden_layers)
    plan = {"weights": weights, "adapter": trainable * 4 * 4,  # fp32 weights + grads + Adam m and v
            "activations": acts, "logits": t.batch_size * t.max_length * hf_config.vocab_size * 4 * 2}
    return {**plan, "total": sum(plan.values())}


def _plan(config: RunConfig, *, resume: bool) -> str:
    from .training.runner import load_inputs, prepare

    prep = prepare(config, resume=resume)
    inputs = load_inputs(prep)
    stream, adapter, cl = prep.stream, prep.adapter, prep.cl
    base = models.meta_model(config.model)
    base_params = unique_params(base)
    hf_config = base.config
    peft_model = apply_on_meta(adapter, base)   # adapter tensors on meta too, for any rank
    check_expected_params(adapter, peft_model)  # hub ids, whose architecture `prepare` did not build
    trainable = unique_params(peft_model, trainable=True)
    expected = adapter.expected_params(hf_config)
    lora_params = None
    if "r" in adapter.options and "targets" in adapter.options:
        lora_params = registry.create("lora", "adapter", r=adapter.options["r"],
                                      targets=adapter.options["targets"]).expected_params(hf_config)

    memory = memory_plan(config, hf_config, base_params, trainable)
    weight_bytes, adapter_bytes, acts, logits = (memory[k] for k in ("weights", "adapter", "activations", "logits"))
    t = config.train

    lines = [
        f"dry run: {config.model} (meta device, no weights loaded)",
        f"  base parameters:       {base_params:,}",
        f"  adapter:               {adapter.name} {adapter.options}",
        f"  trainable parameters:  {trainable:,}  (closed form {expected:,}: OK)",
    ]
    if lora_params:
        lines.append(f"  vs LoRA same r/targets: {lora_params:,}  ({100 * trainable / lora_params:.1f}% of LoRA, "
                     f"{100 * (1 - trainable / lora_params):.1f}% fewer)")
    matched = getattr(adapter, "matched", lambda _: None)(hf_config)
    if matched:
        relative = 100 * matched["residual"] / matched["target_params"]
        lines.append(f"  matched to sharelora {matched['match']} r={matched['share_r']}: LoRA rank {matched['rank']}, "
                     f"{matched['lora_params']:,} vs {matched['target_params']:,} "
                     f"(residual {matched['residual']:+,}, {relative:+.2f}%)")
    lines += [
        f"  cl method:             {cl.name} {cl.options}",
        *cl.plan(peft_model, trainable, len(stream.experiences)),
        "memory plan per process (estimates):",
        f"  base weights ({'4-bit' if config.load_in_4bit else config.dtype}): {weight_bytes / GiB:8.2f} GiB",
        f"  adapter + grads + AdamW:  {adapter_bytes / GiB:8.2f} GiB",
        f"  activations (b={t.batch_size}, s={t.max_length}{', checkpointed' if t.gradient_checkpointing else ''}):"
        f" {acts / GiB:6.2f} GiB",
        f"  logits + grad (fp32):     {logits / GiB:8.2f} GiB",
        f"  total:                    {(weight_bytes + adapter_bytes + acts + logits) / GiB:8.2f} GiB",
    ]
    layer_bytes = weight_bytes / hf_config.num_hidden_layers
    rest = adapter_bytes + acts + logits
    # one vocabulary x hidden matrix stays whole on every rank: the lm_head outside the sharded decoder stack
    # (or, when tied, the embedding it shares; engine.fully_sharded)
    head_bytes = hf_config.vocab_size * hf_config.hidden_size * (0.5 if config.load_in_4bit else BYTES[config.dtype])
    plan = []
    for n in (1, 2, 4, 8, 16):
        ddp = weight_bytes + rest
        # own shard + the whole head + 2 gathered layers (prefetch)
        fsdp = (weight_bytes - head_bytes) / n + head_bytes + 2 * layer_bytes * (n > 1) + rest
        plan.append(f"{n}: DDP {ddp / GiB:.1f} / FSDP {fsdp / GiB:.1f}")
    lines += ["per-GPU GiB at N GPUs, DDP (base replicated) vs FSDP2 (base sharded per decoder layer, lm_head and "
              "shared ShareLoRA tensors whole; train.engine selects which, docs/scale.md):",
              "  " + "; ".join(plan)]
    processes = planned_processes()
    accumulation = accumulation_steps(t, processes)  # an impossible split is a ConfigError here too
    others = ", ".join(f"{w}: {_accumulation(t, w)}" for w in (1, 2, 4, 8) if w != processes)
    lines += [
        "batching (the global batch fixes the optimizer steps and the LR schedule on any number of processes):",
        f"  global batch {t.global_batch} = per-process batch {t.batch_size} x {processes} process(es) x "
        f"{accumulation} accumulation",
        f"  accumulation on other process counts: {others}",
        "engine: " + _engine_line(t.engine, processes, accumulation),
        f"stream {stream.name!r} ({len(stream.experiences)} experiences; steps = ceil(examples / {t.global_batch}) "
        f"x epochs, or max_steps):",
    ]
    for i, e in enumerate(stream.experiences, 1):
        budget = ", ".join(f"{k}={v}" for k, v in (("n", e.train.n), ("epochs", e.train.epochs),
                                                    ("max_steps", e.train.max_steps)) if v)
        examples = len(inputs.records[i - 1])
        n_steps, _ = plan_steps(examples, t.global_batch, epochs=e.train.epochs or t.epochs,
                                max_steps=e.train.max_steps or t.max_steps)
        steps = f"{examples} examples, {n_steps} steps"
        lines.append(f"  {i}. {e.name}: train {e.train.benchmark}/{e.train.split} ({budget or 'all'}; {steps}) "
                     f"-> eval {e.task} {e.eval_options}")
    return "\n".join(lines)


def length_policy_lines(config: RunConfig) -> list[str]:
    """What the length policy would drop (docs/data.md), with the model's own tokenizer when it is on this
    machine (embedded, tiny or a local path); a hub model's tokenizer is not fetched by a dry run. Kept apart
    from `dry_run` (the model plan, all on the meta device): this reads data and tokenises."""
    stream = load_stream(config.stream)
    from .benchmarks.scenario import encode_records, length_counts, training_records
    from .paths import data_root

    spec = models.resolve(config.model)
    if spec.source not in ("embedded", "random") and not Path(spec.source).exists():
        return [f"training data (length policy): needs the tokenizer of {spec.source}, which a dry run does not "
                f"download; `python -m clsharelora.benchmarks.lengths --stream {config.stream} --max-length "
                f"{config.train.max_length} --tokenizer PATH` counts with a local copy"]
    tokenizer = models.load_tokenizer(config.model)
    out = [f"training data (length policy: examples longer than max_length are dropped whole, never cut):"]
    for e in stream.experiences:
        try:
            records = training_records(e, seed=config.seed, data_root=data_root(config.data_root))
        except UserError:
            out.append(f"  {e.name}: data not found")
            continue
        counts = length_counts(encode_records(e, records, tokenizer, progress=False), experience=e.name,
                               max_length=e.train.max_length or config.train.max_length)
        out.append(f"  {counts.summary()}")
    return out
