"""Model registry: a name (or any HF id / local path) -> tokenizer + causal LM, real weights or meta device."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..errors import ConfigError
from . import configs
from .names import REGISTRY, ModelSpec, known_models, resolve  # noqa: F401  (re-exported)


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


