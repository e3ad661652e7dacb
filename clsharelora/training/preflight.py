"""Checks of the inputs that need no data and no weights: device, model path, the strategies' options, and
whether the adapter fits the model (built on the meta device, so no rank allocates memory). Each failure is a ConfigError naming
the value and what is allowed; the runner calls these before anything is written."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import models, registry
from ..errors import ConfigError

WEIGHT_FILES = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "*.pt", "*.gguf")


def check_device(device: str) -> None:
    """auto | cpu | cuda | cuda:N with N an existing GPU; anything else, or a GPU this machine lacks, is refused."""
    allowed = "auto, cpu, cuda, cuda:N"
    if device in ("auto", "cpu"):
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r} is not a device name; allowed: {allowed}") from None
    if parsed.type != "cuda":
        raise ConfigError(f"device {device!r} is not supported; allowed: {allowed}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"device {device!r} is not available here (no CUDA GPU visible); allowed here: auto, cpu")
    if parsed.index is not None and parsed.index >= count:
        raise ConfigError(f"device {device!r} is not available here: {count} CUDA GPU(s) visible, "
                          f"allowed: cuda:0 .. cuda:{count - 1}")


def _looks_like_path(name: str) -> bool:
    """An HF hub id is 'org/name'; an absolute, ~, ./ or ../ name, or one with more parts, is a local path."""
    return (name.startswith(("/", "~", "./", "../", ".\\")) or name in (".", "..") or name.count("/") > 1
            or Path(name).expanduser().exists())


def check_model(name: str) -> None:
    """A registry name, an HF hub id, or a local directory that holds a model (config.json + weights)."""
    if name in models.known_models() or not _looks_like_path(name):
        models.resolve(name)   # unknown bare names: the registry's own error with the known models
        return
    path = Path(name).expanduser()
    allowed = "a directory with config.json and weights (*.safetensors / *.bin), a registry name or an HF hub id"
    if not path.exists():
        raise ConfigError(f"model path {name!r} does not exist; allowed: {allowed}")
    if not path.is_dir():
        raise ConfigError(f"model path {name!r} is a file; allowed: {allowed}")
    if not any(path.iterdir()):
        raise ConfigError(f"model path {name!r} is an empty directory; allowed: {allowed}")
    if not (path / "config.json").is_file():
        raise ConfigError(f"model path {name!r} holds no model (no config.json); allowed: {allowed}")
    if not any(next(path.glob(pattern), None) for pattern in WEIGHT_FILES):
        raise ConfigError(f"model path {name!r} holds no weights (no *.safetensors / *.bin); allowed: {allowed}")


def meta_base(name: str):
    """The base model on the meta device where its architecture is known here (registry names, local
    directories); None for hub ids (checked after loading instead)."""
    spec = models.resolve(name)
    if spec.architecture:
        return models.meta_model(name)
    path = Path(spec.source)
    if path.is_dir() and (path / "config.json").is_file():
        from transformers import AutoConfig, AutoModelForCausalLM

        try:
            config = AutoConfig.from_pretrained(str(path))
            with torch.device("meta"):
                return AutoModelForCausalLM.from_config(config)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"model path {name!r}: config.json is not a causal-LM config ({exc})") from None
    return None


def check_strategies(config, stream=None) -> tuple:
    """The config's adapter and CL strategies, created (their option values checked), and the model: a known
    path or name, and where its architecture is known here, the adapter applied to it on the meta device,
    its trainable count equal to its expected_params, checked by the CL method, and (given the stream) every
    generating task fitting the model's positions. What `run` checks of a strategy before anything is
    written, and what `study` checks of each of its strategies before its first cell starts."""
    adapter = registry.create(config.adapter["name"], "adapter",
                              **{k: v for k, v in config.adapter.items() if k != "name"})
    cl = registry.create(config.cl["name"], "cl", **{k: v for k, v in config.cl.items() if k != "name"})
    check_model(config.model)
    base = meta_base(config.model)
    if base is not None:
        meta = apply_on_meta(adapter, base)
        check_expected_params(adapter, meta)
        if stream is not None:
            check_generation_fits(stream, base)
        cl.check_model(meta)
    return adapter, cl


def apply_on_meta(adapter, base):
    """The adapter applied to a meta-device model with every new tensor created on the meta device too:
    no rank allocates (or initialises) real memory. Checked against the layers it adapts."""
    with torch.device("meta"):
        model = adapter.apply(base)
    check_adapter_fits(adapter, model)
    return model


def check_adapter_fits(adapter, model) -> None:
    """LoRA-family layers (peft's lora_A/lora_B, ShareLoRA's shared ones) of rank r above min(in, out) of
    the layer they adapt are over-complete: refused. VeRA's r is a shared projection size, legitimately
    larger than a layer (the VeRA paper uses r=1024 on d=768), so it is not checked."""
    worst = None
    for name, module in model.named_modules():
        ranks = getattr(module, "r", None)
        if not hasattr(module, "lora_A") or not isinstance(ranks, dict):
            continue
        fin, fout = getattr(module, "in_features", None), getattr(module, "out_features", None)
        if not isinstance(fin, int) or not isinstance(fout, int):
            continue
        for r in ranks.values():
            if r > min(fin, fout) and (worst is None or min(fin, fout) < worst[1]):
                worst = (name, min(fin, fout), fin, fout, r)
    if worst is not None:
        name, bound, fin, fout, r = worst
        raise ConfigError(f"adapter.r={r} is larger than the layer it adapts: {name} maps {fin} -> {fout}, so r "
                          f"must be <= {bound} (or leave such layers out of adapter.targets)")


def check_expected_params(adapter, model) -> None:
    """The adapter's trainable parameters on `model` (meta or real, shared tensors once) equal its closed form
    `expected_params`: a plug-in whose count is off is one error line, in the dry run and in the run."""
    from ..adapters.counting import unique_params
    from ..registry import source_line

    trainable = unique_params(model, trainable=True)
    expected = adapter.expected_params(model.config)
    if trainable != expected:
        raise ConfigError(f"adapter {adapter.name!r}: apply() makes {trainable:,} parameters trainable but "
                          f"expected_params ({source_line(type(adapter).expected_params)}) gives {expected:,} "
                          f"({trainable - expected:+,}); the closed form and apply() must agree")


def check_generation_fits(stream, model) -> None:
    """Every generating task leaves room for a prompt in the model's positions (max_new_tokens < positions;
    longer prompts are then cut from the left, docs/evaluation.md): checked on the meta-device model before
    any weights load, not when the untrained model is first scored."""
    from ..evaluation.generation import prompt_token_limit
    from ..evaluation.tasks import evaluator_class

    for exp in stream.experiences:
        budget = evaluator_class(exp.task).new_tokens(exp.eval_options)
        if budget is None:
            continue
        try:
            prompt_token_limit(model, budget)
        except ConfigError as exc:
            raise ConfigError(f"experience {exp.name!r}, eval task {exp.task}: {exc}") from None

