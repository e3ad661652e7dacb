"""Models: the registry of names, the embedded SmolLM2 loader and meta-device construction.

Names (`REGISTRY`, `known_models`, `resolve`) import without torch; the loaders import torch and
transformers on first use, so `clsharelora list` and `--help` stay fast.
"""

from .names import REGISTRY, ModelSpec, known_models, resolve

_LAZY = ("load_model", "load_tokenizer", "meta_model")

__all__ = ["REGISTRY", "ModelSpec", "known_models", "resolve", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        from . import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
