"""clsharelora: continual learning of LLMs with ShareLoRA, LoRA and other adapters on Avalanche."""

__version__ = "0.1.0"
