"""Apply / save / load / merge a (Share)LoRA adapter: peft's LoRA layers plus the tying in sharing.py.

The saved directory is an ordinary peft adapter (adapter_config.json + adapter_model.safetensors with a copy
of each shared tensor per layer) plus `sharelora.json`, so any peft user can load it, and
`retie(model, directory)` afterwards restores the sharing.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import ConfigError
from .config import ShareLoraConfig, resolve_targets
from .dropout import use_input_dropout
from .sharing import SPEC_ATTR, SPEC_FILE, SharingSpec, build_spec, retie, tie


def _task_type(model: torch.nn.Module) -> str | None:
    """CAUSAL_LM for generative models (PeftModelForCausalLM keeps generate() working), else generic."""
    can_generate = getattr(model, "can_generate", None)
    return "CAUSAL_LM" if callable(can_generate) and can_generate() else None


def apply_sharelora(model: torch.nn.Module, config: ShareLoraConfig, *, adapter_name: str = "default",
                    low_cpu_mem_usage: bool = False) -> torch.nn.Module:
    """Wrap `model` (modified in place) in a peft LoRA model and tie the shared matrices per projection type.

    Only adapter parameters are trainable. `low_cpu_mem_usage=True` creates the adapter on the meta device
    (for parameter counting of large architectures without allocating them).
    """
    from peft import get_peft_model

    names = resolve_targets(model, config.targets)
    peft_model = get_peft_model(
        model, config.lora_config(names, _task_type(model)), adapter_name=adapter_name,
        low_cpu_mem_usage=low_cpu_mem_usage,
    )
    tie(peft_model, build_spec(names, config.variant, adapter_name))
    if config.dropout_masks == "per_input":
        use_input_dropout(peft_model, adapter_name)
    return peft_model


def spec_of(model: torch.nn.Module) -> SharingSpec:
    spec = getattr(model, SPEC_ATTR, None)
    if spec is None:
        raise ConfigError("this model carries no ShareLoRA sharing spec (apply it with apply_sharelora or load it)")
    return spec


def adapter_dir(directory: str | os.PathLike, adapter_name: str) -> Path:
    """Where peft's save_pretrained puts an adapter: the directory itself for 'default', else a subfolder."""
    return Path(directory) if adapter_name == "default" else Path(directory) / adapter_name


def save_sharelora(model: torch.nn.Module, directory: str | os.PathLike, *, state_dict: dict | None = None) -> Path:
    """peft's save_pretrained (per-layer copies) + sharelora.json beside adapter_config.json; returns that dir.
    `state_dict`: the tensors gathered whole, for a model that holds only shards (FSDP)."""
    spec = spec_of(model)
    model.save_pretrained(str(directory), selected_adapters=[spec.adapter_name],
                          **({} if state_dict is None else {"state_dict": state_dict}))
    out = adapter_dir(directory, spec.adapter_name)
    spec.save(out)
    return out


def load_sharelora(base_model: torch.nn.Module, directory: str | os.PathLike, *, is_trainable: bool = True,
                   adapter_name: str = "default") -> torch.nn.Module:
    """PeftModel.from_pretrained + retie from the spec saved beside the adapter: one tensor per group again."""
    from peft import PeftModel

    directory = Path(directory)
    if not (directory / SPEC_FILE).is_file():
        raise ConfigError(f"{directory}: no {SPEC_FILE}; not a ShareLoRA adapter directory (plain LoRA? use peft)")
    model = PeftModel.from_pretrained(base_model, str(directory), adapter_name=adapter_name,
                                      is_trainable=is_trainable)
    return retie(model, directory, adapter_name=adapter_name)


def merge(model: torch.nn.Module) -> torch.nn.Module:
    """Add B·A·scaling into each base weight (per layer; a shared A/B simply enters every layer's delta)."""
    model.merge_adapter()
    return model


def unmerge(model: torch.nn.Module) -> torch.nn.Module:
    """Subtract what `merge` added; the adapter (still tied) is active again."""
    model.unmerge_adapter()
    return model


def merge_and_unload(model: torch.nn.Module) -> torch.nn.Module:
    """The plain transformers model with the adapter folded into its weights (sharing no longer matters)."""
    return model.merge_and_unload()
