"""Models: the registry of names, the embedded SmolLM2 loader and meta-device construction."""

from .registry import REGISTRY, ModelSpec, known_models, load_model, load_tokenizer, meta_model, resolve

__all__ = ["REGISTRY", "ModelSpec", "known_models", "load_model", "load_tokenizer", "meta_model", "resolve"]
