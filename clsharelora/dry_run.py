"""Dry run: the model on the meta device (no weights read), the adapter applied, and a plan in text:
parameter counts, a memory plan per process, and the stream. This is what CI checks of `make stream-llama2`.
"""

from __future__ import annotations

from . import models, registry
from .benchmarks.stream import load_stream
from .config import RunConfig
from .errors import ConfigError
from .training.preflight import apply_on_meta

GiB = 1024 ** 3
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def unique_params(model, trainable: bool | None = None) -> int:
    """Parameters counted once each (shared ShareLoRA tensors and tied embeddings appear in several modules)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable is not None and p.requires_grad != trainable):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def activation_bytes(config, *, batch: int, seq: int, dtype_bytes: int = 2) -> int:
    """Activation memory of a transformer forward kept for backward, without recomputation
    (Korthikanti et al. 2022, eq. 2, scaled to the dtype): L·s·b·h·(34 + 5·a·s/h) bytes at 16 bit."""
    layers, hidden, heads = config.num_hidden_layers, config.hidden_size, config.num_attention_heads
    per_layer = seq * batch * hidden * (34 + 5 * heads * seq / hidden)
    return int(layers * per_layer * dtype_bytes / 2)


def dry_run(config: RunConfig) -> str:
    if config.load_in_4bit and config.dtype == "float32":
        raise ConfigError("load_in_4bit computes in bfloat16: set dtype: bfloat16")
    stream = load_stream(config.stream)
    adapter_opts = {k: v for k, v in config.adapter.items() if k != "name"}
    adapter = registry.create(config.adapter["name"], "adapter", **adapter_opts)
    cl = registry.create(config.cl["name"], "cl", **{k: v for k, v in config.cl.items() if k != "name"})
    base = models.meta_model(config.model)
    base_params = unique_params(base)
    hf_config = base.config
    peft_model = apply_on_meta(adapter, base)   # adapter tensors on meta too, for any rank
    trainable = unique_params(peft_model, trainable=True)
    expected = adapter.expected_params(hf_config)
    lora_params = None
    if "r" in adapter.options and "targets" in adapter.options:
        lora_params = registry.create("lora", "adapter", r=adapter.options["r"],
                                      targets=adapter.options["targets"]).expected_params(hf_config)

    weight_bytes = base_params * (0.5 if config.load_in_4bit else BYTES[config.dtype])
    adapter_bytes = trainable * 4 * 4  # fp32 weights + grads + Adam m and v
    t = config.train
    acts = activation_bytes(hf_config, batch=t.batch_size, seq=t.max_length)
    if t.gradient_checkpointing:
        acts = int(acts / hf_config.num_hidden_layers * 2 + 2 * t.batch_size * t.max_length
                   * hf_config.hidden_size * hf_config.num_hidden_layers)
    logits = t.batch_size * t.max_length * hf_config.vocab_size * 4 * 2  # fp32 logits + their grad

    lines = [
        f"dry run: {config.model} (meta device, no weights loaded)",
        f"  base parameters:       {base_params:,}",
        f"  adapter:               {adapter.name} {adapter.options}",
        f"  trainable parameters:  {trainable:,}  (closed form {expected:,}: "
        f"{'OK' if trainable == expected else 'MISMATCH'})",
    ]
    if lora_params:
        lines.append(f"  vs LoRA same r/targets: {lora_params:,}  ({100 * trainable / lora_params:.1f}% of LoRA, "
                     f"{100 * (1 - trainable / lora_params):.1f}% fewer)")
    lines += [
        f"  cl method:             {cl.name} {cl.options}",
        "memory plan per process (estimates):",
        f"  base weights ({'4-bit' if config.load_in_4bit else config.dtype}): {weight_bytes / GiB:8.2f} GiB",
        f"  adapter + grads + AdamW:  {adapter_bytes / GiB:8.2f} GiB",
        f"  activations (b={t.batch_size}, s={t.max_length}{', checkpointed' if t.gradient_checkpointing else ''}):"
        f" {acts / GiB:6.2f} GiB",
        f"  logits + grad (fp32):     {logits / GiB:8.2f} GiB",
        f"  total:                    {(weight_bytes + adapter_bytes + acts + logits) / GiB:8.2f} GiB",
        f"stream {stream.name!r} ({len(stream.experiences)} experiences):",
    ]
    for i, e in enumerate(stream.experiences, 1):
        budget = ", ".join(f"{k}={v}" for k, v in (("n", e.train.n), ("epochs", e.train.epochs),
                                                    ("max_steps", e.train.max_steps)) if v)
        lines.append(f"  {i}. {e.name}: train {e.train.benchmark}/{e.train.split} ({budget or 'all'}) "
                     f"-> eval {e.task} {e.eval_options}")
    if trainable != expected:
        raise ConfigError("\n".join(lines) + "\ntrainable parameters differ from the closed form")
    return "\n".join(lines)
