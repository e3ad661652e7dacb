"""Trainable-parameter counts: measured on a model, and in closed form from an architecture config.

Closed form, per projection type m with input dim d_in, output dim d_out, used in L_m layers, rank r:
    LoRA      Σ_m L_m·r·(d_in + d_out)
    share_a   Σ_m r·d_in + L_m·r·d_out          (one A per type)
    share_b   Σ_m L_m·r·d_in + r·d_out          (one B per type)
    share_ab  Σ_m r·(d_in + d_out)
Dims come from the config fields alone (no modules built), so a mismatch with `count_trainable` on a
meta-device model is a real check of both the tying and the target resolution.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from .config import ALL_LINEAR, SHARED_MATRICES, parse_targets

LLAMA_TYPES = ("q", "k", "v", "o", "gate", "up", "down")


def count_trainable(model: torch.nn.Module) -> int:
    """Elements the optimizer updates: `parameters()` yields a shared Parameter once (dedup by identity)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def unique_params(model, trainable: bool | None = None) -> int:
    """Parameters counted once each (shared ShareLoRA tensors and tied embeddings appear in several modules)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable is not None and p.requires_grad != trainable):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in the optimizer's per-parameter state (Adam: exp_avg, exp_avg_sq, step)."""
    return sum(
        v.numel() * v.element_size()
        for state in optimizer.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor)
    )


def projection_dims(config: Any, targets: Any = ALL_LINEAR) -> dict[str, tuple[int, int, int]]:
    """Projection type -> (d_in, d_out, n_layers) for the targets, from an HF config (llama/gpt2/roberta)."""
    model_type = getattr(config, "model_type", None)
    if model_type in ("llama", "mistral", "qwen2"):
        h, layers = config.hidden_size, config.num_hidden_layers
        heads = config.num_attention_heads
        kv = getattr(config, "num_key_value_heads", None) or heads
        hd = getattr(config, "head_dim", None) or h // heads
        inter = config.intermediate_size
        table = {"q": ("self_attn.q_proj", h, heads * hd), "k": ("self_attn.k_proj", h, kv * hd),
                 "v": ("self_attn.v_proj", h, kv * hd), "o": ("self_attn.o_proj", heads * hd, h),
                 "gate": ("mlp.gate_proj", h, inter), "up": ("mlp.up_proj", h, inter),
                 "down": ("mlp.down_proj", inter, h)}
    elif model_type == "gpt2":
        h, layers = config.n_embd, config.n_layer
        inner = config.n_inner or 4 * h
        fused = ("attn.c_attn", h, 3 * h)  # q, k, v live in one Conv1D: adapting any adapts all three
        table = {"q": fused, "k": fused, "v": fused, "o": ("attn.c_proj", h, h),
                 "up": ("mlp.c_fc", h, inner), "down": ("mlp.c_proj", inner, h)}
    elif model_type in ("roberta", "bert"):
        h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
        table = {"q": ("attention.self.query", h, h), "k": ("attention.self.key", h, h),
                 "v": ("attention.self.value", h, h), "o": ("attention.output.dense", h, h),
                 "up": ("intermediate.dense", h, inter), "down": ("output.dense", inter, h)}
    else:
        raise ConfigError(f"closed-form counts know llama/mistral/qwen2/gpt2/roberta/bert, not {model_type!r}")
    spec = parse_targets(targets)
    if spec == ALL_LINEAR:
        tokens = tuple(table)
    elif isinstance(spec, str):
        raise ConfigError("option 'targets': the closed form needs short names (q,k,v,o,gate,up,down), not a regex")
    else:
        tokens = spec
    out: dict[str, tuple[int, int, int]] = {}
    for token in tokens:
        # a short name, or a module-name suffix exactly as resolve_targets reads it ("q_proj", "c_proj")
        entries = [table[token]] if token in table else [
            e for e in dict.fromkeys(table.values()) if e[0] == token or e[0].endswith("." + token)]
        if not entries:
            raise ConfigError(
                f"option 'targets': {token!r} is not a projection of {model_type} "
                f"(known: {', '.join(table)} or {', '.join(e[0] for e in dict.fromkeys(table.values()))})"
            )
        for module, d_in, d_out in entries:
            out[module] = (d_in, d_out, layers)
    return out


def expected_params(config: Any, variant: str, r: int, targets: Any = ALL_LINEAR) -> int:
    """Closed-form trainable parameters of LoRA / share_a / share_b / share_ab (formula in module doc)."""
    if variant not in SHARED_MATRICES:
        raise ConfigError(f"option 'variant': unknown variant {variant!r}; known: {', '.join(SHARED_MATRICES)}")
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ConfigError(f"option 'r' must be a positive integer, got {r!r}")
    shared = SHARED_MATRICES[variant]
    total = 0
    for d_in, d_out, layers in projection_dims(config, targets).values():
        total += (1 if "lora_A" in shared else layers) * r * d_in
        total += (1 if "lora_B" in shared else layers) * r * d_out
    return total


def matched_lora_rank(config: Any, variant: str, r: int, targets: Any = ALL_LINEAR) -> dict[str, Any]:
    """The LoRA rank whose closed-form count is nearest the count of ShareLoRA `variant` at rank r on the same
    targets (the parameter-matched control: fewer parameters learn less and forget less).

    LoRA's count is linear in its rank, k·c with c = Σ_m L_m·(d_in + d_out), so the nearest is floor or ceil
    of target / c; a tie goes to the smaller rank (the control never gets more parameters than needed).
    """
    if variant not in SHARED_MATRICES or variant == "lora":
        shared = ", ".join(v for v in SHARED_MATRICES if v != "lora")
        raise ConfigError(f"option 'match': {variant!r} is not a ShareLoRA variant; allowed: {shared}")
    target = expected_params(config, variant, r, targets)
    per_rank = expected_params(config, "lora", 1, targets)
    low = max(1, target // per_rank)
    rank = min((low, low + 1), key=lambda k: (abs(k * per_rank - target), k))
    return {"match": variant, "share_r": r, "rank": rank, "target_params": target,
            "lora_params": rank * per_rank, "residual": rank * per_rank - target}
