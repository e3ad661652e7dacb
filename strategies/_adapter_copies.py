"""Named copies of the trained (Share)LoRA adapter inside one peft model, for CL methods that keep an
earlier adapter beside the one being trained (O-LoRA's frozen adapters, LwF's teacher).

Everything goes through peft: `add_adapter` creates the LoRA layers of the copy, `set_adapter` chooses which
adapters take part in a forward pass. The trained adapter is always peft's "default", so the names of the
trainable parameters (what checkpoints and the optimizer hold) never change. A ShareLoRA copy is tied like
the original (one tensor per projection type); the model keeps the *trained* adapter's sharing spec, which is
what ShareLoRA's save/load use. Not a plug-in itself (the leading underscore keeps discovery away).
"""

from __future__ import annotations

import copy

import torch

TRAINED = "default"


def lora_layers(model) -> dict[str, torch.nn.Module]:
    """Module name -> peft LoRA layer carrying the trained adapter, in model order."""
    return {name: m for name, m in model.named_modules()
            if hasattr(m, "lora_A") and TRAINED in getattr(m, "lora_A", {})}


def add_copy(model, name: str) -> None:
    """Add adapter `name` with the trained adapter's config (tied the same way), frozen, not yet filled."""
    from clsharelora.adapters.sharing import SPEC_ATTR, SharingSpec, tie

    # peft initialises the new layers from the global RNG; forking keeps the run's RNG stream (dropout masks)
    # the same whether the copy is made in this process or re-made on resume before the RNG is restored
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        model.add_adapter(name, copy.deepcopy(model.peft_config[TRAINED]))
    spec = getattr(model, SPEC_ATTR, None)
    if spec is not None and spec.shared:
        tie(model, SharingSpec(variant=spec.variant, groups=spec.groups, adapter_name=name))
        setattr(model, SPEC_ATTR, spec)  # tie() records the last spec; save/load must keep the trained one
    freeze(model, name)


def freeze(model, name: str) -> None:
    for layer in lora_layers(model).values():
        layer.lora_A[name].requires_grad_(False)
        layer.lora_B[name].requires_grad_(False)


@torch.no_grad()
def copy_weights(model, src: str, dst: str) -> None:
    """dst <- src, module by module (a tied tensor is written once per member: the same values each time)."""
    for layer in lora_layers(model).values():
        layer.lora_A[dst].weight.copy_(layer.lora_A[src].weight)
        layer.lora_B[dst].weight.copy_(layer.lora_B[src].weight)


def tensors(model, name: str) -> dict[str, torch.Tensor]:
    """Adapter `name` as CPU tensors keyed '<module>.lora_A' / '<module>.lora_B' (per layer, also when tied)."""
    out = {}
    for module, layer in lora_layers(model).items():
        out[f"{module}.lora_A"] = layer.lora_A[name].weight.detach().cpu().clone().contiguous()
        out[f"{module}.lora_B"] = layer.lora_B[name].weight.detach().cpu().clone().contiguous()
    return out


@torch.no_grad()
def load_tensors(model, name: str, values: dict[str, torch.Tensor]) -> None:
    layers = lora_layers(model)
    expected = {f"{m}.{k}" for m in layers for k in ("lora_A", "lora_B")}
    if set(values) != expected:
        from clsharelora.errors import DataError

        raise DataError(f"saved adapter {name!r} does not match this model's LoRA modules "
                        f"(missing {sorted(expected - set(values))[:2]}, unexpected {sorted(set(values) - expected)[:2]})")
    for module, layer in layers.items():
        layer.lora_A[name].weight.copy_(values[f"{module}.lora_A"])
        layer.lora_B[name].weight.copy_(values[f"{module}.lora_B"])


def activate(model, names: list[str]) -> None:
    """Make `names` the active adapters (their outputs add up); only the trained one stays trainable."""
    model.base_model.set_adapter(list(names))
    for name in names:
        if name != TRAINED:
            freeze(model, name)
