"""Part 5: parameter and memory table of the paper's models (Llama-2-7B/13B, Llama-3-8B), built on the meta
device: every count is measured on the real module tree with the adapter applied (no weights exist), checked
against the closed form, and turned into bytes.

Memory columns (per process, no sharding): base weights in bf16; adapter training state = fp32 weights +
grads + AdamW m and v = 16 bytes per trainable parameter; activations for batch x seq from the dry run's
estimate (Korthikanti et al. 2022, no recomputation) plus fp32 logits and their gradient.
"""

from __future__ import annotations

from typing import Any, Sequence

from .adapters import VARIANTS, adapter_strategy

MODELS = ("llama2-7b", "llama2-13b", "llama3-8b")
ADAM_STATE_BYTES = 8        # fp32 exp_avg + exp_avg_sq per trainable parameter
TRAIN_STATE_BYTES = 16      # fp32 weight + grad + the two Adam moments


def row(model_name: str, variant: str, r: int, batch: int, seq: int) -> dict[str, Any]:
    from clsharelora.dry_run import activation_bytes, unique_params
    from clsharelora.models import meta_model

    base = meta_model(model_name)
    config = base.config
    base_params = unique_params(base)
    strategy = adapter_strategy(variant, r)
    trainable = unique_params(strategy.apply(base), trainable=True)
    acts = activation_bytes(config, batch=batch, seq=seq) + batch * seq * config.vocab_size * 4 * 2
    return {"model": model_name, "variant": variant, "r": r, "base_params": base_params,
            "trainable_params": trainable, "expected_params": strategy.expected_params(config),
            "closed_form_ok": trainable == strategy.expected_params(config),
            "trainable_percent": 100 * trainable / base_params,
            "optimizer_state_bytes": trainable * ADAM_STATE_BYTES,
            "adapter_train_state_bytes": trainable * TRAIN_STATE_BYTES,
            "base_weight_bytes_bf16": base_params * 2, "activation_bytes": acts, "batch": batch, "seq": seq,
            "total_bytes": base_params * 2 + trainable * TRAIN_STATE_BYTES + acts}


def run(*, models: Sequence[str] = MODELS, ranks: Sequence[int] = (8, 64), batch: int = 4, seq: int = 256,
        log=print) -> dict[str, Any]:
    log(f"[meta] {', '.join(models)} x {', '.join(VARIANTS)} x r={list(ranks)} on the meta device")
    rows = [row(m, v, r, batch, seq) for m in models for r in ranks for v in VARIANTS]
    lora = {(x["model"], x["r"]): x for x in rows if x["variant"] == "lora"}
    for x in rows:
        ref = lora[(x["model"], x["r"])]
        x["params_ratio"] = x["trainable_params"] / ref["trainable_params"]
        x["total_ratio"] = x["total_bytes"] / ref["total_bytes"]
    return {"rows": rows, "memory_model": __doc__.split("\n\n")[1].replace("\n", " ")}
